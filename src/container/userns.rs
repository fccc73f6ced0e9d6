//! Id maps of a new user namespace, written by the parent: directly as root (or for a
//! single mapping of one's own id), through `newuidmap`/`newgidmap` and the user's
//! subordinate ranges otherwise (all of the user's lines, read by the one parser in
//! `idmap::subid`). A mapping those ranges do not hold is an error, never a narrower map.

use super::error::Error;
use crate::idmap::IdRange;
use crate::idmap::subid::{Host, Subids};
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

/// Why the maps of a rootless container cannot be made as asked: the file and the lines.
fn not_covered(kind: &str, m: &Mapping, file: &Subids, host: &Host) -> Error {
    let who = host.who();
    Error::UserNamespace(format!(
        "{kind} mapping {} -> {}+{} is not within {who}'s lines in {} ({}): newuidmap would \
         refuse it. Map only ids those lines hold, or give {who} a range holding them \
         (usermod --add-sub{kind}s START-END {who})",
        m.container,
        m.host,
        m.size,
        file.path.display(),
        file.describe_lines(host.user.as_deref(), host.uid)
    ))
}

/// Checks that every mapping is the caller's own id or lies within the caller's lines of
/// `file` (by name or uid, for subgid too, as shadow matches them).
fn check_covered(
    kind: &str,
    maps: &[Mapping],
    own: u32,
    file: &Subids,
    host: &Host,
) -> Result<(), Error> {
    for m in maps {
        let own_id = m.size == 1 && m.host == own;
        let held = IdRange::new(m.host, m.size)
            .is_ok_and(|r| file.covers(host.user.as_deref(), host.uid, r));
        if !own_id && !held {
            return Err(not_covered(kind, m, file, host));
        }
    }
    Ok(())
}

impl Maps {
    /// Decides how to map ids for a new user namespace. `uid`/`gid` come from the config
    /// (may be empty). Returns the maps and a warning when the config asked for no maps and
    /// the caller has no subordinate ids, so the container gets only the caller's own id.
    pub fn plan(uid: Vec<Mapping>, gid: Vec<Mapping>) -> Result<(Maps, Option<String>), Error> {
        if crate::dirs::is_root() {
            return Maps::plan_for(None, None, uid, gid);
        }
        let host = Host::current().map_err(|e| Error::UserNamespace(crate::error_line(&e)))?;
        // Found once here: spawned by path, so no exec is tried in every $PATH entry.
        let helpers = which("newuidmap").zip(which("newgidmap"));
        Maps::plan_for(Some(&host), helpers, uid, gid)
    }

