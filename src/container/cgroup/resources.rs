//! The OCI `linux.resources` -> cgroup file writes table, for v1 and v2: pure planning,
//! no host access (the files are written by [`Cgroup`](super::Cgroup)).
//!
//! Zero and empty values mean unset, as in runc (`libcontainer/cgroups/fs`, `fs2`): docker
//! sends `blockIO: {weight: 0}` and `cpu.shares: 0` for every container, meaning "the
//! kernel's default". Only -1 (or any negative value) means "no limit".

use oci_spec::runtime::{
    LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxNetwork, LinuxPids, LinuxResources,
};

use super::{CgroupError, Version, v2};

/// One value to write: `file` in the directory of `controller`.
#[derive(Debug)]
pub(super) struct Setting {
    pub controller: &'static str,
    pub file: String,
    pub value: String,
}

/// The settings being planned for one version.
struct Plan {
    v1: bool,
    out: Vec<Setting>,
}

impl Plan {
    fn set(&mut self, controller: &'static str, file: &str, value: String) {
        self.out.push(Setting {
            controller,
            file: file.into(),
            value,
        });
    }

    /// A limit: negative means none (`-1` on v1, `max` on v2).
    fn limit(&self, v: i64) -> String {
        match (v < 0, self.v1) {
            (true, true) => "-1".into(),
            (true, false) => "max".into(),
            (false, _) => v.to_string(),
        }
    }

    /// The v1 or the v2 name of a file.
    fn name<'a>(&self, v1: &'a str, v2: &'a str) -> &'a str {
        if self.v1 { v1 } else { v2 }
    }
}

fn unsupported(controller: &str, message: &str) -> CgroupError {
    CgroupError::Unsupported {
        controller: controller.into(),
        message: message.into(),
    }
}

/// The files to write for `resources` on `version`, in a working order. Device rules are
/// not files of this table (see `devices`).
pub(super) fn settings(
    resources: Option<&LinuxResources>,
    version: Version,
) -> Result<Vec<Setting>, CgroupError> {
    let mut plan = Plan {
        v1: version == Version::V1,
        out: Vec::new(),
    };
    let Some(r) = resources else {
        return Ok(plan.out);
    };
    if let Some(m) = r.memory() {
        memory(&mut plan, m)?;
    }
    if let Some(c) = r.cpu() {
        match plan.v1 {
            true => cpu_v1(&mut plan, c),
            false => cpu_v2(&mut plan, c)?,
        }
        cpuset(&mut plan, c);
    }
    if let Some(p) = r.pids() {
        pids(&mut plan, p);
    }
    unified(&mut plan, r)?;
    refused(r)?;
    Ok(plan.out)
}

/// Memory limit, reservation, swap, swappiness, OOM killer; 0 is unset.
fn memory(plan: &mut Plan, m: &LinuxMemory) -> Result<(), CgroupError> {
    let limit = m.limit().filter(|v| *v != 0);
    let swap = m.swap().filter(|v| *v != 0);
    if let Some(v) = limit {
        let file = plan.name("memory.limit_in_bytes", "memory.max");
        let value = plan.limit(v);
        plan.set("memory", file, value);
    }
    if let Some(v) = m.reservation().filter(|v| *v != 0) {
        let file = plan.name("memory.soft_limit_in_bytes", "memory.low");
        let value = plan.limit(v);
        plan.set("memory", file, value);
    }
    if let Some(swap) = swap {
        if plan.v1 {
            // OCI swap is memory+swap, which is what memsw limits.
            let value = plan.limit(swap);
            plan.set("memory", "memory.memsw.limit_in_bytes", value);
        } else {
            // v2 limits swap alone.
            let value = match (swap, limit) {
                (s, _) if s < 0 => "max".to_string(),
                (s, Some(l)) if l > 0 && s >= l => (s - l).to_string(),
                _ => {
                    return Err(unsupported(
                        "memory",
                        "linux.resources.memory.swap needs a memory limit no larger than it",
                    ));
                }
            };
            plan.set("memory", "memory.swap.max", value);
        }
    }
    if let Some(v) = m.swappiness() {
        if !plan.v1 {
            return Err(unsupported("memory", "swappiness has no cgroup v2 file"));
        }
        if v > 100 {
            return Err(unsupported(
                "memory",
                &format!("swappiness {v} is not in 0..=100"),
            ));
        }
        plan.set("memory", "memory.swappiness", v.to_string());
    }
    if m.disable_oom_killer() == Some(true) {
        if !plan.v1 {
            return Err(unsupported(
                "memory",
                "disableOOMKiller has no cgroup v2 file",
            ));
        }
        plan.set("memory", "memory.oom_control", "1".into());
    }
    Ok(())
}

