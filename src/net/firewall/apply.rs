//! Putting a [`Ruleset`] in the kernel: the nft transaction and the sysctls it needs.

use super::FirewallError;
use super::nft;
use super::plan::{Ruleset, valid_ifname};
use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

pub const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// IPv6 forwarding, host-wide (netavark and docker turn on `all` alike).
pub const IP6_FORWARD: &str = "/proc/sys/net/ipv6/conf/all/forwarding";
/// The host-wide lock of [`host_lock`] (in root's /run: no other user can hold it).
pub const HOST_LOCK: &str = "/run/warren-firewall.lock";

/// Loads the transaction for `rules` (deleting and re-adding the tables `table`).
pub fn load(table: &str, rules: &Ruleset) -> Result<(), FirewallError> {
    use nftables::helper::apply_ruleset_raw;
    let json = serde_json::to_string(&nft::transaction(table, rules))
        .map_err(|e| FirewallError::Nft(format!("encoding the ruleset: {e}")))?;
    let args: [&str; 0] = [];
    apply_ruleset_raw(&json, Some(&nft_program()), args)
        .map(|_| ())
        .map_err(nft_error)
}

fn nft_error(e: nftables::helper::NftablesError) -> FirewallError {
    use nftables::helper::NftablesError;
    match e {
        NftablesError::NftExecution { inner, .. } if inner.kind() == ErrorKind::NotFound => {
            FirewallError::NftMissing(inner)
        }
        NftablesError::NftFailed { stderr, hint, .. } => {
            FirewallError::Nft(format!("{hint}: {}", stderr.trim()))
        }
        e => FirewallError::Nft(e.to_string()),
    }
}

/// Whether a warren table other than `table` (another state directory's) needs
/// forwarding: its `bridges` set holds a bridge its `internal` set does not.
pub fn others_forward(table: &str) -> Result<bool, FirewallError> {
    Ok(tables_forwarding(&list_sets()?)
        .iter()
        .any(|t| t.as_str() != table))
}

/// The same for IPv6 forwarding: another warren table's `forward6` set is not empty.
pub fn others_forward6(table: &str) -> Result<bool, FirewallError> {
    Ok(tables_forwarding6(&list_sets()?)
        .iter()
        .any(|t| t.as_str() != table))
}

fn list_sets() -> Result<serde_json::Value, FirewallError> {
    use nftables::helper::get_current_ruleset_raw;
    let out = get_current_ruleset_raw(Some(&nft_program()), ["list", "sets", "inet"])
        .map_err(nft_error)?;
    serde_json::from_str(&out)
        .map_err(|e| FirewallError::Nft(format!("nft -j list sets inet: {e}")))
}

/// The warren tables in `nft -j list sets inet`'s answer whose `forward6` set has
/// elements.
pub fn tables_forwarding6(json: &serde_json::Value) -> BTreeSet<String> {
    let objects = json["nftables"]
        .as_array()
        .map_or(&[][..], |a| a.as_slice());
    objects
        .iter()
        .filter_map(|o| o.get("set"))
        .filter(|set| set["name"] == "forward6")
        .filter(|set| set["elem"].as_array().is_some_and(|e| !e.is_empty()))
        .filter_map(|set| set["table"].as_str())
        .filter(|t| nft::is_warren_table(t))
        .map(String::from)
        .collect()
}

/// The warren tables in `nft -j list sets inet`'s answer that need forwarding.
pub fn tables_forwarding(json: &serde_json::Value) -> BTreeSet<String> {
    let mut sets: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    let objects = json["nftables"]
        .as_array()
        .map_or(&[][..], |a| a.as_slice());
    for set in objects.iter().filter_map(|o| o.get("set")) {
        let (Some(table), Some(name)) = (set["table"].as_str(), set["name"].as_str()) else {
            continue;
        };
        if !nft::is_warren_table(table) || !["bridges", "internal"].contains(&name) {
            continue;
        }
        let elems = set["elem"].as_array().map_or(&[][..], |a| a.as_slice());
        sets.entry((table, name))
            .or_default()
            .extend(elems.iter().filter_map(|e| e.as_str()));
    }
    let empty = BTreeSet::new();
    sets.iter()
        .filter(|((_, name), _)| *name == "bridges")
        .filter(|((table, _), bridges)| {
            let internal = sets.get(&(*table, "internal")).unwrap_or(&empty);
            bridges.difference(internal).next().is_some()
        })
        .map(|((table, _), _)| table.to_string())
        .collect()
}

/// Held by every `apply` of every state directory: forwarding is host-wide, so one
/// apply's "no other table needs it, restore" never interleaves with another's load.
pub fn host_lock() -> Result<nix::fcntl::Flock<std::fs::File>, FirewallError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = Path::new(HOST_LOCK);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| FirewallError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
        FirewallError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        }
    })
}

/// `nft` from PATH, else where Debian puts it (a service's PATH may lack the sbin
/// directories).
fn nft_program() -> PathBuf {
    let in_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nft"))
            .find(|p| p.is_file())
    });
    in_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nft"))
}

/// `route_localnet=1` on warren's bridges: the host's 127.0.0.1:PORT is DNAT'd to a
/// container and leaves through the bridge with its loopback source (masqueraded in
/// postrouting). Only these bridges; the `localnet` chain drops what containers send
/// to or from 127.0.0.0/8. A bridge not there (yet) is skipped.
pub fn route_localnet(rules: &Ruleset) -> Result<(), FirewallError> {
    for bridge in &rules.bridges {
        if !valid_ifname(bridge) {
            continue;
        }
        let path = Path::new("/proc/sys/net/ipv4/conf")
            .join(bridge)
            .join("route_localnet");
        match std::fs::write(&path, b"1") {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {
                tracing::debug!(bridge, "no such bridge: route_localnet not set");
            }
            Err(source) => return Err(FirewallError::Io { path, source }),
        }
    }
    Ok(())
}

/// Turns forwarding (`sysctl`, the ip_forward file) on when `needed`, keeping the value it
/// had in `saved` first (written before the change, so a crash leaves it known); when
/// no longer needed, restores that value and removes `saved`, unless `others` (asked
/// only then) says another state directory's table still needs forwarding: the record
/// then stays, for this state directory's next apply to restore.
pub fn forwarding(
    needed: bool,
    others: impl FnOnce() -> Result<bool, FirewallError>,
    sysctl: &Path,
    saved: &Path,
) -> Result<(), FirewallError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FirewallError::Io { path, source }
    };
    let recorded = match std::fs::read_to_string(saved) {
        Ok(v) => Some(v.trim().to_string()),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(io(saved)(e)),
    };
    if needed {
        let now = std::fs::read_to_string(sysctl).map_err(io(sysctl))?;
        if recorded.is_none() {
            if let Some(dir) = saved.parent() {
                std::fs::create_dir_all(dir).map_err(io(dir))?;
            }
            crate::atomic::write(saved, now.trim().as_bytes()).map_err(io(saved))?;
        }
        if now.trim() != "1" {
            std::fs::write(sysctl, b"1").map_err(io(sysctl))?;
        }
    } else if let Some(previous) = recorded {
        if others()? {
            tracing::debug!("another warren table needs forwarding: ip_forward left on");
            return Ok(());
        }
        if previous == "0" || previous == "1" {
            std::fs::write(sysctl, previous.as_bytes()).map_err(io(sysctl))?;
        }
        std::fs::remove_file(saved).map_err(io(saved))?;
    }
    Ok(())
}
