//! Seccomp profiles (temporary no-op shim until the seccomp branch is merged).

use oci_spec::runtime::LinuxSeccomp;

#[derive(Debug, thiserror::Error)]
#[error("seccomp: {0}")]
pub struct SeccompError(String);

#[derive(Debug, Clone)]
pub struct SeccompProgram;

impl SeccompProgram {
    pub fn install(&self) -> Result<(), nix::errno::Errno> {
        Ok(())
    }
}

pub fn default_profile() -> LinuxSeccomp {
    LinuxSeccomp::default()
}

pub fn compile(_profile: &LinuxSeccomp) -> Result<SeccompProgram, SeccompError> {
    Ok(SeccompProgram)
}
