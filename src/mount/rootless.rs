//! Rootless shifted copies. An unprivileged user may not own files by ids outside its own,
//! except inside a user namespace that maps its subordinate ids (`/etc/subuid`,
//! `/etc/subgid`, written for it by the setuid `newuidmap`/`newgidmap`). So the copy runs
//! in a child process in such a namespace: ids `0..R` inside are the block `S..S+R`
//! outside, and shifting by `0 using range R` inside lands every id in the block.

use crate::idmap::range::Shift;
use std::io::{self, Read, Write};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum RootlessError {
    #[error("{file} gives user {user} no subordinate ids covering {block}: add a line like {user}:{start:#x}:{len:#x}", start = .block.to, len = .block.range)]
    NoSubids {
        file: &'static str,
        user: String,
        block: Shift,
    },
    #[error("cannot read {file}: {source}")]
    Subids {
        file: &'static str,
        source: io::Error,
    },
    #[error("cannot set up the user namespace: {0}")]
    Userns(String),
    #[error("the copy failed: {0}")]
    Copy(String),
}

/// True when `file` (subuid/subgid format `NAME_OR_ID:START:COUNT`) lets `user`/`id` map
/// the whole block of `shift`.
fn covered(text: &str, user: &str, id: u32, shift: Shift) -> bool {
    text.lines().any(|line| {
        let mut f = line.trim().split(':');
        let (Some(who), Some(start), Some(count)) = (f.next(), f.next(), f.next()) else {
            return false;
        };
        let (Ok(start), Ok(count)) = (start.parse::<u64>(), count.parse::<u64>()) else {
            return false;
        };
        (who == user || who.parse::<u32>().ok() == Some(id))
            && start <= u64::from(shift.to)
            && u64::from(shift.to) + u64::from(shift.range) <= start + count
    })
}

fn check_subids(shift: Shift) -> Result<(), RootlessError> {
    let uid = nix::unistd::getuid();
    let gid = nix::unistd::getgid();
    let user = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    for (file, id) in [("/etc/subuid", uid.as_raw()), ("/etc/subgid", gid.as_raw())] {
        let text = std::fs::read_to_string(file)
            .map_err(|source| RootlessError::Subids { file, source })?;
        if !covered(&text, &user, id, shift) {
            return Err(RootlessError::NoSubids {
                file,
                user,
                block: shift,
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
    check_subids(shift)?;
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

    #[test]
    fn subid_lines_must_cover_the_whole_block() {
        let text = "alice:100000:65536\n1001:300000:131072\n";
        let shift = |to| Shift { to, range: 0x10000 };
        assert!(covered(text, "alice", 1000, shift(100000)));
        assert!(!covered(text, "alice", 1000, shift(100001)));
        assert!(covered(text, "bob", 1001, shift(0x50000)));
        assert!(!covered(text, "bob", 1002, shift(0x50000)));
    }
}
