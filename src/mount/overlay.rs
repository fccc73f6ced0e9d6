//! overlayfs through the new mount API: `fsopen("overlay")`, one `fsconfig` per option,
//! `fsmount`, `move_mount`. Layers are paths or open fds (a detached idmapped mount has no
//! path, so it is handed over as an fd: `FSCONFIG_SET_FD`, Linux 6.13+).

use crate::sys;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// One lower layer: a directory by path, or a detached mount by fd (with the path it
/// came from, for messages).
#[derive(Debug)]
pub enum Layer {
    Path(PathBuf),
    Mount { fd: OwnedFd, source: PathBuf },
}

impl Layer {
    pub fn source(&self) -> &Path {
        match self {
            Layer::Path(p) => p,
            Layer::Mount { source, .. } => source,
        }
    }
}

/// The options of one overlay mount.
#[derive(Debug)]
pub struct Overlay {
    /// Top-most first, as in `lowerdir=`.
    pub lowers: Vec<Layer>,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// `metacopy=on`: a chown/chmod copies up metadata only. Needs `redirect_dir=on`
    /// (and `nfs_export=off`), which is set with it.
    pub metacopy: bool,
    /// `index=on`: hardlinks stay hardlinks after copy-up.
    pub index: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("overlayfs is not available")]
    Open { source: io::Error },
    #[error("overlay option {key}={value} refused{}", log_suffix(.log))]
    Option {
        key: String,
        value: String,
        source: io::Error,
        log: String,
    },
    #[error("overlay with upper {upper} refused{}", log_suffix(.log))]
    Create {
        upper: PathBuf,
        source: io::Error,
        log: String,
    },
    #[error("cannot attach the overlay at {target}")]
    Attach { target: PathBuf, source: io::Error },
}

fn log_suffix(log: &str) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!(" (kernel: {log})")
    }
}

impl OverlayError {
    /// The underlying errno, to tell "not permitted" from "not supported".
    pub fn errno(&self) -> Option<i32> {
        match self {
            OverlayError::Open { source }
            | OverlayError::Option { source, .. }
            | OverlayError::Create { source, .. }
            | OverlayError::Attach { source, .. } => source.raw_os_error(),
        }
    }
}

/// Reads the messages the kernel left in a filesystem context (`e overlayfs: ...`).
fn context_log(fs: BorrowedFd<'_>) -> String {
    let mut lines = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = nix::unistd::read(fs, &mut buf) {
        if n == 0 {
            break;
        }
        lines.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
    }
    lines.join("; ")
}

fn c(s: &str) -> CString {
    // Option keys and values here are fixed ASCII without NULs.
    CString::new(s).unwrap_or_default()
}

impl Overlay {
    /// The `key=value` options this overlay sets, in order (layers excluded).
    pub fn flags(&self) -> Vec<(&'static str, &'static str)> {
        let mut opts = Vec::new();
        if self.metacopy {
            opts.extend([
                ("redirect_dir", "on"),
                ("metacopy", "on"),
                ("nfs_export", "off"),
            ]);
        } else {
            opts.push(("metacopy", "off"));
        }
        opts.push(("index", if self.index { "on" } else { "off" }));
        opts
    }

    /// Creates the overlay as a detached mount.
    pub fn create(&self) -> Result<OwnedFd, OverlayError> {
        let fs = sys::fsopen(c"overlay").map_err(|source| OverlayError::Open { source })?;
        let fail = |key: &str, value: String, source: io::Error| OverlayError::Option {
            key: key.to_string(),
            value,
            source,
            log: context_log(fs.as_fd()),
        };
        for layer in &self.lowers {
            let res = match layer {
                Layer::Path(p) => {
                    sys::cstr(p).and_then(|v| sys::fsconfig_set(fs.as_fd(), c"lowerdir+", Some(&v)))
                }
                Layer::Mount { fd, .. } => {
                    sys::fsconfig_set_fd(fs.as_fd(), c"lowerdir+", fd.as_fd())
                }
            };
            res.map_err(|e| fail("lowerdir+", layer.source().display().to_string(), e))?;
        }
        for (key, path) in [("upperdir", &self.upper), ("workdir", &self.work)] {
            sys::cstr(path)
                .and_then(|v| sys::fsconfig_set(fs.as_fd(), &c(key), Some(&v)))
                .map_err(|e| fail(key, path.display().to_string(), e))?;
        }
        for (key, value) in self.flags() {
            sys::fsconfig_set(fs.as_fd(), &c(key), Some(&c(value)))
                .map_err(|e| fail(key, value.to_string(), e))?;
        }
        sys::fsmount(fs.as_fd(), 0).map_err(|source| OverlayError::Create {
            upper: self.upper.clone(),
            source,
            log: context_log(fs.as_fd()),
        })
    }

    /// Creates the overlay and attaches it at `target`.
    pub fn mount(&self, target: &Path) -> Result<(), OverlayError> {
        let mnt = self.create()?;
        attach(mnt.as_fd(), target)
    }
}

/// Attaches a detached mount (a container's view) at `target`, `nodev`: an image's
/// device nodes (a 0666 node of the host's disk) open nothing, through the view or in the
/// container (which gets its own /dev, and keeps the flag: a user namespace cannot clear
/// it). Setuid binaries keep working: a container's view needs them.
pub fn attach(mnt: BorrowedFd<'_>, target: &Path) -> Result<(), OverlayError> {
    let fail = |source| OverlayError::Attach {
        target: target.to_path_buf(),
        source,
    };
    sys::mount_setattr(
        mnt,
        Path::new(""),
        libc::AT_EMPTY_PATH as u32,
        sys::MOUNT_ATTR_NODEV,
        0,
        None,
    )
    .map_err(fail)?;
    sys::move_mount(mnt, nix::fcntl::AT_FDCWD, target).map_err(fail)
}
