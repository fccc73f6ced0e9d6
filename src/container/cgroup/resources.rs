//! The OCI `linux.resources` -> cgroup file writes table, for v1 and v2: pure planning,
//! no host access (the files are written by [`Cgroup`](super::Cgroup)).

use oci_spec::runtime::LinuxResources;

use super::{CgroupError, Version, v2};

/// One value to write: `file` in the directory of `controller`.
pub(super) struct Setting {
    pub controller: &'static str,
    pub file: String,
    pub value: String,
}

/// The files to write for `resources` on `version`, in a working order.
pub(super) fn settings(
    resources: Option<&LinuxResources>,
    version: Version,
) -> Result<Vec<Setting>, CgroupError> {
    let mut out = Vec::new();
    let Some(r) = resources else {
        return Ok(out);
    };
    let mut set = |controller: &'static str, file: &str, value: String| {
        out.push(Setting {
            controller,
            file: file.into(),
            value,
        })
    };
    let unsupported = |controller: &str, message: &str| CgroupError::Unsupported {
        controller: controller.into(),
        message: message.into(),
    };
    let v1 = version == Version::V1;
    // -1 (or 0 for pids) means no limit.
    let limit = |v: i64| match (v < 0, v1) {
        (true, true) => "-1".to_string(),
        (true, false) => "max".to_string(),
        (false, _) => v.to_string(),
    };

    if let Some(m) = r.memory() {
        if let Some(v) = m.limit() {
            set(
                "memory",
                if v1 {
                    "memory.limit_in_bytes"
                } else {
                    "memory.max"
                },
                limit(v),
            );
        }
        if let Some(v) = m.reservation() {
            set(
                "memory",
                if v1 {
                    "memory.soft_limit_in_bytes"
                } else {
                    "memory.low"
                },
                limit(v),
            );
        }
        if let Some(swap) = m.swap() {
            if v1 {
                // OCI swap is memory+swap, which is what memsw limits.
                set("memory", "memory.memsw.limit_in_bytes", limit(swap));
            } else {
                // v2 limits swap alone.
                let value = match (swap, m.limit()) {
                    (s, _) if s < 0 => "max".to_string(),
                    (s, Some(l)) if l >= 0 && s >= l => (s - l).to_string(),
                    _ => {
                        return Err(unsupported(
                            "memory",
                            "linux.resources.memory.swap needs a memory limit no larger than it",
                        ));
                    }
                };
                set("memory", "memory.swap.max", value);
            }
        }
        if let Some(v) = m.swappiness() {
            if !v1 {
                return Err(unsupported("memory", "swappiness has no cgroup v2 file"));
            }
            set("memory", "memory.swappiness", v.to_string());
        }
        if m.disable_oom_killer() == Some(true) {
            if !v1 {
                return Err(unsupported(
                    "memory",
                    "disableOOMKiller has no cgroup v2 file",
                ));
            }
            set("memory", "memory.oom_control", "1".into());
        }
    }
    if let Some(c) = r.cpu() {
        if v1 {
            if let Some(v) = c.shares() {
                set("cpu", "cpu.shares", v.to_string());
            }
            // The period first: the kernel checks the quota against it.
            if let Some(v) = c.period() {
                set("cpu", "cpu.cfs_period_us", v.to_string());
            }
            if let Some(v) = c.quota() {
                set("cpu", "cpu.cfs_quota_us", limit(v));
            }
            if let Some(v) = c.realtime_period() {
                set("cpu", "cpu.rt_period_us", v.to_string());
            }
            if let Some(v) = c.realtime_runtime() {
                set("cpu", "cpu.rt_runtime_us", v.to_string());
            }
        } else {
            if let Some(shares) = c.shares() {
                // The conversion runc, crun and systemd share: [2, 262144] -> [1, 10000].
                let weight = 1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142;
                set("cpu", "cpu.weight", weight.to_string());
            }
            if c.quota().is_some() || c.period().is_some() {
                let quota = c
                    .quota()
                    .filter(|q| *q > 0)
                    .map_or("max".into(), |q| q.to_string());
                set(
                    "cpu",
                    "cpu.max",
                    format!("{quota} {}", c.period().unwrap_or(100_000)),
                );
            }
            if c.realtime_period().is_some() || c.realtime_runtime().is_some() {
                return Err(unsupported(
                    "cpu",
                    "realtime scheduling limits need cgroup v1",
                ));
            }
        }
        if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
            set("cpuset", "cpuset.cpus", cpus.into());
        }
        if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
            set("cpuset", "cpuset.mems", mems.into());
        }
    }
    if let Some(p) = r.pids() {
        let max = if p.limit() > 0 {
            p.limit().to_string()
        } else {
            "max".into()
        };
        set("pids", "pids.max", max);
    }
    if let Some(unified) = r.unified().as_ref().filter(|u| !u.is_empty()) {
        if v1 {
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
            set(controller, key, value.clone());
        }
    }
    for (present, what) in [
        (r.block_io().is_some(), "blkio"),
        (
            r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()),
            "hugetlb",
        ),
        (r.network().is_some(), "net_cls"),
        (r.rdma().as_ref().is_some_and(|h| !h.is_empty()), "rdma"),
    ] {
        if present {
            return Err(unsupported(
                what,
                "limits for this controller are not supported by warren",
            ));
        }
    }
    Ok(out)
}
