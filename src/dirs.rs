//! Where warren keeps its state: `/var/lib/warren` as root, `$XDG_DATA_HOME/warren`
//! (or `~/.local/share/warren`) otherwise; `WARREN_STATE_DIR` overrides both.
//!
//! Everything warren keeps there (extracted images with their real ids, setuid binaries
//! and device nodes, containers' views and writable layers, the store) lives under
//! directories only the owner (root, or the rootless user) can traverse: see
//! [`open_state_dir`] and [`make_private`].

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

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
    default_state_dir()
}

/// The state directory for this user when `WARREN_STATE_DIR` is not set.
pub fn default_state_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/warren");
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(xdg).join("warren");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
    PathBuf::from(home).join(".local/share/warren")
}

/// Where containers' runtime state lives (the default of the runc-compatible `--root`):
/// `$XDG_RUNTIME_DIR/warren` when runc would use `$XDG_RUNTIME_DIR/runc`, else
/// `/run/warren` as root, else `STATE_DIR/run`. Rootless podman runs the runtime as uid 0
/// of its own user namespace with `XDG_RUNTIME_DIR` set: `/run` is not its to write.
pub fn run_dir() -> PathBuf {
    let xdg = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty());
    let user = std::env::var_os("USER");
    let root = is_root();
    match xdg {
        Some(dir) if honor_xdg_runtime_dir(root, root && in_user_namespace(), user.as_deref()) => {
            PathBuf::from(dir).join("warren")
        }
        _ if root => PathBuf::from("/run/warren"),
        _ => state_dir().join("run"),
    }
}

/// runc's rule (`shouldHonorXDGRuntimeDir`), given that `XDG_RUNTIME_DIR` is set: always
/// when not uid 0; as uid 0 only inside a user namespace and unless `USER` is `root` (the
/// host's root keeps `/run`, whatever its session sets).
fn honor_xdg_runtime_dir(euid_root: bool, in_userns: bool, user: Option<&std::ffi::OsStr>) -> bool {
    if !euid_root {
        return true;
    }
    in_userns && user.is_none_or(|u| u != "root")
}

/// True when this process is in a user namespace other than the initial one (whose
/// `uid_map` is the identity over all ids).
pub fn in_user_namespace() -> bool {
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => !is_initial_uid_map(&map),
        Err(_) => false,
    }
}

fn is_initial_uid_map(map: &str) -> bool {
    let fields: Vec<&str> = map.split_whitespace().collect();
    fields == ["0", "0", "4294967295"]
}

/// The subdirectories of the state dir that hold trees: each is private whatever the
/// state dir's own mode (a `WARREN_STATE_DIR` warren did not create keeps its mode).
/// The store (`store/` by default) makes its own root private when opened.
pub const PRIVATE_SUBDIRS: [&str; 2] = ["images", "containers"];

/// Creates `dir` and its missing parents with mode 0700 (each created directory, from
/// the start: no window in which another user could open it).
pub fn create_private(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates `dir` 0700, or takes group and other access away from an existing one (an
/// installation made by an older warren). For directories the caller named (a symlink
/// in their place is followed, as any path the caller gives).
pub fn make_private(dir: &Path) -> io::Result<()> {
    create_private(dir)?;
    tighten(dir, &std::fs::metadata(dir)?)
}

/// [`make_private`] for a directory inside one other users may write to (an explicit
/// state dir such as one under `/tmp`): refuses a directory, or a symlink, someone else
/// put in its place, since it would hand them whatever warren puts there. A symlink of
/// our own (the images on another disk) is followed.
pub fn make_private_own(dir: &Path) -> io::Result<()> {
    create_private(dir)?;
    let me = nix::unistd::geteuid().as_raw();
    let not_ours = |what: &str, uid: u32| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{what} owned by uid {uid}, not by uid {me}: remove it"),
        )
    };
    let link = std::fs::symlink_metadata(dir)?;
    if link.file_type().is_symlink() && link.uid() != me {
        return Err(not_ours("a symlink", link.uid()));
    }
    let meta = std::fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        ));
    }
    if meta.uid() != me {
        return Err(not_ours("a directory", meta.uid()));
    }
    tighten(dir, &meta)
}

/// Takes group and other access away from the directory `dir` (`meta` its metadata).
fn tighten(dir: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & !0o077))?;
    }
    Ok(())
}