    /// [`Maps::plan`] on given host facts: `host` is `None` as root, else the caller's
    /// ids and subordinate id files; `helpers` are newuidmap/newgidmap when present. A
    /// mapping that cannot be made as asked is an error naming the file and lines, never
    /// a narrower mapping.
    pub fn plan_for(
        host: Option<&Host>,
        helpers: Option<(PathBuf, PathBuf)>,
        uid: Vec<Mapping>,
        gid: Vec<Mapping>,
    ) -> Result<(Maps, Option<String>), Error> {
        let Some(host) = host else {
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
        };
        let (own_uid, own_gid) = (host.uid, host.gid);
        let single = |own| {
            vec![Mapping {
                container: 0,
                host: own,
                size: 1,
            }]
        };
        let mut warning = None;
        let (uid, gid) = if uid.is_empty() {
            // Rootless default: own id -> 0, the first subordinate line -> 1.. (when the
            // helpers can write it).
            let name = host.user.as_deref();
            let extend = |own, file: &Subids| {
                let mut v = single(own);
                if let Some(e) = file.of(name, host.uid).next().filter(|_| helpers.is_some()) {
                    v.push(Mapping {
                        container: 1,
                        host: e.range.start,
                        size: e.range.len.min(65536),
                    });
                }
                v
            };
            let maps = (extend(own_uid, &host.subuid), extend(own_gid, &host.subgid));
            if maps.0.len() == 1 || maps.1.len() == 1 {
                warning = Some(format!(
                    "user namespace: the config maps no ids and {} has no usable subordinate \
                     ids ({} and {}, newuidmap from uidmap): only uid {own_uid} and gid \
                     {own_gid} are mapped (to 0)",
                    host.who(),
                    host.subuid.path.display(),
                    host.subgid.path.display()
                ));
                (single(own_uid), single(own_gid))
            } else {
                maps
            }
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
                warning,
            ));
        }
        check_covered("uid", &uid, own_uid, &host.subuid, host)?;
        check_covered("gid", &gid, own_gid, &host.subgid, host)?;
        if helpers.is_none() {
            return Err(Error::UserNamespace(
                "mapping subordinate ids needs newuidmap and newgidmap: apt-get install uidmap"
                    .into(),
            ));
        }
        Ok((
            Maps {
                uid,
                gid,
                deny_setgroups: false,
                helpers,
            },
            warning,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn host(subuid: &str, subgid: &str) -> Host {
        Host {
            subuid: Subids::parse("/etc/subuid", subuid).unwrap(),
            subgid: Subids::parse("/etc/subgid", subgid).unwrap(),
            uid: 1001,
            gid: 1001,
            user: Some("alice".into()),
            pool_owner_account: None,
        }
    }

    fn block(host: u32) -> Vec<Mapping> {
        vec![Mapping {
            container: 0,
            host,
            size: 65536,
        }]
    }

    fn helpers() -> Option<(PathBuf, PathBuf)> {
        Some(("/usr/bin/newuidmap".into(), "/usr/bin/newgidmap".into()))
    }

    #[test]
    fn a_block_from_any_line_maps_whole() {
        let two = "alice:100000:65536\nbob:165536:65536\nalice:300000:65536\n";
        let by_uid = "1001:100000:65536\n1001:300000:65536\n";
        for text in [two, by_uid] {
            let h = host(text, text);
            for start in [100000, 300000] {
                let (maps, warning) =
                    Maps::plan_for(Some(&h), helpers(), block(start), block(start)).unwrap();
                assert_eq!((maps.uid, maps.gid), (block(start), block(start)), "{text}");
                assert!(maps.helpers.is_some() && warning.is_none());
            }
        }
    }

    #[test]
    fn ids_outside_the_lines_are_an_error_naming_file_and_lines() {
        let h = host(
            "alice:100000:65536\nalice:300000:65536\n",
            "alice:100000:65536\n",
        );
        let msg = Maps::plan_for(Some(&h), helpers(), block(165536), block(100000))
            .unwrap_err()
            .to_string();
        for part in [
            "/etc/subuid",
            "line 1 `alice:100000:65536`",
            "line 2",
            "165536",
        ] {
            assert!(msg.contains(part), "{part}: {msg}");
        }
        // The gid map is checked against subgid, where the second block is missing.
        let msg = Maps::plan_for(Some(&h), helpers(), block(300000), block(300000))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("/etc/subgid"), "{msg}");
        // Bob's lines are not alice's; an empty file holds nothing.
        let h = host("bob:100000:65536\n", "");
        assert!(Maps::plan_for(Some(&h), helpers(), block(100000), block(100000)).is_err());
        // Without the helpers a subordinate map is an error too, not a one-id map.
        let h = host("alice:100000:65536\n", "alice:100000:65536\n");
        let msg = Maps::plan_for(Some(&h), None, block(100000), block(100000))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("uidmap"), "{msg}");
    }

    #[test]
    fn own_id_maps_directly_and_the_default_uses_the_first_line() {
        let own = vec![Mapping {
            container: 0,
            host: 1001,
            size: 1,
        }];
        let h = host("", "");
        let (maps, _) = Maps::plan_for(Some(&h), None, own.clone(), own.clone()).unwrap();
        assert!(maps.deny_setgroups && maps.helpers.is_none());
        // No maps asked and no subids: own id only, said in a warning.
        let (maps, warning) = Maps::plan_for(Some(&h), helpers(), vec![], vec![]).unwrap();
        assert_eq!(maps.uid, own);
        assert!(warning.is_some_and(|w| w.contains("/etc/subuid")));
        let text = "alice:300000:100000\n";
        let (maps, warning) =
            Maps::plan_for(Some(&host(text, text)), helpers(), vec![], vec![]).unwrap();
        assert_eq!(maps.uid[1].host, 300000);
        assert_eq!(maps.uid[1].size, 65536);
        assert!(warning.is_none());
        // As root the config's maps are written as they are.
        assert!(Maps::plan_for(None, None, vec![], own.clone()).is_err());
        let (maps, _) = Maps::plan_for(None, None, block(5), block(5)).unwrap();
        assert_eq!(maps.uid, block(5));
    }
}
