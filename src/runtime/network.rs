//! A container's network, around its creation: a bridge network is joined before the
//! container exists (it then joins the pinned namespace, and gets its own /etc/hosts and
//! /etc/resolv.conf), a user-mode stack is attached to the init's namespace by the
//! create, before the init goes, and `remove` takes the container off its network.

use super::config::{BindMount, ContainerConfig, Network};
use super::{Error, Runtime};
use crate::net::{self, Networks};

impl Runtime {
    /// This runtime's networks (definitions under its state directory, namespace pins
    /// under its run directory).
    pub fn networks(&self) -> Networks {
        Networks::new(&self.opts.state_dir, &self.opts.run_dir, &self.helper)
    }

    /// `warren network prune`: the endpoints of containers this runtime no longer
    /// has, and every link and namespace pin of its networks that no record calls for.
    pub fn prune_networks(&self) -> Result<net::Pruned, Error> {
        let exists = |name: &str| self.container_dir(name).exists() || self.load(name).is_ok();
        Ok(self.networks().prune(&exists)?)
    }
}

/// Before the spec: for a bridge network, joins it and points `cfg` at the pinned
/// namespace, with the hosts and resolver files bind-mounted read-only.
pub(crate) fn prepare(rt: &Runtime, name: &str, cfg: &mut ContainerConfig) -> Result<(), Error> {
    if let Some(tool) = usermode_tool(&cfg.network) {
        let state = &rt.opts.state_dir;
        let file = net::usermode::etc::write_resolv_conf(tool, state, name).map_err(
            super::io_err("write", &net::usermode::etc::dir(state, name)),
        )?;
        let destination = "/etc/resolv.conf".into();
        let (source, readonly) = (file, true);
        cfg.mounts.push(BindMount {
            source,
            destination,
            readonly,
        });
    }
    let Network::Bridge { network } = &cfg.network else {
        return Ok(());
    };
    let nets = rt.networks();
    let joined = nets.join(network, name, &cfg.aliases, &cfg.ports)?;
    let mut names = Vec::new();
    if let Some(h) = cfg.hostname.as_ref().filter(|h| h.as_str() != name) {
        names.push(h.clone());
    }
    names.extend(joined.endpoint.names.iter().cloned());
    let dir = nets.etc_dir(name);
    let files = net::hosts::write(
        &dir,
        (joined.endpoint.addr, joined.endpoint.addr6),
        &names,
        Some(joined.network.gateway),
    )
    .map_err(super::io_err("write", &dir))?;
    for (source, destination) in files {
        cfg.mounts.push(BindMount {
            source,
            destination,
            readonly: true,
        });
    }
    cfg.network = Network::Join(joined.netns);
    Ok(())
}

/// The user-mode stack `network` asks for, publishing `ports`: the create attaches it
/// to the init's namespace before the init goes ([`net::usermode::Usermode`]).
pub(crate) fn usermode(
    network: &Network,
    ports: &[net::PortMapping],
) -> Option<net::usermode::Usermode> {
    let tool = usermode_tool(network)?;
    Some(net::usermode::Usermode {
        tool,
        ports: ports.to_vec(),
    })
}

fn usermode_tool(network: &Network) -> Option<net::usermode::Tool> {
    match network {
        Network::Pasta => Some(net::usermode::Tool::Pasta),
        Network::Slirp4netns => Some(net::usermode::Tool::Slirp4netns),
        _ => None,
    }
}

/// Takes `name` off its bridge network (nothing recorded: nothing to do).
pub(crate) fn detach(rt: &Runtime, name: &str) -> Result<(), Error> {
    let etc = net::usermode::etc::dir(&rt.opts.state_dir, name);
    net::usermode::etc::remove(&rt.opts.state_dir, name).map_err(super::io_err("remove", &etc))?;
    if !crate::dirs::is_root() {
        return Ok(());
    }
    Ok(rt.networks().leave(name)?)
}
