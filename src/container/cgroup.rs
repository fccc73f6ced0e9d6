//! cgroups (temporary no-op shim until the seccomp branch is merged).

use oci_spec::runtime::LinuxResources;

#[derive(Debug, thiserror::Error)]
#[error("cgroup: {0}")]
pub struct CgroupError(String);

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Cgroup {
    name: String,
}

impl Cgroup {
    pub fn create(
        name: &str,
        _resources: Option<&LinuxResources>,
        _cgroups_path: Option<&str>,
    ) -> Result<Cgroup, CgroupError> {
        Ok(Cgroup { name: name.into() })
    }
    pub fn add_pid(&self, _pid: i32) -> Result<(), CgroupError> {
        Ok(())
    }
    pub fn destroy(&self) -> Result<(), CgroupError> {
        Ok(())
    }
}
