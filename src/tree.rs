//! Removing a directory tree that someone else may write to while we remove it (a
//! container's upper layer, a half-made copy of an image, a partial extract). Every step
//! goes through directory fds: no symlink is followed (a link is removed, never what it
//! points to), nothing outside the tree is reached, and no mount is crossed: a directory
//! with something mounted on it stops the removal with an error naming it, so a bind
//! mount left in a tree never costs the files of what it shows.
//!
//! The walk keeps one fd per level and no recursion, so a deep tree built to exhaust the
//! stack ends in an error (too many open files), never a crash.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::{Dir, Type};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::UnlinkatFlags;

use crate::sys;

/// Removes `path` and, when it is a directory, everything under it (what
/// `std::fs::remove_dir_all` does, without following a symlink or crossing a mount
/// anywhere in the tree). Components of `path` before its last are followed as usual.
/// A missing `path` is an error of kind `NotFound`. An error names the entry below
/// `path` it is about, relative to `path` (the caller names `path`).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let Some(name) = path.file_name() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}: not a path that names an entry to remove",
                path.display()
            ),
        ));
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let dir = nix::fcntl::open(parent, flags, Mode::empty())?;
    remove_tree_at(dir.as_fd(), name)
}

/// Removes `name` in `dir` and, for a directory, everything under it, as [`remove_tree`].
pub fn remove_tree_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    if !is_dir(dir, name)? {
        return unlink(dir, name, false, Path::new(""));
    }
    // The directories being emptied, outermost first, each with what is left to remove.
    let mut stack = vec![Level::open(dir, name, PathBuf::new())?];
    while let Some(level) = stack.last_mut() {
        let Some((child, hint)) = level.left.pop() else {
            let Some(done) = stack.pop() else { break };
            let parent = stack.last().map_or(dir, |l| l.fd.as_fd());
            unlink(parent, &done.name, true, &done.shown)?;
            continue;
        };
        let child_shown = level.shown.join(&child);
        let child_is_dir = match hint {
            Some(d) => d,
            None => match is_dir(level.fd.as_fd(), &child) {
                Ok(d) => d,
                // Gone meanwhile: nothing left to remove.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(named(&child_shown, e)),
            },
        };
        if child_is_dir {
            let next = Level::open(level.fd.as_fd(), &child, child_shown)?;
            stack.push(next);
        } else {
            match unlink(level.fd.as_fd(), &child, false, &child_shown) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
    }
    Ok(())
}

/// A directory being emptied: its fd, its name in its parent, and its entries not yet
/// removed (with whether each is a directory, when the listing said).
struct Level {
    fd: OwnedFd,
    name: OsString,
    /// Relative to the top of the removal ("" for the top).
    shown: PathBuf,
    left: Vec<(OsString, Option<bool>)>,
}

impl Level {
    /// Opens directory `name` in `dir` (refusing a symlink, and a mount on it) and lists it.
    fn open(dir: BorrowedFd<'_>, name: &OsStr, shown: PathBuf) -> io::Result<Level> {
        let resolve = sys::RESOLVE_NO_XDEV
            | sys::RESOLVE_NO_SYMLINKS
            | sys::RESOLVE_NO_MAGICLINKS
            | sys::RESOLVE_BENEATH;
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let fd = sys::openat2(dir, Path::new(name), flags, 0, resolve).map_err(|e| {
            if e.raw_os_error() == Some(libc::EXDEV) {
                io::Error::new(
                    e.kind(),
                    named_text(
                        &shown,
                        "something is mounted there; unmount it first (not removing across a mount)",
                    ),
                )
            } else {
                named(&shown, e)
            }
        })?;
        let mut left = Vec::new();
        let listing = Dir::from_fd(fd.try_clone().map_err(|e| named(&shown, e))?)
            .map_err(|e| named(&shown, e.into()))?;
        for entry in listing {
            let entry = entry.map_err(|e| named(&shown, e.into()))?;
            let child = OsStr::from_bytes(entry.file_name().to_bytes());
            if child == "." || child == ".." {
                continue;
            }
            let hint = entry.file_type().map(|t| t == Type::Directory);
            left.push((child.to_os_string(), hint));
        }
        Ok(Level {
            fd,
            name: name.to_os_string(),
            shown,
            left,
        })
    }
}

