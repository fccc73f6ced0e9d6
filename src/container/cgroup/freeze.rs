//! Freezing a cgroup (`runc pause`/`resume`): v1 `freezer.state`, v2 `cgroup.freeze`,
//! each waited on until the kernel says every task is frozen.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Cgroup, CgroupError, Version};

/// How long a freeze may take before it is reported (a task in an uninterruptible sleep
/// holds a v1 freeze in FREEZING).
const TIMEOUT: Duration = Duration::from_secs(10);

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| CgroupError::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        controller: "freezer".into(),
        path: path.to_path_buf(),
        value: value.to_owned(),
        source,
    })
}

/// Whether v2's `cgroup.events` says the cgroup is frozen.
fn events_frozen(events: &str) -> bool {
    events.lines().any(|l| l.trim() == "frozen 1")
}

impl Cgroup {
    /// The file that freezes this cgroup: v1 `freezer.state` or v2 `cgroup.freeze`.
    fn freezer_file(&self) -> Result<PathBuf, CgroupError> {
        let (file, controller) = match self.version {
            Some(Version::V2) => ("cgroup.freeze", "cgroup.freeze"),
            _ => ("freezer.state", "freezer"),
        };
        self.dir_with(file)
            .map(|d| d.join(file))
            .ok_or_else(|| CgroupError::Unsupported {
                controller: controller.into(),
                message: format!("no {file} in {:?}", self.dirs),
            })
    }

    /// Freezes every process in the cgroup; returns once the kernel reports them frozen.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        self.set_frozen(true)
    }

    /// Thaws the cgroup.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.set_frozen(false)
    }

    /// True when the cgroup is frozen (or being frozen, on v1).
    pub fn frozen(&self) -> Result<bool, CgroupError> {
        let file = self.freezer_file()?;
        Ok(match self.version {
            Some(Version::V2) => read(&file)? == "1",
            _ => read(&file)? != "THAWED",
        })
    }

    fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        let file = self.freezer_file()?;
        let v2 = self.version == Some(Version::V2);
        let (value, want) = match (v2, frozen) {
            (true, true) => ("1", "frozen 1"),
            (true, false) => ("0", "frozen 0"),
            (false, true) => ("FROZEN", "FROZEN"),
            (false, false) => ("THAWED", "THAWED"),
        };
        let status = match v2 {
            true => file.with_file_name("cgroup.events"),
            false => file.clone(),
        };
        let start = Instant::now();
        loop {
            // v1 may stay FREEZING while a task cannot be stopped yet: writing again
            // retries it.
            write(&file, value)?;
            let now = read(&status)?;
            let done = match v2 {
                true => events_frozen(&now) == frozen,
                false => now == want,
            };
            if done {
                return Ok(());
            }
            if start.elapsed() > TIMEOUT {
                if frozen {
                    // Not left half-frozen.
                    let _ = write(&file, if v2 { "0" } else { "THAWED" });
                }
                return Err(CgroupError::FreezeTimeout {
                    path: file,
                    state: now,
                    seconds: TIMEOUT.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn v2_events_tell_frozen() {
        assert!(super::events_frozen("populated 1\nfrozen 1\n"));
        assert!(!super::events_frozen("populated 1\nfrozen 0\n"));
    }
}
