//! The namespaces of a config for `create`: which clone makes, which the child makes
//! itself, which it joins by path; and what a container without a mount namespace of its
//! own may not ask for.

use super::error::Error;
use super::spawn::{ns_info, open_ns};
use oci_spec::runtime::{Linux, LinuxNamespaceType, Spec};
use std::os::fd::OwnedFd;
use std::path::Path;

/// The namespaces of a config: which clone makes, which the child makes itself, which
/// it joins.
#[derive(Default)]
pub(super) struct Namespaces {
    /// For clone(2).
    pub(super) clone: libc::c_int,
    /// Made after joining a user namespace by path (so they belong to it).
    pub(super) unshare: libc::c_int,
    /// Made by the child of a new user namespace while the maps are written.
    pub(super) early_unshare: libc::c_int,
    /// To join, user namespace first: (fd, CLONE_NEW*).
    pub(super) join: Vec<(OwnedFd, libc::c_int)>,
    pub(super) new_userns: bool,
    pub(super) user_joined: bool,
    /// A mount namespace of its own: else (none, or one joined by path) the rootfs is
    /// entered by chroot and no mount is made (see [`check_no_mounts`]).
    pub(super) new_mountns: bool,
    /// A pid namespace joined by path: the child forks the init once more.
    pub(super) pid_joined: bool,
    pub(super) new_pid: bool,
    /// Made by the child once it is in its cgroup (rootfs::Plan), so that it is rooted
    /// there and shows nothing of the caller's.
    pub(super) new_cgroupns: bool,
    pub(super) new_net: bool,
    /// A uts namespace, new or joined: host and domain names may be set.
    pub(super) uts: bool,
}

/// Whether clone makes a new network namespace for `linux` (what [`Namespaces::of`] would
/// say, known before the config is checked): as root, no user namespace, a network one
/// without a path.
pub(super) fn clone_makes_netns(linux: &Linux) -> bool {
    let namespaces = linux.namespaces().as_deref().unwrap_or_default();
    crate::dirs::is_root()
        && !namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::User)
        && namespaces.iter().any(|n| {
            n.typ() == LinuxNamespaceType::Network
                && n.path().as_ref().is_none_or(|p| p.as_os_str().is_empty())
        })
}

impl Namespaces {
    pub(super) fn of(linux: &Linux) -> Result<Namespaces, Error> {
        let mut namespaces = linux.namespaces().clone().unwrap_or_default();
        if !crate::dirs::is_root()
            && !namespaces
                .iter()
                .any(|n| n.typ() == LinuxNamespaceType::User)
        {
            // Unprivileged, nothing works without one: add it rather than fail.
            let mut user = oci_spec::runtime::LinuxNamespace::default();
            user.set_typ(LinuxNamespaceType::User);
            namespaces.push(user);
        }
        let mut ns = Namespaces {
            uts: namespaces
                .iter()
                .any(|n| n.typ() == LinuxNamespaceType::Uts),
            ..Default::default()
        };
        let mut flags = 0;
        for (i, n) in namespaces.iter().enumerate() {
            match n.path() {
                Some(p) if !p.as_os_str().is_empty() => ns.join_one(n.typ(), p, i)?,
                _ => flags |= ns_info(n.typ()).1,
            }
        }
        ns.derive(flags)?;
        Ok(ns)
    }

    /// Opens namespace `path` (config entry `i`) to join.
    fn join_one(&mut self, typ: LinuxNamespaceType, path: &Path, i: usize) -> Result<(), Error> {
        if typ == LinuxNamespaceType::Time {
            // setns() of it only moves later children, like pid (below): not yet.
            return Err(Error::config(
                &format!("linux.namespaces[{i}].path"),
                "joining an existing time namespace is not supported yet",
            ));
        }
        let fd = open_ns(path, &format!("linux.namespaces[{i}].path"))?;
        let flag = ns_info(typ).1;
        if typ == LinuxNamespaceType::User {
            self.user_joined = true;
            self.join.insert(0, (fd, flag));
        } else {
            // setns() of a pid namespace only moves later children: the child
            // forks once more after joining, and the grandchild is the init.
            self.pid_joined |= typ == LinuxNamespaceType::Pid;
            self.join.push((fd, flag));
        }
        Ok(())
    }

    /// Has clone make a new network namespace the early unshare would: a helper attached
    /// from outside before GO (pasta, slirp4netns) must find it made, and the early
    /// unshare runs while the parent writes the maps and attaches, unsynchronized.
    pub(super) fn clone_makes_the_network(&mut self) {
        let net = self.early_unshare & libc::CLONE_NEWNET;
        self.early_unshare &= !net;
        self.clone |= net;
    }

