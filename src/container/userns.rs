//! The id maps a container's new user namespace gets: what the config asks, or the
//! rootless default (the caller's own id as 0, its first subordinate line from 1). The
//! namespace is made by the container's init; the maps are checked and written by
//! [`crate::idmap::userns`], the one place that makes user namespaces.

use super::error::Error;
use crate::idmap::subid::{Host, Subids};
use crate::idmap::userns::UsernsError;
pub use crate::idmap::userns::{Mapping, Maps};
use oci_spec::runtime::LinuxIdMapping;
use std::path::PathBuf;

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

impl From<UsernsError> for Error {
    fn from(e: UsernsError) -> Error {
        match e {
            UsernsError::Io { what, source } => Error::Io { what, source },
            e => Error::UserNamespace(e.to_string()),
        }
    }
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
        Maps::plan_for(Some(&host), crate::idmap::userns::helpers(), uid, gid)
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
            return Ok((Maps::direct(uid, gid, false), None));
        };
        let mut warning = None;
        let (uid, gid) = if uid.is_empty() {
            let (uid, gid, why) = rootless_default(host, helpers.is_some());
            warning = why;
            (uid, gid)
        } else {
            let gid = if gid.is_empty() { own(host.gid) } else { gid };
            (uid, gid)
        };
        // One mapping of the caller's own id: the kernel lets it write that itself.
        let simple = |m: &[Mapping], own| m.len() == 1 && m[0].host == own && m[0].size == 1;
        if simple(&uid, host.uid) && simple(&gid, host.gid) {
            return Ok((Maps::direct(uid, gid, true), warning));
        }
        Ok((Maps::subordinate(host, uid, gid, helpers)?, warning))
    }
}

/// The caller's own id as 0.
fn own(id: u32) -> Vec<Mapping> {
    vec![Mapping {
        container: 0,
        host: id,
        size: 1,
    }]
}

/// The maps when the config asks none: own id -> 0, the first subordinate line -> 1..
/// (when the helpers can write it); else own ids only, and a warning that says so.
fn rootless_default(host: &Host, helpers: bool) -> (Vec<Mapping>, Vec<Mapping>, Option<String>) {
    let name = host.user.as_deref();
    let extend = |id, file: &Subids| {
        let mut v = own(id);
        if let Some(e) = file.of(name, host.uid).next().filter(|_| helpers) {
            v.push(Mapping {
                container: 1,
                host: e.range.start,
                size: e.range.len.min(65536),
            });
        }
        v
    };
    let (uid, gid) = (
        extend(host.uid, &host.subuid),
        extend(host.gid, &host.subgid),
    );
    if uid.len() > 1 && gid.len() > 1 {
        return (uid, gid, None);
    }
    let warning = format!(
        "user namespace: the config maps no ids and {} has no usable subordinate \
         ids ({} and {}, newuidmap from uidmap): only uid {} and gid {} are mapped (to 0)",
        host.who(),
        host.subuid.path.display(),
        host.subgid.path.display(),
        host.uid,
        host.gid
    );
    (own(host.uid), own(host.gid), Some(warning))
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
                assert!(maps.through_helpers() && warning.is_none());
                assert_eq!((maps.uid, maps.gid), (block(start), block(start)), "{text}");
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
        assert!(maps.deny_setgroups && !maps.through_helpers());
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
