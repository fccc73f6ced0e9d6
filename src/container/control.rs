//! TEMPORARY stub (the cgroup helper writes the real one): the signatures the CLI calls.

use super::{Container, Error};
use oci_spec::runtime::LinuxResources;

/// Stand-in for `cgroup::Stats`.
#[derive(Debug, Default, serde::Serialize)]
pub struct Stats {}

fn todo() -> Error {
    Error::Io {
        what: "container control".into(),
        source: std::io::Error::from(std::io::ErrorKind::Unsupported),
    }
}

impl Container {
    pub fn pause(&self) -> Result<(), Error> {
        Err(todo())
    }
    pub fn resume(&self) -> Result<(), Error> {
        Err(todo())
    }
    pub fn paused(&self) -> Result<bool, Error> {
        Err(todo())
    }
    pub fn update(&self, _resources: &LinuxResources) -> Result<(), Error> {
        Err(todo())
    }
    pub fn stats(&self) -> Result<Stats, Error> {
        Err(todo())
    }
    pub fn pids(&self) -> Result<Vec<i32>, Error> {
        Err(todo())
    }
}