/// Prepares the state directory `dir`: created 0700 when missing, made 0700 when it is
/// warren's (the default location, an empty directory, or one holding warren's files:
/// an installation an older warren left open). An existing directory holding other
/// things (`WARREN_STATE_DIR` pointed at a home) or shared (sticky, like `/tmp`) keeps
/// its mode: the trees warren keeps in it are in [`PRIVATE_SUBDIRS`] and the store, each
/// private whatever the state dir's mode.
pub fn open_state_dir(dir: &Path) -> io::Result<()> {
    let existed = dir.exists();
    create_private(dir)?;
    if existed && is_warrens(dir)? {
        tighten(dir, &std::fs::metadata(dir)?)?;
    }
    for sub in PRIVATE_SUBDIRS {
        make_private_own(&dir.join(sub))?;
    }
    Ok(())
}

/// True when the existing directory `dir` may be taken as warren's state dir.
fn is_warrens(dir: &Path) -> io::Result<bool> {
    let meta = std::fs::metadata(dir)?;
    if meta.permissions().mode() & 0o1000 != 0 {
        return Ok(false);
    }
    if dir == default_state_dir() {
        return Ok(true);
    }
    let mut entries = std::fs::read_dir(dir)?;
    if entries.next().is_none() {
        return Ok(true);
    }
    Ok(STATE_FILES.iter().any(|f| dir.join(f).exists()))
}

/// What a warren state dir holds (one is enough to recognise it).
const STATE_FILES: [&str; 5] = [
    "images",
    "containers",
    "store",
    "ranges.json",
    "seccomp-cache",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn xdg_runtime_dir_is_honoured_as_runc_does() {
        let root = Some(std::ffi::OsStr::new("root"));
        let user = Some(std::ffi::OsStr::new("warren-test"));
        // Not uid 0: always.
        assert!(honor_xdg_runtime_dir(false, false, user));
        assert!(honor_xdg_runtime_dir(false, false, None));
        // The host's root: never (its session's /run/user/0 is not the default).
        assert!(!honor_xdg_runtime_dir(true, false, user));
        assert!(!honor_xdg_runtime_dir(true, false, None));
        // uid 0 of a user namespace (rootless podman): unless USER is root.
        assert!(honor_xdg_runtime_dir(true, true, user));
        assert!(honor_xdg_runtime_dir(true, true, None));
        assert!(!honor_xdg_runtime_dir(true, true, root));
        assert!(is_initial_uid_map("         0          0 4294967295\n"));
        assert!(!is_initial_uid_map(
            "         0       1001          1\n         1    1048576      65536\n"
        ));
    }

    #[test]
    fn created_dirs_are_private_and_open_ones_are_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a/b/c");
        create_private(&deep).unwrap();
        for p in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&tmp.path().join(p)), 0o700, "{p}");
        }
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o2755)).unwrap();
        make_private(&open).unwrap();
        assert_eq!(mode(&open), 0o2700);
    }

    #[test]
    fn state_dirs_are_private_unless_they_hold_other_things() {
        let tmp = tempfile::tempdir().unwrap();
        // An older installation, left open: tightened.
        let older = tmp.path().join("older");
        std::fs::create_dir_all(older.join("images")).unwrap();
        std::fs::write(older.join("ranges.json"), "{}").unwrap();
        for p in [&older, &older.join("images")] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        open_state_dir(&older).unwrap();
        assert_eq!(mode(&older), 0o700);
        assert_eq!(mode(&older.join("images")), 0o700);
        // A home: keeps its mode, warren's trees in it are private.
        let home = tmp.path().join("home");
        std::fs::create_dir(&home).unwrap();
        std::fs::write(home.join(".profile"), "").unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
        open_state_dir(&home).unwrap();
        assert_eq!(mode(&home), 0o755);
        for sub in PRIVATE_SUBDIRS {
            assert_eq!(mode(&home.join(sub)), 0o700, "{sub}");
        }
        // A shared sticky dir (like /tmp) keeps its mode.
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        open_state_dir(&shared).unwrap();
        assert_eq!(mode(&shared), 0o1777);
        // A new one, and an empty one.
        let fresh = tmp.path().join("fresh/state");
        open_state_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o755)).unwrap();
        open_state_dir(&empty).unwrap();
        assert_eq!(mode(&empty), 0o700);
    }

    #[test]
    fn a_state_subdir_of_someone_else_is_refused_and_our_symlink_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        std::fs::create_dir(&target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
        let state = tmp.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::os::unix::fs::symlink(&target, state.join("images")).unwrap();
        open_state_dir(&state).unwrap();
        assert_eq!(mode(&target), 0o700, "our own symlink is followed");
        if is_root() {
            // Someone else's directory in the state dir: refused, left as it is.
            let theirs = state.join("containers");
            std::fs::remove_dir(&theirs).unwrap();
            std::fs::create_dir(&theirs).unwrap();
            std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let err = open_state_dir(&state).unwrap_err();
            assert!(err.to_string().contains("uid 65534"), "{err}");
            assert_eq!(mode(&theirs), 0o755);
        }
    }
}