    /// Splits the new namespaces `flags` between clone, the early unshare and the
    /// unshare after joining.
    fn derive(&mut self, mut flags: libc::c_int) -> Result<(), Error> {
        self.new_userns = flags & libc::CLONE_NEWUSER != 0;
        self.new_cgroupns = flags & libc::CLONE_NEWCGROUP != 0;
        flags &= !libc::CLONE_NEWCGROUP;
        self.new_mountns = flags & libc::CLONE_NEWNS != 0;
        let (clone_flags, unshare) = if self.user_joined {
            if flags & libc::CLONE_NEWPID != 0 {
                return Err(Error::config(
                    "linux.namespaces",
                    "a new pid namespace together with a user namespace joined by path is not supported",
                ));
            }
            (0, flags)
        } else {
            (flags, 0)
        };
        // With a new user namespace, the child makes these itself while the maps are written.
        self.early_unshare = if self.new_userns && !self.user_joined {
            flags
                & (libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC)
        } else {
            0
        };
        self.clone = clone_flags & !self.early_unshare;
        self.unshare = unshare;
        self.new_pid = flags & libc::CLONE_NEWPID != 0;
        self.new_net = flags & libc::CLONE_NEWNET != 0;
        Ok(())
    }
}

/// Without a mount namespace of its own the container shares a mount table (the
/// runtime's, or one joined by path): warren changes nothing in it, so a config that
/// asks for mounts is refused rather than applied to others' mounts (runc would).
pub(super) fn check_no_mounts(spec: &Spec, linux: &Linux) -> Result<(), Error> {
    let why = "needs a mount namespace of its own (type \"mount\" without a path)";
    let mut fields = Vec::new();
    if spec.mounts().as_ref().is_some_and(|m| !m.is_empty()) {
        fields.push("mounts");
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        fields.push("root.readonly");
    }
    if linux.masked_paths().as_ref().is_some_and(|m| !m.is_empty()) {
        fields.push("linux.maskedPaths");
    }
    if linux
        .readonly_paths()
        .as_ref()
        .is_some_and(|m| !m.is_empty())
    {
        fields.push("linux.readonlyPaths");
    }
    if linux.devices().as_ref().is_some_and(|m| !m.is_empty()) {
        fields.push("linux.devices");
    }
    if linux.sysctl().as_ref().is_some_and(|m| !m.is_empty()) {
        fields.push("linux.sysctl");
    }
    if linux
        .rootfs_propagation()
        .as_ref()
        .is_some_and(|p| !p.is_empty())
    {
        fields.push("linux.rootfsPropagation");
    }
    match fields.first() {
        Some(f) => Err(Error::config(f, why)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The early guess `create` starts a network namespace on agrees with the plan.
    #[test]
    fn clone_makes_netns_agrees_with_the_plan() {
        let cases = [
            serde_json::json!([]),
            serde_json::json!([{"type": "network"}]),
            serde_json::json!([{"type": "network", "path": ""}, {"type": "pid"}]),
            serde_json::json!([{"type": "network", "path": "/proc/self/ns/net"}]),
            serde_json::json!([{"type": "network"}, {"type": "user"}]),
            serde_json::json!([{"type": "mount"}, {"type": "uts"}]),
        ];
        for namespaces in cases {
            let linux: Linux =
                serde_json::from_value(serde_json::json!({"namespaces": namespaces}))
                    .expect("linux");
            let planned = Namespaces::of(&linux).expect("plan").clone & libc::CLONE_NEWNET != 0;
            assert_eq!(clone_makes_netns(&linux), planned, "{namespaces}");
        }
    }

    /// With a helper to attach, the network namespace exists when the child is cloned;
    /// the other namespaces still go to the early unshare, and a config without a new
    /// network namespace gets none.
    #[test]
    fn a_helper_to_attach_has_clone_make_the_network() {
        let plan = |namespaces: serde_json::Value| {
            let linux: Linux =
                serde_json::from_value(serde_json::json!({"namespaces": namespaces}))
                    .expect("linux");
            let mut ns = Namespaces::of(&linux).expect("plan");
            let before = (ns.clone, ns.early_unshare);
            ns.clone_makes_the_network();
            (before, (ns.clone, ns.early_unshare))
        };
        let all = serde_json::json!([
            {"type": "user"}, {"type": "network"}, {"type": "mount"}, {"type": "uts"}
        ]);
        let ((clone, early), (clone_after, early_after)) = plan(all);
        assert_ne!(early & libc::CLONE_NEWNET, 0, "the early unshare made it");
        assert_eq!(clone_after, clone | libc::CLONE_NEWNET);
        assert_eq!(early_after, early & !libc::CLONE_NEWNET);
        assert_ne!(early_after & libc::CLONE_NEWNS, 0);
        let ((clone, early), after) =
            plan(serde_json::json!([{"type": "user"}, {"type": "mount"}]));
        assert_eq!(after, (clone, early), "no network namespace asked for");
        assert_eq!((clone | early) & libc::CLONE_NEWNET, 0);
    }
}
