//! Id maps of a new user namespace, written by the parent: directly as root (or for a
//! single mapping of one's own id), through `newuidmap`/`newgidmap` and the user's
//! subordinate ranges otherwise, falling back to "own id -> 0" when those are missing.

use super::Error;
use oci_spec::runtime::LinuxIdMapping;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// One `container host size` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub container: u32,
    pub host: u32,
    pub size: u32,
}

impl Mapping {
    pub fn from_spec(m: &[LinuxIdMapping]) -> Vec<Mapping> {
        m.iter()
            .map(|m| Mapping {
                container: m.container_id(),
                host: m.host_id(),
                size: m.size(),
            })
            .collect()
    }
}

/// How the maps of one container are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maps {
    pub uid: Vec<Mapping>,
    pub gid: Vec<Mapping>,
    /// `setgroups` is denied (required when an unprivileged process writes a gid map).
    pub deny_setgroups: bool,
    /// Where `newuidmap` and `newgidmap` are, when they write the maps.
    helpers: Option<(PathBuf, PathBuf)>,
}

/// The first range of `user` in /etc/subuid or /etc/subgid (by name or numeric id).
fn subid_range(file: &str, name: &str, id: u32) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let who = f.next()?;
        if who != name && who != id.to_string() {
            return None;
        }
        Some((
            f.next()?.trim().parse().ok()?,
            f.next()?.trim().parse().ok()?,
        ))
    })
}

fn covered_by(maps: &[Mapping], own: u32, sub: Option<(u32, u32)>) -> bool {
    maps.iter().all(|m| {
        (m.size == 1 && m.host == own)
            || sub.is_some_and(|(start, len)| {
                m.host >= start
                    && u64::from(m.host) + u64::from(m.size) <= u64::from(start) + u64::from(len)
            })
    })
}

impl Maps {
    /// Decides how to map ids for a new user namespace. `uid`/`gid` come from the config
    /// (may be empty). Returns the maps and a warning when it had to fall back.
    pub fn plan(uid: Vec<Mapping>, gid: Vec<Mapping>) -> Result<(Maps, Option<String>), Error> {
        if crate::dirs::is_root() {
            if uid.is_empty() || gid.is_empty() {
                return Err(Error::config(
                    "linux.uidMappings",
                    "a user namespace needs uidMappings and gidMappings when run as root",
                ));
            }
            return Ok((
                Maps {
                    uid,
                    gid,
                    deny_setgroups: false,
                    helpers: None,
                },
                None,
            ));
        }
        let own_uid = nix::unistd::geteuid().as_raw();
        let own_gid = nix::unistd::getegid().as_raw();
        let name = nix::unistd::User::from_uid(own_uid.into())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_default();
        let subuid = subid_range("/etc/subuid", &name, own_uid);
        let subgid = subid_range("/etc/subgid", &name, own_gid);
        let single = |own| {
            vec![Mapping {
                container: 0,
                host: own,
                size: 1,
            }]
        };
        let (uid, gid) = if uid.is_empty() {
            // Rootless default: own id -> 0, subordinate ids -> 1..
            let extend = |own, sub: Option<(u32, u32)>| {
                let mut v = single(own);
                if let Some((start, len)) = sub {
                    v.push(Mapping {
                        container: 1,
                        host: start,
                        size: len.min(65536),
                    });
                }
                v
            };
            (extend(own_uid, subuid), extend(own_gid, subgid))
        } else {
            (uid, if gid.is_empty() { single(own_gid) } else { gid })
        };
        let simple = |m: &[Mapping], own| m.len() == 1 && m[0].host == own && m[0].size == 1;
        if simple(&uid, own_uid) && simple(&gid, own_gid) {
            return Ok((
                Maps {
                    uid,
                    gid,
                    deny_setgroups: true,
                    helpers: None,
                },
                None,
            ));
        }
        // Found once here: spawned by path, so no exec is tried in every $PATH entry.
        let helpers = which("newuidmap").zip(which("newgidmap"));
        if helpers.is_some()
            && covered_by(&uid, own_uid, subuid)
            && covered_by(&gid, own_gid, subgid)
        {
            return Ok((
                Maps {
                    uid,
                    gid,
                    deny_setgroups: false,
                    helpers,
                },
                None,
            ));
        }
        let why = if helpers.is_none() {
            "newuidmap/newgidmap are missing (apt-get install uidmap)".to_owned()
        } else {
            format!(
                "the requested ids are not all in {name}'s ranges in /etc/subuid and /etc/subgid"
            )
        };
        let warning = format!(
            "user namespace: {why}; falling back to a single mapping (uid {own_uid} -> 0, gid {own_gid} -> 0)"
        );
        Ok((
            Maps {
                uid: single(own_uid),
                gid: single(own_gid),
                deny_setgroups: true,
                helpers: None,
            },
            Some(warning),
        ))
    }

    /// Starts writing the maps of process `pid` (which waits for them); [`Writing::finish`]
    /// waits until they are written. Direct writes are done at once; the helpers run while
    /// the caller does other work.
    pub fn start(&self, pid: i32) -> Result<Writing, Error> {
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
    pub fn finish(mut self) -> Result<(), Error> {
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

fn to_host(maps: &[Mapping], id: u32) -> Option<u32> {
    maps.iter()
        .find(|m| id >= m.container && u64::from(id) < u64::from(m.container) + u64::from(m.size))
        .map(|m| m.host + (id - m.container))
}

fn lines(maps: &[Mapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container, m.host, m.size))
        .collect()
}

fn write_proc(pid: i32, file: &str, data: &[u8]) -> Result<(), Error> {
    let path = format!("/proc/{pid}/{file}");
    std::fs::write(&path, data).map_err(|source| Error::Io {
        what: format!("write {path}"),
        source,
    })
}

fn spawn_helper(tool: &Path, pid: i32, maps: &[Mapping]) -> Result<Child, Error> {
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
        .map_err(|source| Error::Io {
            what: format!("run {}", tool.display()),
            source,
        })
}

fn finish_helper(tool: &str, pid: i32, child: Child) -> Result<(), Error> {
    let out = child.wait_with_output().map_err(|source| Error::Io {
        what: format!("wait for {tool}"),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::UserNamespace(format!(
            "{tool} {}: {}",
            pid,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
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