/// Whether `name` in `dir` is a directory (a symlink to one is not).
fn is_dir(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<bool> {
    let st = nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    Ok(SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR)
}

fn unlink(dir: BorrowedFd<'_>, name: &OsStr, is_dir: bool, shown: &Path) -> io::Result<()> {
    let how = if is_dir {
        UnlinkatFlags::RemoveDir
    } else {
        UnlinkatFlags::NoRemoveDir
    };
    nix::unistd::unlinkat(dir, name, how).map_err(|e| named(shown, e.into()))
}

/// `err`, its message prefixed by the entry it is about (the kind kept); unchanged for
/// the top, which the caller names.
fn named(rel: &Path, err: io::Error) -> io::Error {
    if rel.as_os_str().is_empty() {
        err
    } else {
        io::Error::new(err.kind(), named_text(rel, &err.to_string()))
    }
}

fn named_text(rel: &Path, text: &str) -> String {
    if rel.as_os_str().is_empty() {
        text.to_string()
    } else {
        format!("{}: {text}", rel.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A directory `name` in `tmp` holding a file `keep`, for links to point at.
    fn kept_dir(tmp: &tempfile::TempDir, name: &str) -> PathBuf {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(dir.join("keep"), b"x").expect("write");
        dir
    }

    #[test]
    fn removes_a_tree_and_never_what_a_symlink_in_it_points_to() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let outside = kept_dir(&tmp, "outside");
        let tree = tmp.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b/c")).expect("mkdir");
        std::fs::write(tree.join("a/b/c/f"), b"x").expect("write");
        std::fs::write(tree.join("top"), b"x").expect("write");
        symlink(&outside, tree.join("a/to_dir")).expect("symlink");
        symlink(outside.join("keep"), tree.join("a/b/to_file")).expect("symlink");
        remove_tree(&tree).expect("remove_tree");
        assert!(!tree.exists());
        assert!(
            outside.join("keep").exists(),
            "followed a symlink out of the tree"
        );
    }

    #[test]
    fn a_symlink_given_as_the_tree_is_removed_not_followed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let target = kept_dir(&tmp, "target");
        let link = tmp.path().join("link");
        symlink(&target, &link).expect("symlink");
        remove_tree(&link).expect("remove_tree");
        assert!(link.symlink_metadata().is_err());
        assert!(target.join("keep").exists());
    }

    #[test]
    fn missing_is_not_found() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let gone = tmp.path().join("gone");
        let err = remove_tree(&gone).expect_err("removed a missing path");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    /// A mount inside the tree stops the removal, naming it, and nothing on the mounted
    /// filesystem is touched. Runs in a private mount namespace of its own thread.
    #[test]
    fn never_removes_across_a_mount() {
        if !crate::testing::require_root("mounts a tmpfs in a private mount namespace") {
            return;
        }
        std::thread::spawn(|| {
            use nix::mount::{MsFlags, mount};
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare");
            let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
            mount(None::<&str>, "/", None::<&str>, private, None::<&str>).expect("private");
            let tmp = tempfile::tempdir().expect("tempdir");
            let tree = tmp.path().join("tree");
            let mnt = tree.join("a/mnt");
            std::fs::create_dir_all(&mnt).expect("mkdir");
            mount(
                Some("tmpfs"),
                &mnt,
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .expect("mount tmpfs");
            std::fs::write(mnt.join("keep"), b"x").expect("write");
            let err = remove_tree(&tree).expect_err("removed across a mount");
            assert!(
                err.to_string()
                    .starts_with("a/mnt: something is mounted there"),
                "{err}"
            );
            assert!(
                mnt.join("keep").exists(),
                "removed a file on the mounted filesystem"
            );
            nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH).expect("umount");
            remove_tree(&tree).expect("remove_tree after the unmount");
            assert!(!tree.exists());
        })
        .join()
        .expect("the test thread");
    }

    /// A tree deeper than the stack could take in a recursive walk.
    #[test]
    fn a_very_deep_tree_is_removed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("deep");
        std::fs::create_dir(&root).expect("mkdir");
        let mut fd: OwnedFd =
            nix::fcntl::open(&root, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
                .expect("open");
        for _ in 0..200 {
            nix::sys::stat::mkdirat(&fd, "d", Mode::from_bits_truncate(0o755)).expect("mkdirat");
            fd = nix::fcntl::openat(
                &fd,
                "d",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                Mode::empty(),
            )
            .expect("openat");
        }
        drop(fd);
        remove_tree(&root).expect("remove_tree");
        assert!(!root.exists());
    }
}
