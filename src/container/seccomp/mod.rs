//! OCI seccomp profiles: policy apart from mechanism.
//!
//! - `profile`: what a profile says: the built-in default (a table of data) and the
//!   checked parse of a config.json `linux.seccomp`;
//! - `compile`: the mechanism, a profile to classic BPF with `seccompiler`;
//! - `cache`: compiled programs by content address, in memory and on disk, so a
//!   container start reuses the default profile's program instead of compiling it;
//! - `syscalls`: the name -> number table of this architecture.
//!
//! This file holds the compiled [`SeccompProgram`] and its install, the one step the
//! container's child runs (async-signal-safe).

mod cache;
mod compile;
mod profile;
mod syscalls;

use std::fmt;
use std::sync::Arc;

use nix::errno::Errno;
use seccompiler::sock_filter;

pub use cache::{
    CacheSource, cache_dir, cache_path, clear_memory_cache, compile, compile_with_cache_report,
};
pub use compile::compile_uncached;
pub use profile::{default_profile, parse_profile};

/// Errors from parsing or compiling a profile; `field` is the JSON path in config.json.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("linux.seccomp")]
    Json(#[from] serde_json::Error),
    #[error("linux.seccomp: seccompiler")]
    Backend(#[from] seccompiler::BackendError),
}

fn invalid(field: impl Into<String>, message: impl fmt::Display) -> SeccompError {
    SeccompError::Invalid {
        field: field.into(),
        message: message.to_string(),
    }
}

/// A compiled filter, ready to install. Cheap to clone and share between threads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeccompProgram {
    filter: Arc<[sock_filter]>,
    flags: u32,
}

impl SeccompProgram {
    /// Installs the filter on the calling thread. Async-signal-safe (no allocation, no lock:
    /// only the seccomp and prctl syscalls), for the last step before execve in a forked child.
    ///
    /// The filter is installed without `no_new_privs` when the caller still holds
    /// CAP_SYS_ADMIN (so `process.noNewPrivileges: false` keeps its meaning); otherwise the
    /// kernel requires it and it is set first.
    pub fn install(&self) -> Result<(), Errno> {
        let prog = libc::sock_fprog {
            // compile() never produces more than BPF_MAX_LEN (4096) instructions.
            len: self.filter.len() as u16,
            // seccompiler's sock_filter is #[repr(C)] with the same fields as the kernel's.
            filter: self.filter.as_ptr() as *mut libc::sock_filter,
        };
        match crate::sys::seccomp_set_mode_filter(&prog, self.flags) {
            Err(Errno::EACCES) => {
                nix::sys::prctl::set_no_new_privs()?;
                crate::sys::seccomp_set_mode_filter(&prog, self.flags)
            }
            other => other,
        }
    }

    /// The BPF instructions.
    pub fn instructions(&self) -> &[sock_filter] {
        &self.filter
    }

    /// SECCOMP_FILTER_FLAG_* bits passed to seccomp(2).
    pub fn flags(&self) -> u32 {
        self.flags
    }
}
