//! `warren ps` (the table podman users read: command, created, status with age) and
//! `warren inspect NAME` (every record warren keeps about one container, as JSON).

use anyhow::{Context, Result};
use oci_spec::runtime::ContainerState;
use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};
use warren::container::Container;
use warren::runtime::{Info, Runtime};

/// One container as `ps` prints it.
struct Row {
    info: Info,
    command: String,
    status: String,
}

/// Prints every container (stopped ones too): a table, only names, or JSON.
pub fn ps(rt: &Runtime, json: bool, quiet: bool) -> Result<i32> {
    let rows: Vec<Row> = rt.list()?.into_iter().map(|i| row(rt, i)).collect();
    if json {
        let list: Vec<Value> = rows
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(&r.info).unwrap_or(Value::Null);
                v["command"] = r.command.clone().into();
                v["state"] = r.status.clone().into();
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    if quiet {
        rows.iter().for_each(|r| println!("{}", r.info.name));
        return Ok(0);
    }
    println!(
        "{:<20} {:<16} {:<24} {:<16} {:<20} {:>8}  {:<20} VIEW",
        "NAME", "IMAGE", "COMMAND", "CREATED", "STATUS", "PID", "IDS"
    );
    let now = now();
    for r in rows {
        let c = &r.info;
        let ids = c
            .ids
            .as_ref()
            .map(|r| r.uids.to_string())
            .unwrap_or_default();
        let pid = if c.pid > 0 {
            c.pid.to_string()
        } else {
            "-".into()
        };
        println!(
            "{:<20} {:<16} {:<24} {:<16} {:<20} {:>8}  {:<20} {}",
            c.name,
            c.image,
            clip(&r.command, 24),
            format!("{} ago", age(now - c.created)),
            r.status,
            pid,
            ids,
            c.method.clone().unwrap_or_default()
        );
    }
    Ok(0)
}

fn row(rt: &Runtime, info: Info) -> Row {
    let container = Container::load(&rt.options().run_dir, &info.name).ok();
    let command = container
        .as_ref()
        .and_then(|c| c.record().process.as_ref()?.args().clone())
        .map(|a| a.join(" "))
        .unwrap_or_default();
    let status = match container.as_ref().map(|c| c.state()) {
        Some(s) if s.paused => "Paused".to_string(),
        Some(s) if s.status == ContainerState::Running => match started(s.pid) {
            Some(t) => format!("Up {}", age(now() - t)),
            None => "Up".into(),
        },
        Some(s) if s.status == ContainerState::Created => "Created".into(),
        Some(s) if s.status == ContainerState::Stopped => exited(info.exit.as_ref()),
        _ => "Creating".into(),
    };
    Row {
        info,
        command,
        status,
    }
}

/// "Exited (CODE) AGE ago" when the container's exit facts are recorded (by whoever
/// collected its status: the creator, its reaper or its monitor), else "Exited".
fn exited(exit: Option<&warren::container::Exit>) -> String {
    let Some(exit) = exit else {
        return "Exited".into();
    };
    let code = exit.code.or(exit.signal.map(|s| 128 + s));
    let at = warren::container::state::unix_from_rfc3339(&exit.finished);
    match (code, at) {
        (Some(c), Some(t)) => format!("Exited ({c}) {} ago", age(now() - t)),
        (Some(c), None) => format!("Exited ({c})"),
        _ => "Exited".into(),
    }
}

/// When process `pid` started (Unix seconds), from its start time in clock ticks since
/// boot (`/proc/PID/stat` field 22) and the boot time (`/proc/stat` btime).
fn started(pid: i32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let ticks: i64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let btime: i64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| btime + ticks / hz)
}

/// A duration as podman words it: "3 seconds", "5 minutes", "2 hours", "4 days".
pub fn age(secs: i64) -> String {
    let secs = secs.max(0);
    let (n, unit) = match secs {
        0..60 => (secs, "second"),
        60..3600 => (secs / 60, "minute"),
        3600..86400 => (secs / 3600, "hour"),
        _ => (secs / 86400, "day"),
    };
    match (n, unit) {
        (1, "hour") => "About an hour".into(),
        (1, u) => format!("1 {u}"),
        (n, u) => format!("{n} {u}s"),
    }
}

fn clip(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width - 3).collect();
    out.push_str("...");
    out
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `warren inspect NAME`: warren's record (image, id block, view), the OCI state and
/// the container's own record (process, cgroup, hooks), as one JSON object.
pub fn inspect(rt: &Runtime, name: &str) -> Result<i32> {
    rt.record(name)?;
    let path = rt.container_dir(name).join("warren.json");
    let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    let mut v: Value =
        serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display()))?;
    match Container::load(&rt.options().run_dir, name) {
        Ok(c) => {
            v["state"] = serde_json::to_value(c.state())?;
            v["container"] = serde_json::to_value(c.record())?;
        }
        Err(_) => v["state"] = json!({ "status": "creating" }),
    }
    let log = rt.log_path(name);
    v["log"] = log.exists().then(|| log.display().to_string()).into();
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_podman_writes_them() {
        assert_eq!(age(0), "0 seconds");
        assert_eq!(age(1), "1 second");
        assert_eq!(age(59), "59 seconds");
        assert_eq!(age(300), "5 minutes");
        assert_eq!(age(3700), "About an hour");
        assert_eq!(age(7300), "2 hours");
        assert_eq!(age(3 * 86400), "3 days");
    }
}
