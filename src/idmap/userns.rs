//! The one place that makes user namespaces and writes their id maps.
//!
//! A map is written by the parent of the process in the new namespace: directly to
//! `/proc/PID/{setgroups,uid_map,gid_map}` as root (or for one mapping of the caller's
//! own id), through the setuid `newuidmap`/`newgidmap` otherwise, after checking that
//! the caller's lines of the subordinate id files ([`super::subid`], the one parser) hold
//! every mapped id. A mapping those lines do not hold is an error, never a narrower map.
//!
//! Who uses it: a container's init unshares its own namespace and the container layer
//! writes its maps ([`Maps::start`]); rootless work (`mount::rootless`) runs in a
//! re-executed helper that calls [`unshare`] and whose maps the caller writes the same
//! way; an idmapped mount needs only a namespace fd ([`userns_fd`]).

use super::keeper::{Entitlement, Nest};
use super::range::IdRange;
use super::subid::{Host, Subids};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error(
        "{kind} mapping {} -> {}+{} is not within {who}'s lines in {} ({lines}): newuidmap \
         would refuse it. Map only ids those lines hold, or give {who} a range holding them \
         (usermod --add-sub{kind}s START-END {who})",
        .mapping.container, .mapping.host, .mapping.size, .file.display()
    )]
    NotCovered {
        kind: &'static str,
        mapping: Mapping,
        file: PathBuf,
        who: String,
        lines: String,
    },
    #[error("mapping subordinate ids needs newuidmap and newgidmap: apt-get install uidmap")]
    NoHelpers,
    #[error("{what}")]
    Io { what: String, source: io::Error },
    #[error("{tool} {pid}: {stderr}")]
    Helper {
        tool: &'static str,
        pid: i32,
        stderr: String,
    },
    #[error("unshare(CLONE_NEWUSER): {0}")]
    Unshare(io::Error),
}

/// One `container host size` line: ids `container..container+size` of the namespace are
/// `host..host+size` outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub container: u32,
    pub host: u32,
    pub size: u32,
}

impl Mapping {
    /// Ids `inside..` onto the block `target`.
    pub fn onto(inside: u32, target: IdRange) -> Mapping {
        Mapping {
            container: inside,
            host: target.start,
            size: target.len,
        }
    }
}

/// The maps of one new user namespace and how they are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maps {
    pub uid: Vec<Mapping>,
    pub gid: Vec<Mapping>,
    /// `setgroups` is denied (required when an unprivileged process writes a gid map).
    pub deny_setgroups: bool,
    /// Where `newuidmap` and `newgidmap` are, when they write the maps.
    helpers: Option<(PathBuf, PathBuf)>,
    /// All the caller may map, when one namespace can hold it (see [`super::keeper`]).
    entitled: Option<Entitlement>,
}

impl Maps {
    /// Maps the parent writes itself: as root, or the caller's own ids only (then with
    /// `deny_setgroups`, which the kernel requires of an unprivileged writer).
    pub fn direct(uid: Vec<Mapping>, gid: Vec<Mapping>, deny_setgroups: bool) -> Maps {
        Maps {
            uid,
            gid,
            deny_setgroups,
            helpers: None,
            entitled: None,
        }
    }

    /// Maps of subordinate ids, written by `helpers` (newuidmap, newgidmap: see
    /// [`helpers`]). Each mapping must be the caller's own id or lie within the caller's
    /// lines of `host`'s files, as the helpers would check: else an error naming the file
    /// and the lines.
    pub fn subordinate(
        host: &Host,
        uid: Vec<Mapping>,
        gid: Vec<Mapping>,
        helpers: Option<(PathBuf, PathBuf)>,
    ) -> Result<Maps, UsernsError> {
        check_covered("uid", &uid, host.uid, &host.subuid, host)?;
        check_covered("gid", &gid, host.gid, &host.subgid, host)?;
        let helpers = helpers.ok_or(UsernsError::NoHelpers)?;
        Ok(Maps {
            uid,
            gid,
            deny_setgroups: false,
            helpers: Some(helpers),
            entitled: super::keeper::entitlement(host),
        })
    }