/// v1 shares, CFS period and quota, realtime period and runtime; 0 is unset.
fn cpu_v1(plan: &mut Plan, c: &LinuxCpu) {
    if let Some(v) = c.shares().filter(|v| *v != 0) {
        plan.set("cpu", "cpu.shares", v.to_string());
    }
    // The period first: the kernel checks the quota against it.
    if let Some(v) = c.period().filter(|v| *v != 0) {
        plan.set("cpu", "cpu.cfs_period_us", v.to_string());
    }
    if let Some(v) = c.quota().filter(|v| *v != 0) {
        let value = plan.limit(v);
        plan.set("cpu", "cpu.cfs_quota_us", value);
    }
    if let Some(v) = c.realtime_period().filter(|v| *v != 0) {
        plan.set("cpu", "cpu.rt_period_us", v.to_string());
    }
    if let Some(v) = c.realtime_runtime().filter(|v| *v != 0) {
        plan.set("cpu", "cpu.rt_runtime_us", v.to_string());
    }
}

/// v2 weight (from shares) and `cpu.max`; 0 is unset.
fn cpu_v2(plan: &mut Plan, c: &LinuxCpu) -> Result<(), CgroupError> {
    if let Some(shares) = c.shares().filter(|v| *v != 0) {
        // The conversion runc, crun and systemd share: [2, 262144] -> [1, 10000].
        let weight = 1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142;
        plan.set("cpu", "cpu.weight", weight.to_string());
    }
    let quota = c.quota().filter(|v| *v != 0);
    let period = c.period().filter(|v| *v != 0);
    if quota.is_some() || period.is_some() {
        // As runc: without a period the kernel keeps the one it has.
        let mut value = quota
            .filter(|q| *q > 0)
            .map_or("max".into(), |q| q.to_string());
        if let Some(p) = period {
            value = format!("{value} {p}");
        }
        plan.set("cpu", "cpu.max", value);
    }
    if c.realtime_period().is_some_and(|v| v != 0) || c.realtime_runtime().is_some_and(|v| v != 0) {
        return Err(unsupported(
            "cpu",
            "realtime scheduling limits need cgroup v1",
        ));
    }
    Ok(())
}

/// cpuset cpus and mems; empty is unset.
fn cpuset(plan: &mut Plan, c: &LinuxCpu) {
    if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
        plan.set("cpuset", "cpuset.cpus", cpus.into());
    }
    if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
        plan.set("cpuset", "cpuset.mems", mems.into());
    }
}

/// pids.max: 0 is unset, negative is no limit.
fn pids(plan: &mut Plan, p: &LinuxPids) {
    let max = match p.limit() {
        0 => return,
        l if l < 0 => "max".to_string(),
        l => l.to_string(),
    };
    plan.set("pids", "pids.max", max);
}

/// `linux.resources.unified`: v2 files by name, of the known controllers only.
fn unified(plan: &mut Plan, r: &LinuxResources) -> Result<(), CgroupError> {
    let Some(unified) = r.unified().as_ref().filter(|u| !u.is_empty()) else {
        return Ok(());
    };
    if plan.v1 {
        return Err(unsupported(
            "unified",
            "linux.resources.unified needs cgroup v2",
        ));
    }
    let mut keys: Vec<_> = unified.iter().collect();
    keys.sort();
    for (key, value) in keys {
        let controller = match key.split_once('.') {
            Some((c, _)) if !key.contains('/') => v2::CONTROLLERS.iter().find(|k| **k == c),
            _ => None,
        };
        let Some(controller) = controller else {
            return Err(unsupported(
                "unified",
                &format!("unknown cgroup v2 file {key:?}"),
            ));
        };
        plan.set(controller, key, value.clone());
    }
    Ok(())
}

/// Controllers warren does not drive: an error when a value is set (zero and empty ones
/// are unset, as in runc).
fn refused(r: &LinuxResources) -> Result<(), CgroupError> {
    for (present, what) in [
        (r.block_io().as_ref().is_some_and(block_io_set), "blkio"),
        (
            r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()),
            "hugetlb",
        ),
        (r.network().as_ref().is_some_and(network_set), "net_cls"),
        (r.rdma().as_ref().is_some_and(|h| !h.is_empty()), "rdma"),
    ] {
        if present {
            return Err(unsupported(
                what,
                "limits for this controller are not supported by warren",
            ));
        }
    }
    Ok(())
}

fn block_io_set(b: &LinuxBlockIo) -> bool {
    let nonempty = |v: &Option<Vec<_>>| v.as_ref().is_some_and(|v| !v.is_empty());
    b.weight().is_some_and(|w| w != 0)
        || b.leaf_weight().is_some_and(|w| w != 0)
        || b.weight_device().as_ref().is_some_and(|v| !v.is_empty())
        || nonempty(b.throttle_read_bps_device())
        || nonempty(b.throttle_write_bps_device())
        || nonempty(b.throttle_read_iops_device())
        || nonempty(b.throttle_write_iops_device())
}

fn network_set(n: &LinuxNetwork) -> bool {
    n.class_id().is_some_and(|c| c != 0) || n.priorities().as_ref().is_some_and(|p| !p.is_empty())
}
