//! Rootless work on trees owned by a container's block. An unprivileged user may not own
//! files by ids outside its own, except inside a user namespace that maps its subordinate
//! ids (`/etc/subuid`, `/etc/subgid`, written for it by the setuid
//! `newuidmap`/`newgidmap`, or from inside the caller's kept namespace, which maps them
//! already: `idmap::keeper`). So the work runs in a helper process in such a namespace:
//! ids `0..R` inside are the block `S..S+R` outside, and shifting by `0 using range R`
//! inside lands every id in the block.
//!
//! The helper is the caller's binary re-executed (`/proc/self/exe` with a marker
//! argument, as containers/storage's reexec does), never a fork: a
//! [`crate::runtime::Runtime`] is shared by a scheduler's threads, and a fork of a
//! multithreaded process may run only async-signal-safe code (another thread may hold
//! the allocator's lock, rayon's, stdio's). A fresh process is single-threaded, so it can
//! also `unshare(CLONE_NEWUSER)`. Hence the rule: a program that links warren and works
//! rootless calls [`crate::main_hook`] (or [`dispatch`]) first thing in `main`, or names
//! a warren binary as the helper (a test harness, whose `main` is not its own:
//! [`crate::runtime::Runtime::with_helper`]). The helper takes its work as a `Request`
//! over a pipe from its parent (nothing from its environment or arguments: see
//! `protocol`) and dies with it.

mod protocol;
mod serve;

pub(crate) use protocol::Request;

use crate::idmap::keeper;
use crate::idmap::range::Shift;
use crate::idmap::subid::{Host, SUBGID, SUBUID, SubidError};
use crate::idmap::userns::{self, Mapping, Maps, UsernsError};
use protocol::{Failure, FromHelper, KEPT_FD, Nested, ToHelper};
use std::io::BufReader;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

/// The helper's only argument.
const MARKER: &str = "--warren-rootless-helper-v1";

/// The default helper binary: the running one (sealed, once `reexec_sealed` ran).
pub const SELF_EXE: &str = "/proc/self/exe";

/// Set by [`dispatch`]: this program's `main` serves the helper marker.
static HOOKED: AtomicBool = AtomicBool::new(false);

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
    #[error(
        "rootless work runs in a helper re-executed from {SELF_EXE}, but this program never called warren::main_hook(): call it first thing in main, or name a warren binary as the helper (Runtime::with_helper)"
    )]
    NoHook,
    #[error("the rootless helper {helper}: {reason}")]
    Helper { helper: PathBuf, reason: String },
}

/// Serves the rootless helper when this process was started as one (then exits), else
/// returns at once. Call it first thing in `main`, before any thread starts, in every
/// program that links warren and works rootless ([`crate::main_hook`] calls it).
pub fn dispatch() {
    HOOKED.store(true, Ordering::SeqCst);
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == MARKER) && args.next().is_none() {
        std::process::exit(serve::main());
    }
}

/// Runs `request` in a helper started from `helper` (normally [`SELF_EXE`]) in a user
/// namespace where ids `0..R` are `shift`'s block; returns its count.
pub(crate) fn in_userns(
    helper: &Path,
    shift: Shift,
    request: Request,
) -> Result<u64, RootlessError> {
    let maps = block_maps(&Host::current()?, shift, userns::helpers())?;
    in_userns_maps(helper, shift, &maps, request)
}

/// As [`in_userns`], in a user namespace of the caller's `maps` (several blocks: a
/// fuse-overlayfs layer holds the container's and the image's ids).
pub(crate) fn in_userns_maps(
    helper: &Path,
    shift: Shift,
    maps: &Maps,
    request: Request,
) -> Result<u64, RootlessError> {
    if helper == Path::new(SELF_EXE) && !HOOKED.load(Ordering::SeqCst) {
        return Err(RootlessError::NoHook);
    }
    let failed = |reason: String| RootlessError::Helper {
        helper: helper.to_path_buf(),
        reason,
    };
    // A bare name would be looked up on PATH: never.
    if !helper.is_absolute() {
        return Err(failed("not an absolute path".into()));
    }
    // Inside the caller's kept user namespace, when there is one, the helper writes its
    // own maps: no newuidmap, no newgidmap (~1 ms each).
    let nest = maps.nest(&keeper::pid_file(&crate::dirs::run_dir()));
    // std spawns with posix_spawn or fork+exec that runs no Rust code in between but
    // `pass_fd` (async-signal-safe): safe in a multithreaded process. Nothing of the
    // caller's environment goes along.
    let mut cmd = Command::new(helper);
    cmd.arg(MARKER)
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(kept) = nest.as_ref().map(|n| n.userns.as_raw_fd()) {
        // SAFETY: between fork and exec the closure makes only async-signal-safe calls.
        unsafe { cmd.pre_exec(move || pass_fd(kept, KEPT_FD)) };
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| failed(format!("cannot start it: {e}")))?;
    let nest = nest.map(|n| Nested {
        uid_map: String::from_utf8_lossy(&n.uid_map).into_owned(),
        gid_map: String::from_utf8_lossy(&n.gid_map).into_owned(),
    });
    let result = talk(&mut child, shift, maps, request, nest, &failed);
    if result.is_err() {
        let _ = child.kill();
    }
    let status = child.wait();
    match (result, status) {
        (Ok(n), Ok(s)) if s.success() => Ok(n),
        (Ok(_), Ok(s)) => Err(failed(format!("answered, then exited with {s}"))),
        (Ok(_), Err(e)) => Err(failed(format!("wait: {e}"))),
        (Err(e), _) => Err(e),
    }
}