    /// For maps the helpers would write: the same maps to make inside the caller's kept
    /// user namespace (found through `pid_file`, or made), written without a helper.
    /// `None` when there is no such namespace to be had (the helpers write them then).
    pub fn nest(&self, pid_file: &Path) -> Option<Nest> {
        let (helpers, entitled) = (self.helpers.as_ref()?, self.entitled.as_ref()?);
        let outer = Maps {
            uid: entitled.uid.clone(),
            gid: entitled.gid.clone(),
            deny_setgroups: false,
            helpers: Some(helpers.clone()),
            entitled: None,
        };
        super::keeper::nest(pid_file, entitled, &outer, self)
            .inspect_err(|e| tracing::debug!("newuidmap and newgidmap write the maps: {e}"))
            .ok()
    }

    /// True when newuidmap and newgidmap write the maps.
    pub fn through_helpers(&self) -> bool {
        self.helpers.is_some()
    }

    /// Starts writing the maps of process `pid` (which waits for them); [`Writing::finish`]
    /// waits until they are written. Direct writes are done at once; the helpers run while
    /// the caller does other work.
    pub fn start(&self, pid: i32) -> Result<Writing, UsernsError> {
        let Some((uid_tool, gid_tool)) = &self.helpers else {
            if self.deny_setgroups {
                write_proc(pid, "setgroups", b"deny")?;
            }
            write_proc(pid, "uid_map", lines(&self.uid).as_bytes())?;
            write_proc(pid, "gid_map", lines(&self.gid).as_bytes())?;
            return Ok(Writing {
                pid,
                uid: None,
                gid: None,
            });
        };
        // Each setuid helper costs ~1.5 ms of exec, dynamic linking and NSS lookups: both
        // are started before either is waited for, and the caller works meanwhile. Spawned
        // one after the other (a spawn holds its thread until the exec is done): starting
        // newgidmap from a thread of its own measured ~0.5 ms slower per container on
        // 2 busy cores than waiting for newuidmap's exec.
        let mut writing = Writing {
            pid,
            uid: Some(spawn_helper(uid_tool, pid, &self.uid)?),
            gid: None,
        };
        writing.gid = Some(spawn_helper(gid_tool, pid, &self.gid)?);
        Ok(writing)
    }

    /// Writes the maps of process `pid` and waits until they are written.
    pub fn write(&self, pid: i32) -> Result<(), UsernsError> {
        self.start(pid)?.finish()
    }

    /// The host uid that container uid `id` maps to.
    pub fn host_uid(&self, id: u32) -> Option<u32> {
        to_host(&self.uid, id)
    }
    pub fn host_gid(&self, id: u32) -> Option<u32> {
        to_host(&self.gid, id)
    }
}

/// Id maps being written by the helpers (dropping it waits for them, ignoring errors).
pub struct Writing {
    pid: i32,
    uid: Option<Child>,
    gid: Option<Child>,
}

impl Writing {
    /// Waits until both maps are written.
    pub fn finish(mut self) -> Result<(), UsernsError> {
        let uid = match self.uid.take() {
            Some(child) => finish_helper("newuidmap", self.pid, child),
            None => Ok(()),
        };
        let gid = match self.gid.take() {
            Some(child) => finish_helper("newgidmap", self.pid, child),
            None => Ok(()),
        };
        uid.and(gid)
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        if let Some(child) = self.uid.take() {
            let _ = child.wait_with_output();
        }
        if let Some(child) = self.gid.take() {
            let _ = child.wait_with_output();
        }
    }
}

/// newuidmap and newgidmap, when both are on PATH. Found once by the caller: spawned by
/// path, no exec is tried in every `$PATH` entry.
pub fn helpers() -> Option<(PathBuf, PathBuf)> {
    which("newuidmap").zip(which("newgidmap"))
}

/// Makes the calling process's new user namespace (a single-threaded process: the
/// kernel refuses a multithreaded one). Its parent then writes the maps.
pub fn unshare() -> Result<(), UsernsError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
        .map_err(|e| UsernsError::Unshare(e.into()))
}

