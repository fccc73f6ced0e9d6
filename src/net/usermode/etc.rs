//! The `/etc/resolv.conf` of a container on pasta or slirp4netns: the helper's DNS
//! forwarder ([`Tool::nameserver`]) with the host's `search` and `options` lines, as
//! podman writes it. Bind-mounted read-only over the image's.
//!
//! A bind source is looked up with the credentials of the container's root, a
//! subordinate uid of the user's block: it cannot traverse the user's own private
//! directories (the state directory, a 0700 `$XDG_RUNTIME_DIR`). So the file lives in a
//! directory of the user's own that anyone may traverse but nobody else write or list:
//! `/tmp/warren-etc-UID` (0711, checked to be the user's real directory), then one 0711
//! directory per container named by a hash of the state directory and the container's
//! name. As root, under [`crate::net::hosts::ETC_ROOT`].

use super::Tool;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where the resolver files of containers of `uid` are kept.
fn base_for(uid: u32) -> PathBuf {
    if uid == 0 {
        return PathBuf::from(crate::net::hosts::ETC_ROOT);
    }
    PathBuf::from(format!("/tmp/warren-etc-{uid}"))
}

fn base() -> PathBuf {
    base_for(rustix::process::geteuid().as_raw())
}

/// The directory of `container` of the runtime whose state is `state_dir`.
pub fn dir(state_dir: &Path, container: &str) -> PathBuf {
    dir_for(rustix::process::geteuid().as_raw(), state_dir, container)
}

/// [`dir`] for a runtime of the user `uid`.
pub fn dir_for(uid: u32, state_dir: &Path, container: &str) -> PathBuf {
    let mut h = blake3::Hasher::new();
    h.update(state_dir.as_os_str().as_encoded_bytes());
    h.update(b"\0");
    h.update(container.as_bytes());
    base_for(uid).join(format!("um-{}", &h.finalize().to_hex()[..24]))
}

/// Makes `path` a directory of ours, mode 0711: an existing one must be a real
/// directory (not a symlink) owned by us that no one else may write, else an error (in
/// a shared /tmp someone else may have made it first).
fn own_dir(path: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o711).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let fd = rustix::fs::open(
        path,
        rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::DIRECTORY
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata()?;
    if meta.uid() != rustix::process::geteuid().as_raw() || meta.mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not ours alone (uid {}, mode {:o})",
                path.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ),
        ));
    }
    rustix::fs::fchmod(file.as_fd(), rustix::fs::Mode::from_raw_mode(0o711))?;
    Ok(())
}

/// Writes `container`'s resolv.conf for `tool` (mode 0644, crash-safe); returns its path.
pub fn write_resolv_conf(tool: Tool, state_dir: &Path, container: &str) -> io::Result<PathBuf> {
    let dir = dir(state_dir, container);
    own_dir(&base())?;
    own_dir(&dir)?;
    let text = crate::net::hosts::resolv_conf_with(
        &[tool.nameserver()],
        &crate::net::hosts::host_resolv_conf(),
    );
    let path = dir.join("resolv.conf");
    crate::atomic::write_with(&path, |f| {
        use std::io::Write;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.write_all(text.as_bytes())
    })?;
    Ok(path)
}

/// Removes `container`'s directory (none: nothing to do).
pub fn remove(state_dir: &Path, container: &str) -> io::Result<()> {
    match std::fs::remove_dir_all(dir(state_dir, container)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_container_has_its_own_traversable_directory() {
        let a = dir(Path::new("/s"), "web");
        assert_ne!(a, dir(Path::new("/s"), "db"));
        assert_ne!(a, dir(Path::new("/t"), "web"));
        assert_eq!(a.parent(), Some(base().as_path()));
    }
}
