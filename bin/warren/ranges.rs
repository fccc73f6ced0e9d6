//! `warren ranges list | alloc NAME | get NAME | free NAME | register | check`: per-container
//! uid/gid blocks, and the root id pool they come from.

use crate::Global;
use std::path::Path;
use warren::idmap::IdRange;
use warren::idmap::alloc::{Allocator, Pool, Reservation};
use warren::idmap::pool;
use warren::idmap::range::{DEFAULT_BLOCK, parse_id};
use warren::idmap::subid::{Host, SUBGID, SUBUID};

#[derive(clap::Subcommand, Debug)]
#[command(defer = true)]
pub enum Command {
    /// Show every reservation.
    List,
    /// Reserve a block for NAME (or show the one it already has).
    Alloc {
        /// The container (or other holder) the block is for.
        name: String,
        /// As root: the pool to take blocks from, START+LEN (default: the `warren:` lines
        /// of /etc/subuid and /etc/subgid). Refused when it overlaps a user's range.
        #[arg(long)]
        pool: Option<IdRange>,
        /// As root: ids per block (default 0x10000).
        #[arg(long, value_parser = parse_id)]
        block: Option<u32>,
    },
    /// Show NAME's reservation.
    Get {
        /// The container (or other holder) the block is for.
        name: String,
    },
    /// Release NAME's block.
    Free {
        /// The container (or other holder) the block is for.
        name: String,
    },
    /// As root: register the root id pool, a `warren:START:COUNT` line in /etc/subuid and
    /// /etc/subgid (default: 0x40000000+0x40000000, or the first free span above every
    /// line; done on first use when there is none).
    Register {
        /// First id (decimal or 0x hex); with --count.
        #[arg(long, value_parser = parse_id, requires = "count")]
        start: Option<u32>,
        /// How many ids; with --start.
        #[arg(long, value_parser = parse_id, requires = "start")]
        count: Option<u32>,
    },
    /// Report reservations outside the pool or sharing ids with another user's
    /// subordinate range (exit status 1 when there are any).
    Check,
}

/// As root, makes sure the root pool is registered, saying so on stderr when this call
/// registered it. The container commands call it before opening the runtime.
pub fn announce_pool() -> anyhow::Result<()> {
    if warren::dirs::is_root() {
        let (_, registered) =
            pool::ensure_root_pool(Path::new(SUBUID), Path::new(SUBGID), DEFAULT_BLOCK)?;
        if let Some(range) = registered {
            eprintln!("warren: {}", pool::registered_message(range));
        }
    }
    Ok(())
}

pub fn run(global: &Global, command: Command) -> anyhow::Result<i32> {
    let allocator = match &command {
        Command::Alloc { pool, block, .. } if pool.is_some() || block.is_some() => {
            anyhow::ensure!(
                warren::dirs::is_root(),
                "--pool and --block are for root; rootless blocks come from /etc/subuid and /etc/subgid"
            );
            let block = block.unwrap_or(DEFAULT_BLOCK);
            let pool = match pool {
                Some(range) => {
                    let p = Pool::new(*range, block)?;
                    p.check_host(&Host::current()?)?;
                    p
                }
                None => {
                    announce_pool()?;
                    Pool::root(&Host::current()?, block)?
                }
            };
            Allocator::open(warren::dirs::state_dir(), pool)?
        }
        Command::Alloc { .. } => {
            announce_pool()?;
            Allocator::for_current_user()?
        }
        Command::Register { start, count } => {
            anyhow::ensure!(
                warren::dirs::is_root(),
                "registering the root id pool needs root"
            );
            let range = match start.zip(*count) {
                Some((s, c)) => Some(IdRange::new(s, c)?),
                None => None,
            };
            match pool::register(Path::new(SUBUID), Path::new(SUBGID), range, DEFAULT_BLOCK)? {
                Some(r) => println!("{}", pool::registered_message(r)),
                None => {
                    println!("the root id pool is registered already (`warren:` lines in {SUBUID})")
                }
            }
            return Ok(0);
        }
        Command::Check => return check(global),
        // Reading and freeing need no pool (and must work for a user whose subids went).
        _ => Allocator::open(warren::dirs::state_dir(), Pool::none())?,
    };
    match command {
        Command::List => {
            let all = allocator.list()?;
            if global.json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print_table(&all);
            }
        }
        Command::Alloc { name, .. } => show(global, &allocator.alloc(&name)?)?,
        Command::Get { name } => match allocator.get(&name)? {
            Some(r) => show(global, &r)?,
            None => anyhow::bail!("no reservation named {name:?}"),
        },
        Command::Free { name } => {
            let r = allocator.free(&name)?;
            if global.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("freed {} (uids {}, gids {})", r.name, r.uids, r.gids);
            }
        }
        Command::Register { .. } | Command::Check => unreachable!("handled above"),
    }
    Ok(0)
}

/// `warren ranges check`: reservations the pool no longer holds or another user shares.
fn check(global: &Global) -> anyhow::Result<i32> {
    let root = warren::dirs::is_root();
    let host = Host::current()?;
    // The pool as it stands: an unusable one is itself what to report, so fall back to
    // an empty one (every reservation is then reported as outside it).
    let (pool, pool_error) = match if root {
        Pool::root(&host, DEFAULT_BLOCK)
    } else {
        Pool::rootless(&host, DEFAULT_BLOCK)
    } {
        Ok(p) => (p, None),
        Err(e) => (Pool::none(), Some(warren::error_line(&e))),
    };
    let reservations = Allocator::open(warren::dirs::state_dir(), Pool::none())?.list()?;
    let problems = pool::check_reservations(&reservations, &pool, &host, root);
    if global.json {
        let report = serde_json::json!({
            "pool": pool,
            "pool_error": pool_error,
            "problems": problems,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if let Some(e) = &pool_error {
            println!("pool: {e}");
        }
        for p in &problems {
            println!("{}: uids {} gids {}: {}", p.name, p.uids, p.gids, p.reason);
        }
        if problems.is_empty() && pool_error.is_none() {
            println!(
                "{} reservations, all inside the {pool} and no other user's",
                reservations.len()
            );
        }
    }
    Ok(i32::from(!problems.is_empty() || pool_error.is_some()))
}

fn show(global: &Global, r: &Reservation) -> anyhow::Result<()> {
    if global.json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        print_table(std::slice::from_ref(r));
    }
    Ok(())
}

fn print_table(all: &[Reservation]) {
    let width = all.iter().map(|r| r.name.len()).max().unwrap_or(0).max(4);
    println!(
        "{:width$}  {:>10}  {:>10}  {:>10}",
        "NAME", "UID START", "GID START", "COUNT"
    );
    for r in all {
        let count = if r.uids.len == r.gids.len {
            format!("{:#x}", r.uids.len)
        } else {
            format!("{:#x}/{:#x}", r.uids.len, r.gids.len)
        };
        println!(
            "{:width$}  {:>10}  {:>10}  {:>10}",
            r.name,
            format!("{:#x}", r.uids.start),
            format!("{:#x}", r.gids.start),
            count
        );
    }
}