/// A user namespace with `maps`, as an fd. A forked child unshares the namespace and
/// waits; we write its maps, open `/proc/PID/ns/user`, then kill and reap it. The
/// namespace lives on through the fd. Maps the helpers would write are made inside the
/// caller's kept namespace instead, when there is one (`keeper::write_inside`).
pub fn userns_fd(maps: &Maps) -> Result<OwnedFd, UsernsError> {
    let nest = maps.nest(&super::keeper::pid_file(&crate::dirs::run_dir()));
    let kept = nest.as_ref().map_or(-1, |n| n.userns.as_raw_fd());
    let io = |what: &str| {
        let what = what.to_string();
        move |e: nix::errno::Errno| UsernsError::Io {
            what,
            source: e.into(),
        }
    };
    let (ready_r, ready_w) = nix::unistd::pipe().map_err(io("pipe"))?;
    let (hold_r, hold_w) = nix::unistd::pipe().map_err(io("pipe"))?;
    let (ready_w_raw, hold_r_raw) = (ready_w.as_raw_fd(), hold_r.as_raw_fd());
    let (ready_r_raw, hold_w_raw) = (ready_r.as_raw_fd(), hold_w.as_raw_fd());
    // SAFETY: fork is sound here because the child below never returns into Rust code
    // that could touch state another thread left locked.
    let child = match unsafe { nix::unistd::fork() }.map_err(io("fork"))? {
        // SAFETY: the child calls only async-signal-safe functions (close, setns, unshare,
        // write, read, _exit) on fds it already has, with stack buffers: no allocation.
        nix::unistd::ForkResult::Child => unsafe {
            // Our copy of the write end would keep `read` below from ever seeing EOF.
            libc::close(hold_w_raw);
            libc::close(ready_r_raw);
            // 0, or the errno of setns (into the kept namespace) or unshare.
            let joined = kept < 0 || libc::setns(kept, libc::CLONE_NEWUSER) == 0;
            let errno: i32 = if joined && libc::unshare(libc::CLONE_NEWUSER) == 0 {
                0
            } else {
                *libc::__errno_location()
            };
            libc::write(ready_w_raw, (&errno as *const i32).cast(), 4);
            let mut byte = 0u8;
            // Blocks until the parent is done with us (or closes the pipe by dying).
            libc::read(hold_r_raw, (&mut byte as *mut u8).cast(), 1);
            libc::_exit(0)
        },
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop(ready_w);
    drop(hold_r);
    let pid = child.as_raw();
    let result = (|| {
        let mut errno = [0u8; 4];
        let n = nix::unistd::read(ready_r.as_fd(), &mut errno).map_err(io("read"))?;
        match (n, i32::from_ne_bytes(errno)) {
            (4, 0) => {}
            (4, e) => return Err(UsernsError::Unshare(io::Error::from_raw_os_error(e))),
            _ => return Err(UsernsError::Unshare(io::Error::other("the child died"))),
        }
        match &nest {
            Some(nest) => super::keeper::write_inside(nest, pid)?,
            None => maps.write(pid)?,
        }
        let path = format!("/proc/{pid}/ns/user");
        let ns = File::open(&path).map_err(|source| UsernsError::Io { what: path, source })?;
        Ok(OwnedFd::from(ns))
    })();
    drop(hold_w);
    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(child, None);
    result
}

/// Checks that every mapping is the caller's own id or lies within the caller's lines of
/// `file` (by name or uid, for subgid too, as shadow matches them).
fn check_covered(
    kind: &'static str,
    maps: &[Mapping],
    own: u32,
    file: &Subids,
    host: &Host,
) -> Result<(), UsernsError> {
    for m in maps {
        let own_id = m.size == 1 && m.host == own;
        let held = IdRange::new(m.host, m.size)
            .is_ok_and(|r| file.covers(host.user.as_deref(), host.uid, r));
        if !own_id && !held {
            return Err(UsernsError::NotCovered {
                kind,
                mapping: *m,
                file: file.path.clone(),
                who: host.who(),
                lines: file.describe_lines(host.user.as_deref(), host.uid),
            });
        }
    }
    Ok(())
}

fn to_host(maps: &[Mapping], id: u32) -> Option<u32> {
    maps.iter()
        .find(|m| id >= m.container && u64::from(id) < u64::from(m.container) + u64::from(m.size))
        .map(|m| m.host + (id - m.container))
}

pub(super) fn lines(maps: &[Mapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container, m.host, m.size))
        .collect()
}

