//! Rootless containers of one image share one extracted tree (issue 20), when the
//! setuid-root helper `warren-mount` is installed (next to the running binary or in
//! PATH):
//!
//! - the image is extracted once per user, owned by the user's image block (the block
//!   reserved as [`IMAGE_BLOCK`] in the user's own allocator), at
//!   `STATE/images/KEY/rootfs`: the place `warren-mount` accepts a source from;
//! - per container, `warren-mount` attaches at `CONTAINER/lower`, in the host's mount
//!   namespace, a read-only idmapped bind of that tree seen through the container's block;
//!   the container's copy of that mount is locked (container root cannot make it
//!   writable), and the container makes kernel overlayfs (`userxattr`) over it, with an
//!   upper and work dir in `CONTAINER/layer` owned by its block, as its root
//!   ([`crate::container::RootOverlay`]);
//! - a read-only container's root is that mount itself, with no overlay (method
//!   `helper-idmap-readonly`): overlayfs costs every open a backing file, and a read-only
//!   root needs no upper. When a mount's target is not in the image (a volume on a new
//!   path), there is nowhere to make it, and the container gets the overlay after all.
//!
//! Without the helper (or when it fails): fuse-overlayfs over the same tree when
//! `/dev/fuse` is usable and it is installed ([`super::fuse_view`]), else the container
//! gets its own copy, as before. The choice is [`super::fuse_view::choose`]'s, from the
//! host's facts; the record's `method` (`helper-idmap`, `fuse-overlayfs` or `copy`) and
//! `method_reason` say which and why (`ps --json`, `inspect`, `run --debug`).

use super::fuse_view::{Choice, Facts, METHOD_FUSE, choose};
use super::{Error, Record, Runtime, io_err, rootless};
use crate::container::{RootOverlay, Upper};
use crate::idmap::alloc::Reservation;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The allocator name of the user's image block (never a container name: those may not
/// start with a dot).
pub const IMAGE_BLOCK: &str = ".images";
/// The helper's file name.
pub const HELPER: &str = "warren-mount";
/// The method names in a container's record.
pub const METHOD_HELPER: &str = "helper-idmap";
pub const METHOD_HELPER_READONLY: &str = "helper-idmap-readonly";
pub const METHOD_COPY: &str = "copy";

/// The installed setuid-root helper: in the directory of one of `next_to`, or in PATH.
/// Else why not.
pub fn find_helper(next_to: &[PathBuf]) -> Result<PathBuf, String> {
    let mut candidates: Vec<PathBuf> = next_to
        .iter()
        .filter_map(|p| p.parent().map(|d| d.join(HELPER)))
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        let dirs = std::env::split_paths(&path).filter(|d| d.is_absolute());
        candidates.extend(dirs.map(|d| d.join(HELPER)));
    }
    let mut why = format!("{HELPER} is not installed (next to warren or in PATH)");
    for c in candidates {
        match fs::metadata(&c) {
            Ok(m) if m.is_file() && m.uid() == 0 && m.mode() & 0o4001 == 0o4001 => return Ok(c),
            Ok(_) => {
                why = format!(
                    "{} is not setuid root (chown root; chmod 4755)",
                    c.display()
                );
            }
            Err(_) => {}
        }
    }
    Err(why)
}

fn helper_err(what: &str, path: &Path, msg: String) -> Error {
    let path = path.to_path_buf();
    Error::Io {
        what: "warren-mount",
        path,
        source: std::io::Error::other(format!("{what}: {msg}")),
    }
}

/// Runs the helper; its stderr is the error.
fn run_helper(helper: &Path, args: &[&std::ffi::OsStr], about: &Path) -> Result<(), Error> {
    let out = Command::new(helper)
        .args(args)
        .output()
        .map_err(io_err("run", helper))?;
    if out.status.success() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(helper_err("refused", about, msg))
}

pub(super) fn mkdir(path: &Path, mode: u32) -> Result<(), Error> {
    match fs::DirBuilder::new().mode(mode).create(path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(io_err("create", path)(e)),
        _ => Ok(()),
    }
}

