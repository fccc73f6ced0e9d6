//! Control of a running container through its cgroup, for the runc CLI's `pause`,
//! `resume`, `update`, `events --stats` and `ps`.
//!
//! A container gets a cgroup whenever it has limits, device rules (which every runc
//! client sends), a `cgroupsPath` or a cgroup view ([`cgroup::needed`]); one without
//! cannot be paused or updated and says so. Its processes are still listed: they are
//! the processes of its init's pid namespace.

use std::os::unix::fs::MetadataExt;

use oci_spec::runtime::{ContainerState, LinuxResources};

use super::cgroup::{self, Cgroup, CgroupError};
use super::{Container, Error, state};

impl Container {
    /// The container's cgroup, or an error naming what `op` needs it for.
    fn cgroup_for(&self, op: &str) -> Result<&Cgroup, Error> {
        match &self.record.cgroup {
            Some(cg) if !cg.is_noop() => Ok(cg),
            _ => Err(CgroupError::Missing {
                id: self.record.id.clone(),
                reason: format!(
                    "{op} needs one (it is made for limits, device rules, a cgroupsPath or a \
                     cgroup mount or namespace in the config)"
                ),
            }
            .into()),
        }
    }

    /// Refuses `op` unless the container is created or running.
    fn live(&self, op: &'static str) -> Result<(), Error> {
        match self.status() {
            ContainerState::Created | ContainerState::Running => Ok(()),
            status => Err(Error::BadState {
                id: self.record.id.clone(),
                status,
                op,
            }),
        }
    }

    /// Freezes every process of the container (`runc pause`); returns once they are.
    pub fn pause(&self) -> Result<(), Error> {
        self.live("pause")?;
        Ok(self.cgroup_for("pause")?.freeze()?)
    }

    /// Thaws a paused container (`runc resume`).
    pub fn resume(&self) -> Result<(), Error> {
        self.live("resume")?;
        Ok(self.cgroup_for("resume")?.thaw()?)
    }

    /// True when the container's cgroup is frozen (false without a cgroup).
    pub fn paused(&self) -> Result<bool, Error> {
        match &self.record.cgroup {
            Some(cg) if !cg.is_noop() => Ok(cg.frozen()?),
            _ => Ok(false),
        }
    }

    /// Changes the limits of a live container (`runc update`) through the same table as
    /// create; zero and empty values are left as they are. The applied resources are
    /// recorded in the container's state.
    pub fn update(&self, resources: &LinuxResources) -> Result<(), Error> {
        let dir = state::Dir::open(&self.root, &self.record.id, true)?;
        let mut record = dir
            .load()?
            .ok_or_else(|| Error::NotFound(self.record.id.clone()))?;
        self.live("update")?;
        self.cgroup_for("update")?;
        let Some(cg) = record.cgroup.as_mut() else {
            return Err(Error::NotFound(self.record.id.clone()));
        };
        cg.update(resources)?;
        dir.save(&record)
    }

    /// The container's cgroup usage (`runc events --stats`).
    pub fn stats(&self) -> Result<cgroup::Stats, Error> {
        Ok(self.cgroup_for("stats")?.stats()?)
    }

    /// Every process of the container, host pids, sorted (`runc ps`): those in its
    /// cgroup, or without one those in its init's pid namespace.
    pub fn pids(&self) -> Result<Vec<i32>, Error> {
        if let Some(cg) = self.record.cgroup.as_ref().filter(|c| !c.is_noop()) {
            return Ok(cg.pids()?);
        }
        if self.status() == ContainerState::Stopped {
            return Ok(Vec::new());
        }
        pid_namespace_members(self.record.pid)
    }
}

/// The processes sharing `init`'s pid namespace (by the namespace's inode).
fn pid_namespace_members(init: i32) -> Result<Vec<i32>, Error> {
    let ns = |pid: &str| std::fs::metadata(format!("/proc/{pid}/ns/pid")).ok();
    let Some(theirs) = ns(&init.to_string()) else {
        return Ok(Vec::new());
    };
    let entries = std::fs::read_dir("/proc").map_err(Error::io("read /proc"))?;
    let mut out: Vec<i32> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let pid: i32 = name.parse().ok()?;
            let m = ns(&name)?;
            (m.dev() == theirs.dev() && m.ino() == theirs.ino()).then_some(pid)
        })
        .collect();
    out.sort_unstable();
    Ok(out)
}
