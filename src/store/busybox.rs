//! The embedded default image: a minimal rootfs around Debian's static busybox.
//!
//! [`busybox_tree`] lays the tree out in a directory (one binary, an applet symlink for
//! every entry of `busybox --list-full`, `/etc/passwd`, `/etc/group`, `/tmp`, `/root` and
//! empty mount points); [`busybox_config`] is its OCI image config (`Cmd ["/bin/sh"]`,
//! `Env PATH`). `images/busybox/build.sh` builds the same image from the shell.

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::store::{Entry, ImageInfo, Kind, Store, Timestamp};

/// Where Debian's `busybox-static` installs the binary.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";

pub(crate) use crate::store::imageconfig::DEFAULT_PATH;

#[derive(Debug, thiserror::Error)]
pub enum BusyboxError {
    #[error("{0} is missing: apt-get install -y busybox-static")]
    Missing(PathBuf),
    #[error("cannot run `{binary} --list-full`: {err}")]
    List { binary: PathBuf, err: io::Error },
    #[error("`{binary} --list-full` lists a hostile applet path {applet:?}")]
    BadApplet { binary: PathBuf, applet: String },
    #[error("cannot write {path}: {err}")]
    Write { path: PathBuf, err: io::Error },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The directories of the image (parents first) and their modes.
const DIRS: &[(&str, u32)] = &[
    ("bin", 0o755),
    ("sbin", 0o755),
    ("usr", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("etc", 0o755),
    ("dev", 0o755),
    ("proc", 0o755),
    ("sys", 0o755),
    ("run", 0o755),
    ("var", 0o755),
    ("var/tmp", 0o1777),
    ("tmp", 0o1777),
    ("root", 0o700),
];

const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// Builds the busybox rootfs in `dest` (created if missing, expected empty) from the
/// static binary at `busybox` (normally [`DEFAULT_BUSYBOX`]). Files are owned by the
/// caller; importing into the store records whatever owner they have.
pub fn busybox_tree(dest: &Path, busybox: &Path) -> Result<(), BusyboxError> {
    let applets = applets(busybox)?;
    let write = |path: &Path, r: io::Result<()>| {
        r.map_err(|err| BusyboxError::Write {
            path: path.to_path_buf(),
            err,
        })
    };
    let dir = |rel: &str, mode: u32| -> Result<(), BusyboxError> {
        let path = dest.join(rel);
        write(&path, fs::create_dir_all(&path))?;
        write(
            &path,
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)),
        )
    };
    dir("", 0o755)?;
    for (d, mode) in DIRS {
        dir(d, *mode)?;
    }
    let bin = dest.join("bin/busybox");
    write(&bin, fs::copy(busybox, &bin).map(drop))?;
    write(
        &bin,
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)),
    )?;
    for applet in &applets {
        let link = dest.join(applet);
        if let Some(parent) = link.parent() {
            write(parent, fs::create_dir_all(parent))?;
        }
        match fs::symlink_metadata(&link) {
            Ok(_) => continue, // listed twice, or already built
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return write(&link, Err(e)),
        }
        write(&link, symlink("/bin/busybox", &link))?;
    }
    for (rel, text, mode) in [("etc/passwd", PASSWD, 0o644), ("etc/group", GROUP, 0o644)] {
        let path = dest.join(rel);
        write(&path, fs::write(&path, text))?;
        write(
            &path,
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)),
        )?;
    }
    Ok(())
}

/// The applet paths of `busybox --list-full` (relative, checked), without the binary.
fn applets(busybox: &Path) -> Result<Vec<String>, BusyboxError> {
    if !busybox.is_file() {
        return Err(BusyboxError::Missing(busybox.to_path_buf()));
    }
    let list = Command::new(busybox)
        .arg("--list-full")
        .output()
        .and_then(|out| {
            if out.status.success() {
                Ok(out.stdout)
            } else {
                Err(io::Error::other(format!("exited with {}", out.status)))
            }
        })
        .map_err(|err| BusyboxError::List {
            binary: busybox.to_path_buf(),
            err,
        })?;
    let mut out = Vec::new();
    for applet in String::from_utf8_lossy(&list).lines().map(str::trim) {
        if applet.is_empty() || applet == "bin/busybox" {
            continue;
        }
        let safe = applet
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
        if !safe {
            return Err(BusyboxError::BadApplet {
                binary: busybox.to_path_buf(),
                applet: applet.to_string(),
            });
        }
        if !out.iter().any(|a| a == applet) {
            out.push(applet.to_string());
        }
    }
    Ok(out)
}

/// Imports the busybox image straight into `store` as `name` (no tree on disk): the
/// runtime's embedded default. Everything is owned by root; mtimes are the epoch, so the
/// same binary always gives the same image.
pub fn import(store: &Store, name: &str, busybox: &Path) -> Result<ImageInfo, BusyboxError> {
    let applets = applets(busybox)?;
    let mut w = store.writer()?;
    let entry = |path: &str, kind: Kind, mode: u32| Entry {
        path: PathBuf::from(path),
        kind,
        mode,
        uid: 0,
        gid: 0,
        mtime: Timestamp::default(),
        xattrs: Vec::new(),
    };
    w.add(entry("", Kind::Dir, 0o755), None)?;
    for (dir, mode) in DIRS {
        w.add(entry(dir, Kind::Dir, *mode), None)?;
    }
    let read_err = |err| BusyboxError::List {
        binary: busybox.to_path_buf(),
        err,
    };
    let mut bin = std::fs::File::open(busybox).map_err(read_err)?;
    let size = bin.metadata().map_err(read_err)?.len();
    w.add(
        entry("bin/busybox", Kind::File { size }, 0o755),
        Some(&mut bin),
    )?;
    for applet in &applets {
        if let Some(parent) = Path::new(applet)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            if w.entry(parent).is_none() {
                w.add(entry(&parent.to_string_lossy(), Kind::Dir, 0o755), None)?;
            }
        }
        let target = Kind::Symlink {
            target: PathBuf::from("/bin/busybox"),
        };
        w.add(entry(applet, target, 0o777), None)?;
    }
    for (path, text) in [("etc/passwd", PASSWD), ("etc/group", GROUP)] {
        let kind = Kind::File {
            size: text.len() as u64,
        };
        w.add(entry(path, kind, 0o644), Some(&mut text.as_bytes()))?;
    }
    Ok(w.commit(name, Some(busybox_config()))?)
}

/// The OCI image config JSON of the busybox image.
pub fn busybox_config() -> Vec<u8> {
    let config = serde_json::json!({
        "architecture": crate::store::imageconfig::go_arch(),
        "os": "linux",
        "config": {
            "Cmd": ["/bin/sh"],
            "Env": [DEFAULT_PATH],
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [] },
    });
    serde_json::to_vec_pretty(&config).unwrap_or_default()
}
