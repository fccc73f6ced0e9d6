//! A container's exit facts: how its init ended (code or signal, an OOM kill in its
//! cgroup), recorded in its state (`Record::exit`) by whoever collects the status: the
//! creator's [`Container::wait`](super::Container::wait), a runtime's reaper for a
//! dropped handle, or the container's monitor ([`super::monitor`]) once the creator is
//! gone. Anyone can read them later ([`Container::exit`](super::Container::exit)).

use super::cgroup::{Cgroup, Version};
use serde::{Deserialize, Serialize};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// How a container's init ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Exit {
    /// The exit code, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// The signal that killed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The kernel's OOM killer killed a process of its cgroup (`oom_kill` went up).
    #[serde(default)]
    pub oom_killed: bool,
    /// RFC 3339 time the status was collected.
    #[serde(default)]
    pub finished: String,
}

impl Exit {
    /// The facts of `status`; `cgroup` is read for an OOM kill.
    pub fn of(status: ExitStatus, cgroup: Option<&Cgroup>) -> Exit {
        Exit {
            code: status.code(),
            signal: status.signal(),
            oom_killed: cgroup.is_some_and(oom_killed),
            finished: super::clock::now_rfc3339(),
        }
    }

    /// The shell's number for it: the code, or 128 + the signal.
    pub fn status_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }

    /// As a wait status.
    pub fn exit_status(&self) -> ExitStatus {
        match (self.code, self.signal) {
            (Some(c), _) => ExitStatus::from_raw((c & 0xff) << 8),
            (None, Some(s)) => ExitStatus::from_raw(s & 0x7f),
            (None, None) => ExitStatus::from_raw(0xff << 8),
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}")?,
            (None, Some(s)) => {
                let name = nix::sys::signal::Signal::try_from(s)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| format!("signal {s}"));
                write!(f, "killed by {name}")?
            }
            (None, None) => write!(f, "unknown exit")?,
        }
        if self.oom_killed {
            write!(f, " (OOM killed)")?;
        }
        Ok(())
    }
}

/// Whether the OOM killer killed something in `cg`: v2 `memory.events`, v1
/// `memory.oom_control` (both count `oom_kill`; a cgroup is the container's own, so any
/// count is its).
pub fn oom_killed(cg: &Cgroup) -> bool {
    let file = match cg.version() {
        Some(Version::V2) => "memory.events",
        Some(Version::V1) => "memory.oom_control",
        None => return false,
    };
    // Only the memory hierarchy's directory has the file (one read, not one per hierarchy).
    cg.memory_dir().is_some_and(|d| {
        std::fs::read_to_string(d.join(file)).is_ok_and(|text| oom_kill_count(&text) > 0)
    })
}

/// The `oom_kill N` line of a memory.events / memory.oom_control file.
fn oom_kill_count(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .filter_map(|n| n.trim().parse().ok())
        .next()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_oom_kill_of_either_version() {
        let v2 = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n";
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(oom_kill_count(v2), 1);
        assert_eq!(oom_kill_count(v1), 2);
        assert_eq!(oom_kill_count("oom 0\n"), 0);
    }

    #[test]
    fn status_round_trips() {
        let code = Exit::of(ExitStatus::from_raw(7 << 8), None);
        assert_eq!(
            (code.code, code.signal, code.status_code()),
            (Some(7), None, 7)
        );
        assert_eq!(code.exit_status().code(), Some(7));
        let sig = Exit::of(ExitStatus::from_raw(9), None);
        assert_eq!(
            (sig.code, sig.signal, sig.status_code()),
            (None, Some(9), 137)
        );
        assert_eq!(sig.exit_status().signal(), Some(9));
        assert_eq!(sig.to_string(), "killed by SIGKILL");
        // An old record without the field loads.
        let old: Exit = serde_json::from_str("{}").expect("empty facts");
        assert_eq!(old.status_code(), 255);
    }
}
