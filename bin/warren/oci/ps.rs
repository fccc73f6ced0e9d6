//! `warren ps ID`: runc's process list of a container. json is the array of its host
//! pids; table runs the host's `ps` (default `-ef`, or the arguments given after the ID)
//! and keeps the header and the lines whose PID column is one of them, as runc does.

use anyhow::{Context, Result, bail};
use std::path::Path;
use warren::container::Container;

pub fn ps(root: &Path, id: &str, format: &str, ps_args: &[String]) -> Result<i32> {
    if format != "table" && format != "json" {
        bail!("invalid format option {format:?}: table or json");
    }
    let pids = Container::load(root, id)?.pids()?;
    if format == "json" {
        println!("{}", serde_json::to_string(&pids)?);
    } else {
        print!("{}", table(&pids, ps_args)?);
    }
    Ok(0)
}

fn table(pids: &[i32], ps_args: &[String]) -> Result<String> {
    let default = ["-ef".to_owned()];
    let args = if ps_args.is_empty() {
        &default[..]
    } else {
        ps_args
    };
    let out = std::process::Command::new("ps")
        .args(args)
        .output()
        .context("run ps")?;
    if !out.status.success() {
        bail!(
            "ps {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    filter(&String::from_utf8_lossy(&out.stdout), pids)
}

/// The header and the lines of `ps` output whose PID column is in `pids`.
fn filter(output: &str, pids: &[i32]) -> Result<String> {
    let mut lines = output.lines();
    let header = lines.next().unwrap_or_default();
    let index = header
        .split_whitespace()
        .position(|t| t == "PID")
        .context("couldn't find PID field in ps output")?;
    let mut text = format!("{header}\n");
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let field = line.split_whitespace().nth(index).unwrap_or_default();
        let pid: i32 = field
            .parse()
            .with_context(|| format!("unable to parse pid {field:?} in ps output"))?;
        if pids.contains(&pid) {
            text.push_str(line);
            text.push('\n');
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    #[test]
    fn filter_keeps_the_header_and_the_container_pids() {
        let out = "UID PID PPID CMD\nroot 1 0 init\nroot 42 1 sleep 5\nroot 420 1 x\n";
        assert_eq!(
            super::filter(out, &[42]).unwrap(),
            "UID PID PPID CMD\nroot 42 1 sleep 5\n"
        );
        assert!(super::filter("UID CMD\n", &[1]).is_err());
    }
}
