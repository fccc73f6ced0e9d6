//! `warren network`: bridge networks (create, ls, inspect, rm, prune) over
//! `warren::net::Networks`.

use crate::Global;
use anyhow::{Context, Result};
use warren::net::{CreateOptions, Ipv4Net, Ipv6Net, NetworkDef};

#[derive(clap::Subcommand, Debug)]
#[command(defer = true)]
pub enum Command {
    /// Define a bridge network and make its bridge.
    Create {
        /// The network's name (its bridge is wrn-NAME, shortened to 15 bytes).
        name: String,
        /// Its subnet: IPv4 (default: a free 10.90-10.127.x.0/24), and, given again as
        /// IPv6 (podman's way), its IPv6 subnet: the network is then dual-stack.
        #[arg(long, value_name = "CIDR")]
        subnet: Vec<String>,
        /// Dual-stack: an IPv6 subnet too (default: a free /64 of this host's ULA /48).
        #[arg(long)]
        ipv6: bool,
        /// No route out: no masquerade, nothing forwarded but within the network.
        #[arg(long)]
        internal: bool,
        /// Containers of the network cannot reach each other either.
        #[arg(long)]
        isolate: bool,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        /// Only names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print a network and the containers on it, as JSON.
    Inspect {
        /// The network's name.
        name: String,
    },
    /// Remove networks (refused while containers are on them).
    #[command(alias = "remove")]
    Rm {
        /// The networks' names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove what crashes left: endpoints of containers that are gone, and warren's
    /// bridges, veths and namespaces that no record calls for.
    Prune,
}

pub fn run(global: &Global, command: Command) -> Result<i32> {
    let rt = crate::product::runtime(global)?;
    let nets = rt.networks();
    match command {
        Command::Create {
            name,
            subnet,
            ipv6,
            internal,
            isolate,
        } => {
            let (subnet, subnet6) = subnets(&subnet)?;
            let def = nets.create(&CreateOptions {
                name,
                subnet,
                ipv6,
                subnet6,
                internal,
                isolate,
            })?;
            if global.json {
                println!("{}", serde_json::to_string_pretty(&def)?);
            } else {
                println!("{}", def.name);
            }
        }
        Command::Ls { quiet } => {
            let defs = nets.list()?;
            if global.json {
                println!("{}", serde_json::to_string_pretty(&defs)?);
            } else if quiet {
                defs.iter().for_each(|d| println!("{}", d.name));
            } else {
                print_table(&defs);
            }
        }
        Command::Inspect { name } => {
            let (def, endpoints) = nets.inspect(&name)?;
            let mut v = serde_json::to_value(&def)?;
            if let Some(gw6) = def.gateway6() {
                v["gateway6"] = serde_json::to_value(gw6)?;
            }
            v["containers"] = serde_json::to_value(&endpoints)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Command::Rm { names } => {
            for name in names {
                nets.remove(&name)?;
                if !global.json {
                    println!("{name}");
                }
            }
        }
        Command::Prune => {
            let pruned = rt.prune_networks()?;
            if global.json {
                let v = serde_json::json!({
                    "endpoints": pruned.endpoints,
                    "links": pruned.links,
                    "netns": pruned.netns,
                    "tables": pruned.tables,
                });
                println!("{v}");
            } else {
                for e in &pruned.endpoints {
                    println!("endpoint {e}");
                }
                for l in &pruned.links {
                    println!("link {l}");
                }
                for n in &pruned.netns {
                    println!("netns {n}");
                }
                for t in &pruned.tables {
                    println!("table {t}");
                }
            }
        }
    }
    Ok(0)
}

/// `--subnet` given once or twice: at most one IPv4 and one IPv6 subnet.
fn subnets(args: &[String]) -> Result<(Option<Ipv4Net>, Option<Ipv6Net>)> {
    let (mut v4, mut v6) = (None, None);
    for s in args {
        let twice = || anyhow::anyhow!("--subnet {s}: one IPv4 and one IPv6 subnet at most");
        if s.contains(':') {
            let net = s
                .parse::<Ipv6Net>()
                .with_context(|| format!("--subnet {s}"))?;
            if v6.replace(net).is_some() {
                return Err(twice());
            }
        } else {
            let net = s
                .parse::<Ipv4Net>()
                .with_context(|| format!("--subnet {s}"))?;
            if v4.replace(net).is_some() {
                return Err(twice());
            }
        }
    }
    Ok((v4, v6))
}

fn print_table(defs: &[NetworkDef]) {
    println!(
        "{:<20} {:<18} {:<15} {:<15} {:>5}  FLAGS",
        "NAME", "SUBNET", "GATEWAY", "BRIDGE", "MTU"
    );
    for d in defs {
        let mut flags = Vec::new();
        if d.internal {
            flags.push("internal");
        }
        if d.isolate {
            flags.push("isolate");
        }
        let ipv6 = d.subnet6.map(|n| format!("ipv6={n}"));
        flags.extend(ipv6.as_deref());
        println!(
            "{:<20} {:<18} {:<15} {:<15} {:>5}  {}",
            d.name,
            d.subnet.to_string(),
            d.gateway.to_string(),
            d.bridge,
            d.mtu,
            flags.join(",")
        );
    }
}