pub(super) fn write_proc(pid: i32, file: &str, data: &[u8]) -> Result<(), UsernsError> {
    let path = format!("/proc/{pid}/{file}");
    std::fs::write(&path, data).map_err(|source| UsernsError::Io {
        what: format!("write {path}"),
        source,
    })
}

fn spawn_helper(tool: &Path, pid: i32, maps: &[Mapping]) -> Result<Child, UsernsError> {
    let mut cmd = Command::new(tool);
    cmd.arg(pid.to_string());
    for m in maps {
        cmd.args([
            m.container.to_string(),
            m.host.to_string(),
            m.size.to_string(),
        ]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| UsernsError::Io {
            what: format!("run {}", tool.display()),
            source,
        })
}

fn finish_helper(tool: &'static str, pid: i32, child: Child) -> Result<(), UsernsError> {
    let out = child.wait_with_output().map_err(|source| UsernsError::Io {
        what: format!("wait for {tool}"),
        source,
    })?;
    if !out.status.success() {
        return Err(UsernsError::Helper {
            tool,
            pid,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(text: &str) -> Host {
        Host {
            subuid: Subids::parse("/etc/subuid", text).unwrap(),
            subgid: Subids::parse("/etc/subgid", text).unwrap(),
            uid: 1001,
            gid: 1001,
            user: Some("alice".into()),
            pool_owner_account: None,
        }
    }

    fn helpers() -> Option<(PathBuf, PathBuf)> {
        Some(("/usr/bin/newuidmap".into(), "/usr/bin/newgidmap".into()))
    }

    /// A block and the caller's own id: what rootless work maps.
    fn block_and_own(start: u32) -> Vec<Mapping> {
        vec![
            Mapping {
                container: 0,
                host: start,
                size: 65536,
            },
            Mapping {
                container: 65536,
                host: 1001,
                size: 1,
            },
        ]
    }

    #[test]
    fn subordinate_maps_need_the_lines_and_the_helpers() {
        let h = host("alice:100000:65536\n1001:300000:65536\n");
        for start in [100000, 300000] {
            let maps = Maps::subordinate(&h, block_and_own(start), block_and_own(start), helpers())
                .unwrap();
            assert!(maps.through_helpers() && !maps.deny_setgroups);
            assert_eq!(maps.host_uid(65536), Some(1001));
            assert_eq!(maps.host_gid(5), Some(start + 5));
            assert_eq!(maps.host_uid(65537), None);
        }
        let err = Maps::subordinate(&h, block_and_own(100001), vec![], helpers()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, UsernsError::NotCovered { kind: "uid", .. }));
        assert!(msg.contains("line 2 `1001:300000:65536`"), "{msg}");
        assert!(msg.contains("100001"), "{msg}");
        let err =
            Maps::subordinate(&h, block_and_own(100000), block_and_own(0), helpers()).unwrap_err();
        assert!(err.to_string().contains("/etc/subgid"), "{err}");
        let err =
            Maps::subordinate(&h, block_and_own(100000), block_and_own(100000), None).unwrap_err();
        assert!(matches!(err, UsernsError::NoHelpers), "{err}");
    }

    #[test]
    fn map_lines_are_what_the_kernel_reads() {
        let m = Mapping::onto(0x10000, IdRange::new(200000, 0x10000).unwrap());
        assert_eq!(lines(&[m, m]), "65536 200000 65536\n65536 200000 65536\n");
        let direct = Maps::direct(vec![m], vec![m], true);
        assert!(!direct.through_helpers() && direct.deny_setgroups);
        assert_eq!(direct.host_uid(0x10001), Some(200001));
        assert_eq!(direct.host_uid(0), None);
    }
}
