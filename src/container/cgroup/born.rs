//! Starting a container's init in its cgroup instead of moving it there afterwards.
//! Moving a process (a pid written to `cgroup.procs`) takes the kernel's global
//! threadgroup lock for writing, and its first taker waits for an RCU grace period:
//! 5-20 ms on this kind of host, on most starts, for crun and runc as well. A thread that
//! moves only itself (`0` written to a v1 `tasks` file) takes no global lock, and a child
//! is born in its creator's v1 cgroups; the cgroup2 hierarchy takes the child at clone
//! (`CLONE_INTO_CGROUP`). So the creating thread steps into the container's v1 cgroups,
//! clones, and steps back: no migration, no grace period.

use super::{Cgroup, CgroupError};
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// The calling thread, in a container's cgroups until [`Entered::leave`] (or its drop,
/// which leaves as well, on error paths).
pub(crate) struct Entered {
    /// The `tasks` files of the thread's own v1 cgroups, to go back to.
    back: Vec<PathBuf>,
    /// The container's cgroup2 directory, for `CLONE_INTO_CGROUP`.
    into: Option<OwnedFd>,
}

impl Cgroup {
    /// Puts the calling thread into this cgroup's v1 hierarchies and opens its cgroup2
    /// directory. `None` when that cannot be done (a no-op cgroup, a hierarchy this
    /// thread's `/proc/thread-self/cgroup` does not name, a refused write): the caller
    /// then moves the child the usual way.
    /// With `v1` false the thread enters none of them: the child joins those itself.
    pub(crate) fn enter_thread(&self, v1: bool) -> Option<Entered> {
        if self.is_noop() {
            return None;
        }
        let own = match v1 {
            true => std::fs::read_to_string("/proc/thread-self/cgroup").ok()?,
            false => String::new(),
        };
        let mut v1_dirs = Vec::new();
        let mut back = Vec::new();
        let mut into = None;
        for dir in &self.dirs {
            if self.in_cgroup2(dir) {
                let fd = std::fs::File::open(dir).ok()?;
                into = Some(OwnedFd::from(fd));
                continue;
            }
            if !v1 {
                continue;
            }
            let point = self.hierarchy_of(dir);
            let name = self.real_name(&point)?;
            back.push(point.join(own_path(&own, &name)?).join("tasks"));
            v1_dirs.push(dir.join("tasks"));
        }
        let mut entered = Entered {
            back: Vec::new(),
            into,
        };
        for (tasks, back) in v1_dirs.iter().zip(back) {
            if std::fs::write(tasks, "0").is_err() {
                // Nothing half-done: back out of what was entered.
                let _ = entered.leave();
                return None;
            }
            entered.back.push(back);
        }
        Some(entered)
    }
}

impl Entered {
    /// The cgroup2 directory the child is to be cloned into.
    pub(crate) fn cgroup2_fd(&self) -> Option<RawFd> {
        self.into.as_ref().map(|f| f.as_raw_fd())
    }

    /// Puts the thread back in its own cgroups (its hierarchy's root if its own is gone:
    /// never left in the container's, whose destroy kills what it holds).
    pub(crate) fn leave(mut self) -> Result<(), CgroupError> {
        self.go_back()
    }

    fn go_back(&mut self) -> Result<(), CgroupError> {
        let mut failed = None;
        for tasks in std::mem::take(&mut self.back) {
            if std::fs::write(&tasks, "0").is_ok() {
                continue;
            }
            let root = hierarchy_root(&tasks).map(|r| r.join("tasks"));
            if let Err(source) = root.as_ref().map_or(Ok(()), |r| std::fs::write(r, "0")) {
                failed = Some(CgroupError::Io {
                    path: tasks,
                    source,
                });
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        let _ = self.go_back();
    }
}

/// This thread's path in the v1 hierarchy called `name` (`cpu,cpuacct`, `systemd`), from
/// `/proc/thread-self/cgroup` lines `ID:CONTROLLERS:PATH`, without its leading `/`.
fn own_path(own: &str, name: &OsStr) -> Option<PathBuf> {
    let name = name.to_str()?;
    let wanted = controllers(name);
    own.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, list, path) = (fields.next()?, fields.next()?, fields.next()?);
        let list: Vec<&str> = list
            .split(',')
            .map(|c| c.trim_start_matches("name="))
            .collect();
        (!list.is_empty() && controllers_eq(&list, &wanted))
            .then(|| PathBuf::from(path.trim_start_matches('/')))
    })
}

fn controllers(name: &str) -> Vec<&str> {
    name.split(',').collect()
}

fn controllers_eq(a: &[&str], b: &[&str]) -> bool {
    a.len() == b.len() && a.iter().all(|c| b.contains(c))
}

/// `/sys/fs/cgroup/cpu` for `/sys/fs/cgroup/cpu/a/b/tasks`: the mount is the directory
/// below the one holding the hierarchies (every v1 hierarchy is mounted side by side).
fn hierarchy_root(tasks: &Path) -> Option<PathBuf> {
    let mut dir = tasks.parent()?;
    while let Some(parent) = dir.parent() {
        if parent.join("cgroup.procs").exists() {
            dir = parent;
        } else {
            break;
        }
    }
    Some(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_finds_its_path_in_each_hierarchy() {
        let own = "12:pids:/user.slice/a\n4:cpu,cpuacct:/x\n1:name=systemd:/init.scope\n0::/u\n";
        let path = |n: &str| own_path(own, OsStr::new(n));
        assert_eq!(path("pids"), Some(PathBuf::from("user.slice/a")));
        assert_eq!(path("cpuacct,cpu"), Some(PathBuf::from("x")));
        assert_eq!(path("systemd"), Some(PathBuf::from("init.scope")));
        assert_eq!(path("memory"), None);
    }
}
