//! `warren events ID`: the container's resource statistics as runc prints them, one JSON
//! object a line, `{"type":"stats","id":ID,"data":{...}}`: once with `--stats`, else every
//! `--interval` until the container stops.

use anyhow::{Context, Result, bail};
use oci_spec::runtime::ContainerState;
use std::path::Path;
use std::time::Duration;
use warren::container::Container;

pub fn events(root: &Path, id: &str, once: bool, interval: &str) -> Result<i32> {
    let every = parse_duration(interval).with_context(|| format!("--interval {interval:?}"))?;
    if every.is_zero() {
        bail!("--interval must be greater than 0");
    }
    let c = Container::load(root, id)?;
    if c.status() == ContainerState::Stopped {
        bail!("container with id {id} is not running");
    }
    loop {
        match c.stats() {
            Ok(data) => {
                let event = serde_json::json!({"type": "stats", "id": id, "data": data});
                println!("{event}");
            }
            Err(e) if once => return Err(e.into()),
            // runc logs a failed sample and goes on.
            Err(e) => tracing::error!("{}", warren::error_line(&e)),
        }
        if once {
            return Ok(0);
        }
        std::thread::sleep(every);
        if c.status() == ContainerState::Stopped {
            return Ok(0);
        }
    }
}

/// A Go duration (`5s`, `1m30s`, `250ms`), as runc's `--interval` takes.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        bail!("empty duration");
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .context("missing unit (ns, us, ms, s, m, h)")?;
        let (num, tail) = rest.split_at(num_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let n: f64 = num.parse().with_context(|| format!("bad number {num:?}"))?;
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => bail!("unknown unit {unit:?} (ns, us, ms, s, m, h)"),
        };
        total += n * scale;
        rest = tail;
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5x").is_err());
    }
}
