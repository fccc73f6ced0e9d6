//! A cgroup's usage, shaped like the `data` of runc's `events --stats` (its
//! `types.Stats`: field names and units are runc's; times in nanoseconds). Files a host
//! lacks (a controller not enabled, no swap accounting) leave their fields zero.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Cgroup, CgroupError, Version};

/// USER_HZ, the unit of v1 `cpuacct.stat`.
const TICK_NS: u64 = 10_000_000;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    pub cpu: Cpu,
    pub memory: Memory,
    pub pids: Pids,
    pub blkio: Blkio,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Cpu {
    pub usage: CpuUsage,
    pub throttling: Throttling,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CpuUsage {
    #[serde(skip_serializing_if = "is_zero")]
    pub total: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu: Vec<u64>,
    pub kernel: u64,
    pub user: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Throttling {
    #[serde(skip_serializing_if = "is_zero")]
    pub periods: u64,
    #[serde(rename = "throttledPeriods", skip_serializing_if = "is_zero")]
    pub throttled_periods: u64,
    #[serde(rename = "throttledTime", skip_serializing_if = "is_zero")]
    pub throttled_time: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Memory {
    #[serde(skip_serializing_if = "is_zero")]
    pub cache: u64,
    pub usage: MemoryEntry,
    pub swap: MemoryEntry,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub raw: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct MemoryEntry {
    pub limit: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub usage: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub max: u64,
    pub failcnt: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Pids {
    #[serde(skip_serializing_if = "is_zero")]
    pub current: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub limit: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Blkio {
    #[serde(
        rename = "ioServiceBytesRecursive",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub io_service_bytes_recursive: Vec<BlkioEntry>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct BlkioEntry {
    pub major: u64,
    pub minor: u64,
    pub op: String,
    pub value: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The text of `dir/file`, None when the host has no such file.
fn text(dir: Option<&Path>, file: &str) -> Result<Option<String>, CgroupError> {
    let Some(path) = dir.map(|d| d.join(file)) else {
        return Ok(None);
    };
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Io { path, source }),
    }
}

/// A number file: `max` (no limit) and a missing file are 0.
fn number(dir: Option<&Path>, file: &str) -> Result<u64, CgroupError> {
    Ok(text(dir, file)?
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0))
}

/// A flat keyed file (`memory.stat`, `cpu.stat`).
fn keyed(dir: Option<&Path>, file: &str) -> Result<BTreeMap<String, u64>, CgroupError> {
    let mut out = BTreeMap::new();
    for line in text(dir, file)?.unwrap_or_default().lines() {
        if let Some((k, v)) = line.split_once(' ') {
            if let Ok(v) = v.trim().parse() {
                out.insert(k.to_string(), v);
            }
        }
    }
    Ok(out)
}

/// v1 `blkio.*io_service_bytes_recursive`: `8:0 Read 4096` lines.
pub(super) fn v1_blkio(text: &str) -> Vec<BlkioEntry> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (major, minor) = f.next()?.split_once(':')?;
            Some(BlkioEntry {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                op: f.next()?.to_string(),
                value: f.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// v2 `io.stat`: `8:0 rbytes=4096 wbytes=0 ...`, as runc's Read/Write entries.
pub(super) fn v2_io(text: &str) -> Vec<BlkioEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some((Ok(major), Ok(minor))) = f
            .next()
            .and_then(|d| d.split_once(':'))
            .map(|(a, b)| (a.parse(), b.parse()))
        else {
            continue;
        };
        for kv in f {
            let op = match kv.split_once('=') {
                Some(("rbytes", v)) => ("Read", v),
                Some(("wbytes", v)) => ("Write", v),
                _ => continue,
            };
            if let Ok(value) = op.1.parse() {
                out.push(BlkioEntry {
                    major,
                    minor,
                    op: op.0.into(),
                    value,
                });
            }
        }
    }
    out
}

impl Cgroup {
    /// The cgroup's usage now (`runc events --stats`).
    pub fn stats(&self) -> Result<Stats, CgroupError> {
        match self.version {
            Some(Version::V2) => self.stats_v2(),
            _ => self.stats_v1(),
        }
    }

    fn stats_v1(&self) -> Result<Stats, CgroupError> {
        let mut s = Stats::default();
        let acct = self.dir_with("cpuacct.usage");
        s.cpu.usage.total = number(acct, "cpuacct.usage")?;
        s.cpu.usage.percpu = text(acct, "cpuacct.usage_percpu")?
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        let ticks = keyed(acct, "cpuacct.stat")?;
        s.cpu.usage.user = ticks.get("user").copied().unwrap_or(0) * TICK_NS;
        s.cpu.usage.kernel = ticks.get("system").copied().unwrap_or(0) * TICK_NS;
        let cpu = keyed(self.dir_with("cpu.stat"), "cpu.stat")?;
        s.cpu.throttling = Throttling {
            periods: cpu.get("nr_periods").copied().unwrap_or(0),
            throttled_periods: cpu.get("nr_throttled").copied().unwrap_or(0),
            throttled_time: cpu.get("throttled_time").copied().unwrap_or(0),
        };
        let mem = self.dir_with("memory.usage_in_bytes");
        let entry = |prefix: &str| -> Result<MemoryEntry, CgroupError> {
            Ok(MemoryEntry {
                limit: number(mem, &format!("{prefix}limit_in_bytes"))?,
                usage: number(mem, &format!("{prefix}usage_in_bytes"))?,
                max: number(mem, &format!("{prefix}max_usage_in_bytes"))?,
                failcnt: number(mem, &format!("{prefix}failcnt"))?,
            })
        };
        s.memory.usage = entry("memory.")?;
        s.memory.swap = entry("memory.memsw.")?;
        s.memory.raw = keyed(mem, "memory.stat")?;
        s.memory.cache = s.memory.raw.get("cache").copied().unwrap_or(0);
        let pids = self.dir_with("pids.current");
        s.pids.current = number(pids, "pids.current")?;
        s.pids.limit = number(pids, "pids.max")?;
        for file in [
            "blkio.io_service_bytes_recursive",
            "blkio.throttle.io_service_bytes_recursive",
        ] {
            let entries = v1_blkio(&text(self.dir_with(file), file)?.unwrap_or_default());
            if !entries.is_empty() {
                s.blkio.io_service_bytes_recursive = entries;
                break;
            }
        }
        Ok(s)
    }

    fn stats_v2(&self) -> Result<Stats, CgroupError> {
        let mut s = Stats::default();
        let dir = self.dirs.first().map(PathBuf::as_path);
        let cpu = keyed(dir, "cpu.stat")?;
        let us = |k: &str| cpu.get(k).copied().unwrap_or(0) * 1000;
        s.cpu.usage.total = us("usage_usec");
        s.cpu.usage.user = us("user_usec");
        s.cpu.usage.kernel = us("system_usec");
        s.cpu.throttling = Throttling {
            periods: cpu.get("nr_periods").copied().unwrap_or(0),
            throttled_periods: cpu.get("nr_throttled").copied().unwrap_or(0),
            throttled_time: us("throttled_usec"),
        };
        s.memory.usage = MemoryEntry {
            limit: number(dir, "memory.max")?,
            usage: number(dir, "memory.current")?,
            max: number(dir, "memory.peak")?,
            failcnt: keyed(dir, "memory.events")?
                .get("max")
                .copied()
                .unwrap_or(0),
        };
        s.memory.swap = MemoryEntry {
            limit: number(dir, "memory.swap.max")?,
            usage: number(dir, "memory.swap.current")?,
            max: number(dir, "memory.swap.peak")?,
            failcnt: 0,
        };
        s.memory.raw = keyed(dir, "memory.stat")?;
        s.memory.cache = s.memory.raw.get("file").copied().unwrap_or(0);
        s.pids.current = number(dir, "pids.current")?;
        s.pids.limit = number(dir, "pids.max")?;
        s.blkio.io_service_bytes_recursive = v2_io(&text(dir, "io.stat")?.unwrap_or_default());
        Ok(s)
    }
}