impl Runtime {
    fn helper_candidates(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::env::current_exe().into_iter().collect();
        if self.helper != Path::new(rootless::SELF_EXE) {
            v.push(self.helper.clone());
        }
        v
    }

    /// The rootless view of `image` for `record`'s container in block `ids`: the shared
    /// tree through the helper or fuse-overlayfs (the root overlay to make; with no upper
    /// when `read_only`), else a copy (`None`). A method that fails falls through to the
    /// next one.
    pub(super) fn rootless_view(
        &self,
        image: &str,
        record: &mut Record,
        ids: &Reservation,
        read_only: bool,
    ) -> Result<Option<RootOverlay>, Error> {
        let mut facts = Facts::gather(find_helper(&self.helper_candidates()));
        let dir = self.container_dir(&record.name);
        loop {
            let (method, why, made) = match choose(&facts) {
                Choice::Helper(helper) => match self
                    .shared_view(&helper, image, record, ids, read_only)
                {
                    Ok(o) => {
                        let why = format!("{} idmaps the shared image", helper.display());
                        let method = if read_only {
                            METHOD_HELPER_READONLY
                        } else {
                            METHOD_HELPER
                        };
                        (method, why, Some(o))
                    }
                    Err(e) => {
                        let why = format!("{} failed: {}", helper.display(), crate::error_line(&e));
                        tracing::warn!("{why}");
                        let _ = self.release_lower(&dir);
                        facts.helper = Err(why);
                        continue;
                    }
                },
                Choice::Fuse { program, reason } => {
                    match self.fuse_view(&program, image, record, ids) {
                        Ok(o) => (METHOD_FUSE, reason, Some(o)),
                        Err(e) => {
                            let why =
                                format!("{} failed: {}", program.display(), crate::error_line(&e));
                            tracing::warn!("{why}");
                            self.remove_fuse_view(&dir, ids)?;
                            facts.fuse_overlayfs = Err(why);
                            continue;
                        }
                    }
                }
                Choice::Copy { reason } => {
                    self.extract_rootless(image, &record.rootfs, ids)?;
                    (METHOD_COPY, reason, None)
                }
            };
            tracing::debug!("container {}: method {method} ({why})", record.name);
            record.method = Some(method.to_string());
            record.method_reason = Some(why);
            return Ok(made);
        }
    }

    fn shared_view(
        &self,
        helper: &Path,
        image: &str,
        record: &Record,
        ids: &Reservation,
        read_only: bool,
    ) -> Result<RootOverlay, Error> {
        let (source, block) = self.shared_tree(image)?;
        let dir = self.container_dir(&record.name);
        let dir = fs::canonicalize(&dir).map_err(io_err("resolve", &dir))?;
        let lower = dir.join("lower");
        mkdir(&lower, 0o700)?;
        let from = format!("{}:{}", block.uids.start, block.gids.start);
        let to = format!("{}:{}", ids.uids.start, ids.gids.start);
        let args = [
            "mount".as_ref(),
            source.as_os_str(),
            from.as_ref(),
            to.as_ref(),
            lower.as_os_str(),
        ];
        // Two helpers, each milliseconds of exec and id maps, on separate directories: at
        // once.
        let (upper, mounted) = std::thread::scope(|s| {
            let mount = s.spawn(|| run_helper(helper, &args, &source));
            let upper = match read_only {
                true => Ok(None),
                false => self.make_upper(&dir, ids).map(Some),
            };
            (upper, join(mount))
        });
        let upper = upper?;
        mounted?;
        mkdir(&record.rootfs, 0o755)?;
        Ok(RootOverlay {
            lower,
            upper,
            fuse: None,
        })
    }

