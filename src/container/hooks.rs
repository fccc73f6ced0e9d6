//! OCI hooks: run a program with the container state as JSON on stdin.

use super::error::Error;
use oci_spec::runtime::Hook;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs each hook in order; the first failure (exit status, timeout) stops the chain
/// (prestart, createRuntime, createContainer: the operation fails).
pub fn run_all(kind: &str, hooks: Option<&Vec<Hook>>, state: &[u8]) -> Result<(), Error> {
    for (i, h) in hooks.into_iter().flatten().enumerate() {
        run(h, state).map_err(|reason| hook_error(kind, i, h, reason))?;
    }
    Ok(())
}

/// Runs every hook in order; a failure is logged as a warning and the rest still run
/// (poststart, poststop: the spec's "log a warning, continue as if it had succeeded").
/// Returns how many failed.
pub fn run_warn(kind: &str, hooks: Option<&Vec<Hook>>, state: &[u8]) -> usize {
    let mut failed = 0;
    for (i, h) in hooks.into_iter().flatten().enumerate() {
        if let Err(reason) = run(h, state) {
            tracing::warn!("{}", hook_error(kind, i, h, reason));
            failed += 1;
        }
    }
    failed
}

fn hook_error(kind: &str, index: usize, h: &Hook, reason: String) -> Error {
    Error::Hook {
        kind: kind.to_owned(),
        index,
        path: h.path().clone(),
        reason,
    }
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
    let deadline = hook
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    let mut child = cmd.spawn().map_err(|e| format!("cannot start: {e}"))?;
    // From a thread: a hook that neither reads its stdin nor exits must still time out.
    // Not joined: it ends when the last holder of the pipe's read end (the hook, or a
    // child it left behind) closes it; a hook that does not read its stdin is fine.
    if let Some(mut stdin) = child.stdin.take() {
        let state = state.to_vec();
        std::thread::spawn(move || stdin.write_all(&state));
    }
    wait(&mut child, deadline, hook.timeout().unwrap_or(0))
}

fn wait(
    child: &mut std::process::Child,
    deadline: Option<Instant>,
    timeout: i64,
) -> Result<(), String> {
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) if status.success() => return Ok(()),
            Some(status) => return Err(format!("failed with {status}")),
            None => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("timed out after {timeout}s"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