/// `fd` as the child's `target`, open across exec. Between fork and exec: async-signal-safe.
fn pass_fd(fd: RawFd, target: RawFd) -> std::io::Result<()> {
    // SAFETY: plain fd calls; dup2 leaves the new fd without FD_CLOEXEC.
    let r = unsafe {
        if fd == target {
            libc::fcntl(fd, libc::F_SETFD, 0)
        } else {
            libc::dup2(fd, target)
        }
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The caller's side of [`protocol`]: Hello, Ready, maps (unless `nest`: the helper wrote
/// them), Go, the answer.
fn talk(
    child: &mut Child,
    shift: Shift,
    maps: &Maps,
    request: Request,
    nest: Option<Nested>,
    failed: &dyn Fn(String) -> RootlessError,
) -> Result<u64, RootlessError> {
    let (Some(mut to), Some(from)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(failed("no pipes".into()));
    };
    let mut from = BufReader::new(from);
    let nested = nest.is_some();
    let hello = ToHelper::Hello {
        parent: std::process::id(),
        shift,
        request,
        nest,
    };
    let gone = |e: std::io::Error| {
        failed(format!(
            "{e}: is it a warren binary whose main calls warren::main_hook()?"
        ))
    };
    protocol::send(&mut to, &hello).map_err(gone)?;
    let answer = |from: &mut BufReader<_>| match protocol::recv(from) {
        Ok(Some(a)) => Ok(a),
        Ok(None) => Err(gone(std::io::Error::other("it exited without answering"))),
        Err(e) => Err(gone(e)),
    };
    match answer(&mut from)? {
        FromHelper::Ready => {}
        FromHelper::Failed(f) => return Err(failure(f)),
        FromHelper::Done { .. } => return Err(failed("answered before the maps".into())),
    }
    if !nested {
        maps.write(child.id() as i32)
            .map_err(|e| RootlessError::Userns(crate::error_line(&e)))?;
    }
    protocol::send(&mut to, &ToHelper::Go).map_err(gone)?;
    drop(to);
    match answer(&mut from)? {
        FromHelper::Done { count } => Ok(count),
        FromHelper::Failed(f) => Err(failure(f)),
        FromHelper::Ready => Err(failed("said Ready twice".into())),
    }
}

fn failure(f: Failure) -> RootlessError {
    match f {
        Failure::Userns(why) => RootlessError::Userns(why),
        Failure::Work(why) => RootlessError::Copy(why),
    }
}

/// The maps of the helper's namespace: ids `0..R` onto `shift`'s block and `R` onto the
/// caller, written by the setuid `newuidmap` and `newgidmap` (found on PATH, as shadow's
/// tools are). The caller's lines of both files (all of them, by name or uid, as
/// `newuidmap` reads them) must hold the whole block.
fn block_maps(
    host: &Host,
    shift: Shift,
    helpers: Option<(PathBuf, PathBuf)>,
) -> Result<Maps, RootlessError> {
    let lines = |own| {
        vec![
            Mapping::onto(0, shift.target()),
            Mapping {
                container: shift.range,
                host: own,
                size: 1,
            },
        ]
    };
    Maps::subordinate(host, lines(host.uid), lines(host.gid), helpers).map_err(|e| match e {
        UsernsError::NotCovered { kind, lines, .. } => RootlessError::NoSubids {
            file: if kind == "uid" { SUBUID } else { SUBGID },
            user: host.who(),
            block: shift,
            lines,
        },
        e => RootlessError::Userns(crate::error_line(&e)),
    })
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
        let helpers = || Some(("/usr/bin/newuidmap".into(), "/usr/bin/newgidmap".into()));
        let check = |user, uid, to| block_maps(&host(user, uid), shift(to), helpers());
        assert!(check("alice", 1000, 100000).is_ok());
        assert!(check("alice", 1000, 500000).is_ok(), "second line");
        let err = check("alice", 1000, 100001).unwrap_err();
        assert!(
            err.to_string().contains("line 3 `alice:500000:65536`"),
            "{err}"
        );
        assert!(matches!(err, RootlessError::NoSubids { file: SUBUID, .. }));
        assert!(check("bob", 1001, 0x50000).is_ok());
        assert!(check("bob", 1002, 0x50000).is_err());
        // Without newuidmap the helper's maps cannot be written: said before it starts.
        let err = block_maps(&host("alice", 1000), shift(100000), None).unwrap_err();
        assert!(err.to_string().contains("apt-get install uidmap"), "{err}");
    }
}