    /// A read-only root (no upper) on which `spec` mounts at a target the image lacks
    /// gets an overlay after all: only an upper can hold the target.
    pub(super) fn upper_if_needed(
        &self,
        o: &mut RootOverlay,
        record: &mut Record,
        spec: &oci_spec::runtime::Spec,
        ids: &Reservation,
    ) -> Result<(), Error> {
        let Some(target) = o
            .upper
            .is_none()
            .then(|| missing_target(&o.lower, spec))
            .flatten()
        else {
            return Ok(());
        };
        let dir = o.lower.parent().unwrap_or(&o.lower).to_path_buf(); // the container's
        o.upper = Some(self.make_upper(&dir, ids)?);
        record.method = Some(METHOD_HELPER.to_string());
        let why = record.method_reason.take().unwrap_or_default();
        let why = format!(
            "{why}; an overlay after all: the read-only root has no {} to mount on",
            target.display()
        );
        record.method_reason = Some(why);
        self.write_record(record)
    }

    /// An overlay's upper and work dirs in `DIR/layer`, made by the container's block.
    pub(super) fn make_upper(&self, dir: &Path, ids: &Reservation) -> Result<Upper, Error> {
        let layer = dir.join("layer");
        mkdir(&layer, 0o700)?;
        let upper = Upper {
            dir: layer.join("upper"),
            work: layer.join("work"),
        };
        let request = rootless::Request::MakeDirs {
            paths: vec![upper.dir.as_path().into(), upper.work.as_path().into()],
        };
        rootless::in_userns(&self.helper, ids.uids.shift(), request)?;
        Ok(upper)
    }

    /// The user's one extracted tree of `image` (extracted now if it is not yet), owned
    /// by the user's image block; and that block.
    pub(super) fn shared_tree(&self, image: &str) -> Result<(PathBuf, Reservation), Error> {
        let block = self.ids.alloc(IMAGE_BLOCK)?;
        let index_path = self.store.index_path(image)?;
        let index = fs::read(&index_path).map_err(io_err("read", &index_path))?;
        let images = self.opts.state_dir.join("images");
        crate::dirs::make_private(&images).map_err(io_err("create", &images))?;
        let images = fs::canonicalize(&images).map_err(io_err("resolve", &images))?;
        let dir = images.join(super::images::key(&index));
        crate::dirs::create_private(&dir).map_err(io_err("create", &dir))?;
        let rootfs = dir.join("rootfs");
        let lock_path = dir.join("lock");
        let lock = fs::File::create(&lock_path).map_err(io_err("create", &lock_path))?;
        let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io_err("lock", &lock_path)(e.into()))?;
        if !rootfs.is_dir() {
            let name = dir.join("image");
            crate::atomic::write(&name, image.as_bytes()).map_err(io_err("write", &name))?;
            // The store extracts into a temporary sibling and renames.
            let request = rootless::Request::Extract {
                store: self.store.dir().into(),
                image: image.to_string(),
                dest: rootfs.as_path().into(),
            };
            rootless::in_userns(&self.helper, block.uids.shift(), request)?;
        }
        Ok((rootfs, block))
    }

    /// Undoes the helper's mount at `DIR/lower`, if there is one.
    pub(super) fn release_lower(&self, dir: &Path) -> Result<(), Error> {
        let lower = dir.join("lower");
        if !crate::mount::shifted::is_mountpoint(&lower)? {
            return Ok(());
        }
        let helper = find_helper(&self.helper_candidates())
            .map_err(|why| helper_err("cannot unmount", &lower, why))?;
        let lower = fs::canonicalize(&lower).map_err(io_err("resolve", &lower))?;
        run_helper(&helper, &["umount".as_ref(), lower.as_os_str()], &lower)
    }

    /// Undoes the helper's mount and removes what the container's block owns in `dir`
    /// (its layer, and a copy or a partial one a crash left: only the block's user
    /// namespace may remove those), both at once; or first ends fuse-overlayfs and
    /// removes its layer.
    pub(super) fn remove_rootless_view(&self, name: &str, dir: &Path) -> Result<(), Error> {
        let ids = self.record(name).ok().and_then(|r| r.ids);
        if let Some(ids) = &ids {
            self.remove_fuse_view(dir, ids)?;
        }
        let paths: Vec<_> = fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("rootfs") || name == "layer"
            })
            .map(|e| e.path().as_path().into())
            .collect();
        let (released, removed) = std::thread::scope(|s| {
            let release = s.spawn(|| self.release_lower(dir));
            let removed = match ids {
                Some(ids) if !paths.is_empty() => {
                    let request = rootless::Request::Remove { paths };
                    rootless::in_userns(&self.helper, ids.uids.shift(), request).map(drop)
                }
                _ => Ok(()),
            };
            (join(release), removed)
        });
        released?;
        Ok(removed?)
    }
}

