//! Helpers of the runc-CLI tests: the same commands run by runc and by warren, each with
//! its own state root, and containers deleted when the test ends (also on panic).
#![allow(dead_code)]

use crate::common::{as_rootless, bin, ok, require_tool};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// runc or warren, with a state root of its own.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub name: &'static str,
    pub bin: PathBuf,
    pub root: PathBuf,
    /// Run as the rootless test user.
    pub rootless: bool,
}

impl Runtime {
    pub fn runc(dir: &Path) -> Runtime {
        Runtime {
            name: "runc",
            bin: require_tool("runc", "runc"),
            root: dir.join("runc-root"),
            rootless: false,
        }
    }

    pub fn warren(dir: &Path) -> Runtime {
        Runtime {
            name: "warren",
            bin: bin("warren"),
            root: dir.join("warren-root"),
            rootless: false,
        }
    }

    /// warren as the rootless test user, its state in `dir` (which that user owns).
    pub fn warren_rootless(dir: &Path) -> Runtime {
        Runtime {
            rootless: true,
            ..Runtime::warren(dir)
        }
    }

    /// The runtime with `--root`, as clients call it.
    pub fn cmd(&self) -> Command {
        let mut c = if self.rootless {
            as_rootless(&self.bin)
        } else {
            Command::new(&self.bin)
        };
        c.arg("--root").arg(&self.root);
        c
    }

    /// `run -d` of `bundle` as a container named after `tag`, this runtime and the test
    /// process; deleted (forced) when the returned value drops.
    pub fn start(&self, bundle: &Path, tag: &str) -> Started {
        let id = format!("{tag}-{}-{}", self.name, std::process::id());
        ok(self
            .cmd()
            .args(["run", "-d", "-b"])
            .arg(bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()));
        let mut started = Started {
            rt: self.clone(),
            id,
            pid: 0,
        };
        let pid = started.state()["pid"].as_i64().unwrap_or(0) as i32;
        assert!(pid > 0, "{}: {} has no pid", self.name, started.id);
        started.pid = pid;
        started
    }
}

/// A running container; `delete --force`d on drop.
pub struct Started {
    pub rt: Runtime,
    pub id: String,
    pid: i32,
}

impl Started {
    /// The init's host pid when it started.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn state(&self) -> Value {
        let out = ok(self.rt.cmd().args(["state", &self.id]));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("state of {}: {e}: {out}", self.id))
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self
            .rt
            .cmd()
            .args(["delete", "--force", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

pub fn stdout_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `f`'s first `Some` within 10 s, polling every 10 ms.
pub fn poll<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    for _ in 0..1000 {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// The trimmed content of `file` in the cgroup v1 `controller` hierarchy that `pid` is in.
pub fn cgroup_v1_file(pid: i32, controller: &str, file: &str) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("/proc/PID/cgroup");
    let path = cgroups
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctls, path) = (parts.next()?, parts.next()?, parts.next()?);
            ctls.split(',')
                .any(|c| c == controller)
                .then_some(path.to_owned())
        })
        .unwrap_or_else(|| panic!("no cgroup v1 {controller} hierarchy for {pid}: {cgroups}"));
    let full = Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(path.trim_start_matches('/'))
        .join(file);
    std::fs::read_to_string(&full)
        .unwrap_or_else(|e| panic!("{}: {e}", full.display()))
        .trim()
        .to_owned()
}
