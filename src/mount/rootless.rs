//! Rootless shifted copies. An unprivileged user may not own files by ids outside its own,
//! except inside a user namespace that maps its subordinate ids (`/etc/subuid`,
//! `/etc/subgid`, written for it by the setuid `newuidmap`/`newgidmap`). So the copy runs
//! in a child process in such a namespace: ids `0..R` inside are the block `S..S+R`
//! outside, and shifting by `0 using range R` inside lands every id in the block.

use crate::idmap::range::Shift;
use crate::idmap::subid::{Host, SubidError};
use std::io::{Read, Write};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum RootlessError {
    #[error("{file} gives user {user} no subordinate ids covering {block} ({lines}): add a line like {user}:{start}:{len}", start = .block.to, len = .block.range)]
    NoSubids {
        file: &'static str,
        user: String,
        block: Shift,
        lines: String,
    },
    #[error(transparent)]
    Subids(#[from] SubidError),
    #[error("cannot set up the user namespace: {0}")]
    Userns(String),
    #[error("the copy failed: {0}")]
    Copy(String),
}

/// Checks that the caller's lines of both files (all of them, by name or uid, as
/// `newuidmap` reads them) hold the whole block of `shift`.
fn check_subids(host: &Host, shift: Shift) -> Result<(), RootlessError> {
    let block = shift.target();
    for (file, name) in [(&host.subuid, "/etc/subuid"), (&host.subgid, "/etc/subgid")] {
        if !file.covers(host.user.as_deref(), host.uid, block) {
            return Err(RootlessError::NoSubids {
                file: name,
                user: host.who(),
                block: shift,
                lines: file.describe_lines(host.user.as_deref(), host.uid),
            });
        }
    }
    Ok(())
}

/// Runs `work` in a child process in a user namespace where ids `0..R` are `shift`'s
/// block, passing it the shift to apply inside (`0 using range R`); returns its count.
pub fn in_userns(
    shift: Shift,
    work: &dyn Fn(Shift) -> Result<u64, String>,
) -> Result<u64, RootlessError> {
    check_subids(&Host::current()?, shift)?;
    let (uid, gid) = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    let (mut ready_r, ready_w) = pipe()?;
    let (go_r, mut go_w) = pipe()?;
    let (mut result_r, mut result_w) = pipe()?;
    // SAFETY: the child only unshares, waits and runs the copy before `_exit`; it never
    // returns into the caller's stack. It allocates, which is sound when the caller is
    // single-threaded (the shift-mount CLI is) and in practice with glibc otherwise.
    match unsafe { nix::unistd::fork() }.map_err(|e| RootlessError::Userns(e.to_string()))? {
        nix::unistd::ForkResult::Child => {
            drop(ready_r);
            drop(go_w);
            drop(result_r);
            let code = child(ready_w, go_r, &mut result_w, shift, work);
            // SAFETY: leaves without running the parent's atexit handlers or destructors.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(ready_w);
            drop(go_r);
            drop(result_w);
            let wait = |child| {
                let _ = nix::sys::wait::waitpid(child, None);
            };
            let mut byte = [0u8; 1];
            if ready_r.read_exact(&mut byte).is_err() || byte[0] != 1 {
                wait(child);
                return Err(RootlessError::Userns(
                    "unshare(CLONE_NEWUSER) failed".into(),
                ));
            }
            let pid = child.as_raw().to_string();
            let block = [
                "0".to_string(),
                shift.to.to_string(),
                shift.range.to_string(),
            ];
            for (tool, own) in [("newuidmap", uid), ("newgidmap", gid)] {
                let out = Command::new(tool)
                    .arg(&pid)
                    .args(&block)
                    .args([shift.range.to_string(), own.to_string(), "1".to_string()])
                    .output();
                let failed = match out {
                    Ok(o) if o.status.success() => None,
                    Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_string()),
                    Err(e) => Some(format!("cannot run {tool} (apt-get install uidmap): {e}")),
                };
                if let Some(why) = failed {
                    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                    wait(child);
                    return Err(RootlessError::Userns(format!("{tool}: {why}")));
                }
            }
            let _ = go_w.write_all(&[1]);
            drop(go_w);
            let mut answer = String::new();
            let _ = result_r.read_to_string(&mut answer);
            wait(child);
            match answer.split_once(':') {
                Some(("ok", n)) => n
                    .trim()
                    .parse()
                    .map_err(|_| RootlessError::Copy(format!("bad answer {answer:?}"))),
                Some((_, why)) => Err(RootlessError::Copy(why.to_string())),
                None => Err(RootlessError::Copy("the copying process died".into())),
            }
        }
    }
}

fn pipe() -> Result<(std::fs::File, std::fs::File), RootlessError> {
    let (r, w) = nix::unistd::pipe().map_err(|e| RootlessError::Userns(e.to_string()))?;
    Ok((r.into(), w.into()))
}

/// The child: unshare, tell the parent, wait for the maps, work, answer `ok:N` or `err:...`.
fn child(
    mut ready: std::fs::File,
    mut go: std::fs::File,
    result: &mut std::fs::File,
    shift: Shift,
    work: &dyn Fn(Shift) -> Result<u64, String>,
) -> i32 {
    let ok = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_ok();
    if ready.write_all(&[u8::from(ok)]).is_err() || !ok {
        return 1;
    }
    drop(ready);
    let mut byte = [0u8; 1];
    if go.read_exact(&mut byte).is_err() {
        return 1;
    }
    let inside = Shift {
        to: 0,
        range: shift.range,
    };
    let answer = match work(inside) {
        Ok(n) => format!("ok:{n}"),
        Err(e) => format!("err:{e}"),
    };
    let _ = result.write_all(answer.as_bytes());
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idmap::subid::Subids;

    #[test]
    fn subid_lines_must_cover_the_whole_block() {
        let text = "alice:100000:65536\n1001:300000:131072\nalice:500000:65536\n";
        let host = |user: &str, uid| Host {
            subuid: Subids::parse("/etc/subuid", text).unwrap(),
            subgid: Subids::parse("/etc/subgid", text).unwrap(),
            uid,
            gid: uid,
            user: Some(user.into()),
            pool_owner_account: None,
        };
        let shift = |to| Shift { to, range: 0x10000 };
        assert!(check_subids(&host("alice", 1000), shift(100000)).is_ok());
        assert!(
            check_subids(&host("alice", 1000), shift(500000)).is_ok(),
            "second line"
        );
        let err = check_subids(&host("alice", 1000), shift(100001)).unwrap_err();
        assert!(
            err.to_string().contains("line 3 `alice:500000:65536`"),
            "{err}"
        );
        assert!(check_subids(&host("bob", 1001), shift(0x50000)).is_ok());
        assert!(check_subids(&host("bob", 1002), shift(0x50000)).is_err());
    }
}