/// The first of `spec`'s mount targets a read-only root at `root` lacks (none is made
/// there): one not in the tree and not under an earlier mount, which holds its own.
fn missing_target(root: &Path, spec: &oci_spec::runtime::Spec) -> Option<PathBuf> {
    let flags = libc::O_PATH | libc::O_DIRECTORY;
    let root = crate::sys::openat2(rustix::fs::CWD, root, flags, 0, 0).ok()?;
    let mut mounted: Vec<&Path> = Vec::new();
    for dest in spec.mounts().iter().flatten().map(|m| m.destination()) {
        let within = dest.strip_prefix("/").unwrap_or(dest);
        let held = mounted.iter().any(|m| dest.starts_with(m));
        let resolve = crate::sys::RESOLVE_IN_ROOT;
        if !held && crate::sys::openat2(root.as_fd(), within, libc::O_PATH, 0, resolve).is_err() {
            return Some(dest.clone());
        }
        mounted.push(dest);
    }
    None
}

/// The result of a helper run on a scoped thread (a panic there is a bug: passed on).
fn join<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Removes `rootfs` (a rootless user's shared tree, if it exists) in a user namespace
/// mapped onto the block its root's owner is in (the user's image block): the user alone
/// may not. The helper is the running binary (`warren store gc`).
pub(crate) fn remove_block_tree(rootfs: &Path) -> std::io::Result<()> {
    let owner = match fs::symlink_metadata(rootfs) {
        Ok(m) if m.is_dir() => m.uid(),
        _ => return Ok(()),
    };
    let block = crate::idmap::range::Shift::new(owner - owner % 0x10000, 0x10000)
        .map_err(std::io::Error::other)?;
    let request = rootless::Request::Remove {
        paths: vec![rootfs.into()],
    };
    rootless::in_userns(Path::new(rootless::SELF_EXE), block, request)
        .map(drop)
        .map_err(|e| std::io::Error::other(crate::error_line(&e)))
}

#[cfg(test)]
mod tests {
    use super::missing_target;
    use std::path::PathBuf;

    fn spec(targets: &[&str]) -> oci_spec::runtime::Spec {
        let mounts: Vec<_> = targets
            .iter()
            .map(|t| serde_json::json!({"destination": t, "type": "tmpfs", "source": "tmpfs"}))
            .collect();
        serde_json::from_value(serde_json::json!({"ociVersion": "1.0.2", "mounts": mounts}))
            .expect("spec")
    }

    #[test]
    fn a_read_only_root_lacks_only_targets_no_earlier_mount_holds() {
        let tree = tempfile::tempdir().expect("tempdir");
        for dir in ["proc", "dev", "sys", "etc"] {
            std::fs::create_dir(tree.path().join(dir)).expect("mkdir");
        }
        // A link out of the tree is followed inside it, where it leads nowhere.
        std::os::unix::fs::symlink("/etc/hostname", tree.path().join("etc/hostname"))
            .expect("symlink");
        let held = [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/sys",
            "/sys/fs/cgroup",
        ];
        assert_eq!(missing_target(tree.path(), &spec(&held)), None);
        let with = |extra: &str| {
            let mut targets = held.to_vec();
            targets.push(extra);
            missing_target(tree.path(), &spec(&targets))
        };
        assert_eq!(with("/data"), Some(PathBuf::from("/data")));
        assert_eq!(with("/etc/hostname"), Some(PathBuf::from("/etc/hostname")));
        assert_eq!(with("/etc"), None);
        assert_eq!(with("/dev/null"), None);
    }
}
