//! Putting a [`Ruleset`] in the kernel: the nft transaction and the sysctls it needs.

use super::FirewallError;
use super::nft;
use super::plan::{Ruleset, valid_ifname};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

pub const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Loads the transaction for `rules` (deleting and re-adding warren's tables).
pub fn load(rules: &Ruleset) -> Result<(), FirewallError> {
    use nftables::helper::{NftablesError, apply_ruleset_raw};
    let json = serde_json::to_string(&nft::transaction(rules))
        .map_err(|e| FirewallError::Nft(format!("encoding the ruleset: {e}")))?;
    let args: [&str; 0] = [];
    match apply_ruleset_raw(&json, Some(&nft_program()), args) {
        Ok(_) => Ok(()),
        Err(NftablesError::NftExecution { inner, .. }) if inner.kind() == ErrorKind::NotFound => {
            Err(FirewallError::NftMissing(inner))
        }
        Err(NftablesError::NftFailed { stderr, hint, .. }) => {
            Err(FirewallError::Nft(format!("{hint}: {}", stderr.trim())))
        }
        Err(e) => Err(FirewallError::Nft(e.to_string())),
    }
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
/// no longer needed, restores that value and removes `saved`.
pub fn forwarding(needed: bool, sysctl: &Path, saved: &Path) -> Result<(), FirewallError> {
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
        if previous == "0" || previous == "1" {
            std::fs::write(sysctl, previous.as_bytes()).map_err(io(sysctl))?;
        }
        std::fs::remove_file(saved).map_err(io(saved))?;
    }
    Ok(())
}
