//! OCI hooks: run a program with the container state as JSON on stdin.

use super::error::Error;
use oci_spec::runtime::Hook;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs each hook in order; the first failure (exit status, timeout) stops the chain.
pub fn run_all(kind: &str, hooks: Option<&Vec<Hook>>, state: &[u8]) -> Result<(), Error> {
    for (i, h) in hooks.into_iter().flatten().enumerate() {
        run(h, state).map_err(|reason| Error::Hook {
            kind: kind.to_owned(),
            index: i,
            path: h.path().clone(),
            reason,
        })?;
    }
    Ok(())
}

fn run(hook: &Hook, state: &[u8]) -> Result<(), String> {
    let mut cmd = Command::new(hook.path());
    if let Some(args) = hook.args() {
        if let Some(argv0) = args.first() {
            std::os::unix::process::CommandExt::arg0(&mut cmd, argv0);
        }
        cmd.args(args.iter().skip(1));
    }
    cmd.env_clear();
    for kv in hook.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot start: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine.
        let _ = stdin.write_all(state);
    }
    let deadline = hook
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) if status.success() => return Ok(()),
            Some(status) => return Err(format!("failed with {status}")),
            None => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("timed out after {}s", hook.timeout().unwrap_or(0)));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
