//! The container layer's errors: [`Error`] for every operation, [`ConfigError`] for a
//! config field that cannot be used.

use super::{cgroup, seccomp};
use oci_spec::runtime::ContainerState;
use std::fmt::Display;
use std::path::PathBuf;

/// Errors of the container layer; each names the container, file or config field.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid config {file}: {reason}")]
    Config { file: PathBuf, reason: String },
    #[error("invalid container ID {0:?}: use letters, digits and _+-.")]
    InvalidId(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("container {id} is {status}: cannot {op}")]
    BadState {
        id: String,
        status: ContainerState,
        op: &'static str,
    },
    #[error("rootfs {0} does not exist or is not a directory")]
    RootfsMissing(PathBuf),
    #[error("unknown signal {0:?}")]
    UnknownSignal(String),
    #[error("user namespace: {0}")]
    UserNamespace(String),
    #[error("container init failed: {what}")]
    Init {
        what: String,
        #[source]
        errno: nix::errno::Errno,
    },
    /// `process.args[0]` cannot be executed in the container: not found (ENOENT,
    /// `executable file not found in $PATH` for a name searched in `$PATH`), or not
    /// executable (EACCES: a directory, no x bit; ENOEXEC...).
    #[error("exec: {path:?}")]
    Exec {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("container init died during {0}")]
    InitDied(&'static str),
    #[error("{kind} hook {index} ({path}): {reason}")]
    Hook {
        kind: String,
        index: usize,
        path: PathBuf,
        reason: String,
    },
    #[error("corrupt state {file}: {reason}")]
    Corrupt { file: PathBuf, reason: String },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error("container {0} was not started by this process: its exit status is unknown")]
    NotChild(String),
    #[error(
        "the runtime binary {exe} would be writable from the container ({reason}; \
         CVE-2019-5736): call warren::container::exe::reexec_sealed() first thing in main"
    )]
    ExposedBinary { exe: PathBuf, reason: String },
}

impl Error {
    /// The shell's exit code for a program that could not run: 127 not found, 126
    /// found but not executable (what podman and runc users expect from `run`).
    pub fn exec_exit_code(&self) -> Option<i32> {
        match self {
            Error::Exec { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Some(127)
            }
            Error::Exec { .. } => Some(126),
            _ => None,
        }
    }
    pub(crate) fn config(field: &str, reason: impl std::fmt::Display) -> Error {
        Error::Config {
            file: PathBuf::from("config.json"),
            reason: format!("field `{field}`: {reason}"),
        }
    }
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

/// A config that cannot be used: the field (a JSON path such as `process.args`; `None`
/// when the document as a whole is bad) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", field.as_ref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
pub struct ConfigError {
    pub field: Option<String>,
    pub reason: String,
}

impl ConfigError {
    /// `field` is bad for `reason`.
    pub fn new(field: impl Into<String>, reason: impl Display) -> ConfigError {
        ConfigError {
            field: Some(field.into()),
            reason: reason.to_string(),
        }
    }
}
