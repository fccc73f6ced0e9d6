//! Where warren keeps its state: `/var/lib/warren` as root, `$XDG_DATA_HOME/warren`
//! (or `~/.local/share/warren`) otherwise; `WARREN_STATE_DIR` overrides both.

use std::path::PathBuf;

/// True when running as the host's root (euid 0 in the initial user namespace is not
/// checked: inside a user namespace root still has only that namespace's ids).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The state directory for this user.
pub fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WARREN_STATE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if is_root() {
        return PathBuf::from("/var/lib/warren");
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(xdg).join("warren");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
    PathBuf::from(home).join(".local/share/warren")
}

/// Where containers' runtime state lives (like runc's `--root`): `/run/warren` as root,
/// `$XDG_RUNTIME_DIR/warren` otherwise, falling back to the state dir.
pub fn run_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/run/warren");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("warren"),
        None => state_dir().join("run"),
    }
}
