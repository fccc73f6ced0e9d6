//! `warren update ID`: new resource limits for a running container, from runc's flags or
//! from `--resources FILE|-` (LinuxResources JSON; the flags are then ignored, as runc
//! does). As in runc, a zero or empty value means "unchanged": docker sends zeros.

use anyhow::{Context, Result, bail};
use oci_spec::runtime::LinuxResources;
use serde_json::{Map, Value, json};
use std::io::Read;
use std::path::Path;
use warren::container::Container;

// Not a doc comment: it would replace the subcommand's help text.
#[derive(clap::Args, Debug)]
pub struct UpdateArgs {
    /// LinuxResources JSON file, or - for stdin (other flags are then ignored).
    #[arg(long, short = 'r')]
    pub resources: Option<String>,
    /// Block IO weight (10-1000).
    #[arg(long)]
    pub blkio_weight: Option<u16>,
    /// CPU CFS period (µs).
    #[arg(long)]
    pub cpu_period: Option<u64>,
    /// CPU CFS quota (µs per period; -1 for none).
    #[arg(long, allow_hyphen_values = true)]
    pub cpu_quota: Option<i64>,
    /// CPU shares (relative weight).
    #[arg(long, visible_alias = "cpu-shares")]
    pub cpu_share: Option<u64>,
    /// CPU realtime period (µs).
    #[arg(long)]
    pub cpu_rt_period: Option<u64>,
    /// CPU realtime runtime (µs per period).
    #[arg(long, allow_hyphen_values = true)]
    pub cpu_rt_runtime: Option<i64>,
    /// CPUs to use (cpuset).
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes to use (cpuset).
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    /// Memory limit (bytes, or with a unit: 512m, 1g; -1 for none).
    #[arg(long, allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// Memory reservation (soft limit).
    #[arg(long, allow_hyphen_values = true)]
    pub memory_reservation: Option<String>,
    /// Memory plus swap limit (-1 for unlimited swap).
    #[arg(long, allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// Most processes the container may have (-1 for none).
    #[arg(long, allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// Intel RDT L3 cache schema (not supported: refused).
    #[arg(long)]
    pub l3_cache_schema: Option<String>,
    /// Intel RDT memory bandwidth schema (not supported: refused).
    #[arg(long)]
    pub mem_bw_schema: Option<String>,
    /// The container's ID.
    pub id: String,
}

pub fn update(root: &Path, a: &UpdateArgs) -> Result<i32> {
    let value = match a.resources.as_deref() {
        Some(source) => read_resources(source)?,
        None => from_flags(a)?,
    };
    let resources = resources(value)?;
    Container::load(root, &a.id)?.update(&resources)?;
    Ok(0)
}

fn read_resources(source: &str) -> Result<Value> {
    let mut text = Vec::new();
    if source == "-" {
        std::io::stdin()
            .read_to_end(&mut text)
            .context("read resources from stdin")?;
    } else {
        text = std::fs::read(source).with_context(|| format!("read {source}"))?;
    }
    serde_json::from_slice(&text).with_context(|| format!("invalid resources {source}"))
}

/// The resources with zero and empty values removed, then typed.
fn resources(mut value: Value) -> Result<LinuxResources> {
    if let Some(top) = value.as_object_mut() {
        for key in ["memory", "cpu", "blockIO", "pids"] {
            if let Some(Value::Object(section)) = top.get_mut(key) {
                section.retain(|_, v| !is_unset(v));
                if section.is_empty() {
                    top.remove(key);
                }
            }
        }
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        anyhow::anyhow!("invalid resources: `{path}`: {}", e.inner())
    })
}

fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn from_flags(a: &UpdateArgs) -> Result<Value> {
    if a.l3_cache_schema.is_some() || a.mem_bw_schema.is_some() {
        bail!("Intel RDT (--l3-cache-schema, --mem-bw-schema) is not supported by warren");
    }
    let mut memory = Map::new();
    for (key, flag, value) in [
        ("limit", "--memory", &a.memory),
        ("reservation", "--memory-reservation", &a.memory_reservation),
        ("swap", "--memory-swap", &a.memory_swap),
    ] {
        if let Some(v) = value {
            memory.insert(key.into(), json!(ram_bytes(v).context(flag)?));
        }
    }
    let mut cpu = Map::new();
    let numbers = [
        ("shares", a.cpu_share.map(|v| json!(v))),
        ("quota", a.cpu_quota.map(|v| json!(v))),
        ("period", a.cpu_period.map(|v| json!(v))),
        ("realtimeRuntime", a.cpu_rt_runtime.map(|v| json!(v))),
        ("realtimePeriod", a.cpu_rt_period.map(|v| json!(v))),
        ("cpus", a.cpuset_cpus.as_ref().map(|v| json!(v))),
        ("mems", a.cpuset_mems.as_ref().map(|v| json!(v))),
    ];
    for (key, value) in numbers {
        if let Some(v) = value {
            cpu.insert(key.into(), v);
        }
    }
    Ok(json!({
        "memory": memory,
        "cpu": cpu,
        "blockIO": {"weight": a.blkio_weight},
        "pids": {"limit": a.pids_limit},
    }))
}

/// A size as docker's `RAMInBytes` reads it: a number with an optional binary unit
/// (k, m, g, t, p, with an optional b or ib), or -1 for "no limit".
pub fn ram_bytes(s: &str) -> Result<i64> {
    if s.trim() == "-1" {
        return Ok(-1);
    }
    let lower = s.trim().to_ascii_lowercase();
    let unit_at = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(unit_at);
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid size {s:?}"))?;
    let unit = unit.trim_start();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => bail!("invalid size {s:?}: unknown unit"),
    };
    Ok((n * (1u64 << shift) as f64) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_unset_values() {
        assert_eq!(ram_bytes("512m").unwrap(), 512 << 20);
        assert_eq!(ram_bytes("1GiB").unwrap(), 1 << 30);
        assert_eq!(ram_bytes("1000").unwrap(), 1000);
        assert_eq!(ram_bytes("-1").unwrap(), -1);
        assert!(ram_bytes("1x").is_err());
        // docker's zeros are "unchanged".
        let r = resources(json!({"memory": {"limit": 1048576, "swap": 0},
            "cpu": {"shares": 0, "cpus": ""}, "blockIO": {"weight": 0}, "pids": {"limit": 0}}))
        .unwrap();
        assert_eq!(r.memory().as_ref().and_then(|m| m.limit()), Some(1048576));
        assert_eq!(r.memory().as_ref().and_then(|m| m.swap()), None);
        assert!(r.cpu().is_none() && r.block_io().is_none() && r.pids().is_none());
        assert!(resources(json!({"memory": {"limit": "x"}})).is_err());
    }
}
