//! Where a container's cgroup goes, planned from the host's facts (pure: the caller's
//! `/proc/self/cgroup`, the layout and which directories are writable are arguments, so
//! the unit tests cover v1, v2 and hybrid hosts without root).
//!
//! The rules, by the request's `cgroupsPath`:
//! - absent: `warren/<id>` below each hierarchy's root (warren's runc-CLI default; runc
//!   1.1.5 itself uses `<caller's cgroup>/<id>`);
//! - absolute: below each hierarchy's root (runc);
//! - relative: runc's rule: below the caller's own cgroup in each v1 hierarchy (a hybrid
//!   host's cgroup2 below its root, as runc 1.1.5 does), below the *parent* of the
//!   caller's cgroup on v2 (the caller's own holds processes);
//! - `caller:PATH` (what `runtime::Runtime` asks for, see [`under_caller`]): below the
//!   caller's own cgroup, so a unit with `Delegate=yes` or a user's delegated
//!   `user@UID.service` subtree keeps its workload. On v2 a cgroup with processes cannot
//!   enable controllers for children ("no internal processes"): the caller's processes
//!   move to a `supervisor` leaf beside the container's (podman's `--cgroups=split`), once
//!   (a caller already in `X/supervisor` places beneath `X`); the root cgroup needs no
//!   split. Only a cgroup delegated to us (writable) is used; otherwise this is an error
//!   ([`CgroupError::NotDelegated`]), which a container without limits turns into no
//!   cgroup at all.

use std::path::{Component, Path, PathBuf};

use super::{CgroupError, Version};

/// The leaf the caller's processes move to when its v2 cgroup becomes a parent.
pub const SUPERVISOR: &str = "supervisor";

/// The `cgroupsPath` prefix meaning "beneath the caller's own cgroup" (warren's own form;
/// systemd's `slice:prefix:name` has two colons and is refused).
pub const CALLER_PREFIX: &str = "caller:";

/// The `cgroupsPath` placing a container at `leaf` beneath the caller's own cgroup.
pub fn under_caller(leaf: &str) -> String {
    format!("{CALLER_PREFIX}{leaf}")
}

/// What the request's path is relative to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Anchor {
    /// Each hierarchy's root.
    Root,
    /// runc's relative rule (v1: the caller's cgroup; v2: its parent).
    Runc,
    /// The caller's own cgroup, split on v2.
    Caller,
}

/// A parsed `cgroupsPath`: its anchor and a clean relative path (no `..`, not empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Request {
    pub anchor: Anchor,
    pub path: PathBuf,
}

impl Request {
    pub fn parse(name: &str, cgroups_path: Option<&str>) -> Result<Request, CgroupError> {
        let (anchor, raw) = match cgroups_path {
            None => (Anchor::Root, format!("warren/{name}")),
            Some(p) => match p.strip_prefix(CALLER_PREFIX) {
                Some(rest) => (Anchor::Caller, rest.to_string()),
                None if p.contains(':') => {
                    return Err(CgroupError::Path {
                        path: p.into(),
                        message: "systemd slice:prefix:name paths are not supported; use a path",
                    });
                }
                None if p.starts_with('/') => (Anchor::Root, p.to_string()),
                None => (Anchor::Runc, p.to_string()),
            },
        };
        let mut path = PathBuf::new();
        for c in Path::new(&raw).components() {
            match c {
                Component::Normal(part) => path.push(part),
                Component::RootDir | Component::CurDir => {}
                _ => {
                    return Err(CgroupError::Path {
                        path: raw,
                        message: "`..` is not allowed",
                    });
                }
            }
        }
        if path.as_os_str().is_empty() {
            return Err(CgroupError::Path {
                path: raw,
                message: "the container cannot use the root cgroup",
            });
        }
        Ok(Request { anchor, path })
    }
}

/// One v1 hierarchy (or the hybrid's cgroup2) as the planner sees it.
#[derive(Clone, Debug)]
pub(super) struct Hierarchy {
    /// The controller it was found by (empty: a named or cgroup2 hierarchy).
    pub controller: &'static str,
    /// Where it is mounted (`<root>/cpu`).
    pub mount: PathBuf,
    /// Its real name under the root (`cpu,cpuacct`, `systemd`, `unified`).
    pub name: String,
    /// A cgroup2 mount (its line in `/proc/self/cgroup` is `0::PATH`).
    pub cgroup2: bool,
}

/// The host facts placement depends on.
pub(super) struct Facts<'a> {
    pub root: &'a Path,
    pub version: Version,
    /// v1: the hierarchies the container joins (unused on v2).
    pub hierarchies: &'a [Hierarchy],
    /// The caller's `/proc/self/cgroup`.
    pub own: &'a str,
    /// Whether a cgroup directory is ours to write (delegated, or we are root).
    pub writable: &'a dyn Fn(&Path) -> bool,
}

/// The planned directories.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Placement {
    /// (controller, base, leaf) per hierarchy: `base` exists, the directories from it down
    /// to `leaf` are made.
    pub leaves: Vec<(&'static str, PathBuf, PathBuf)>,
    /// v2: move every process of this cgroup into its [`SUPERVISOR`] leaf first.
    pub split: Option<PathBuf>,
}

/// Plans the request's directories (see the module docs for the rules).
pub(super) fn plan(req: &Request, f: &Facts) -> Result<Placement, CgroupError> {
    match f.version {
        Version::V2 => plan_v2(req, f),
        Version::V1 => plan_v1(req, f),
    }
}

fn plan_v2(req: &Request, f: &Facts) -> Result<Placement, CgroupError> {
    let own = || own_path(f.own, |field| field.is_empty(), "cgroup2");
    let (base, split) = match req.anchor {
        Anchor::Root => (f.root.to_path_buf(), None),
        Anchor::Runc => {
            let own = own()?;
            (f.root.join(own.parent().unwrap_or(&own)), None)
        }
        Anchor::Caller => {
            let own = own()?;
            let dir = f.root.join(&own);
            if own.as_os_str().is_empty() {
                // The root cgroup may hold processes and children with controllers.
                (dir, None)
            } else if own.file_name().is_some_and(|n| n == SUPERVISOR) {
                // Split before: the container goes beside the supervisor leaf.
                let parent = dir.parent().unwrap_or(&dir).to_path_buf();
                delegated(f, &parent)?;
                (parent, None)
            } else {
                delegated(f, &dir)?;
                (dir.clone(), Some(dir))
            }
        }
    };
    let leaf = base.join(&req.path);
    Ok(Placement {
        leaves: vec![("", base, leaf)],
        split,
    })
}

fn plan_v1(req: &Request, f: &Facts) -> Result<Placement, CgroupError> {
    let mut leaves = Vec::new();
    for h in f.hierarchies {
        let base = match req.anchor {
            Anchor::Root => h.mount.clone(),
            // runc 1.1.5 places a hybrid host's cgroup2 below its root even then.
            Anchor::Runc if h.cgroup2 => h.mount.clone(),
            Anchor::Runc | Anchor::Caller => {
                let matches = |field: &str| line_is_for(field, h);
                let own = match own_path(f.own, matches, &h.name) {
                    Ok(own) => own,
                    // A hierarchy of no controller this process is not in is left out.
                    Err(_) if h.controller.is_empty() => continue,
                    Err(e) => return Err(e),
                };
                let dir = h.mount.join(own);
                // Controller-less hierarchies we cannot write are left out when made.
                if req.anchor == Anchor::Caller && !h.controller.is_empty() {
                    delegated(f, &dir)?;
                }
                dir
            }
        };
        let leaf = base.join(&req.path);
        leaves.push((h.controller, base, leaf));
    }
    Ok(Placement {
        leaves,
        split: None,
    })
}

fn delegated(f: &Facts, dir: &Path) -> Result<(), CgroupError> {
    match (f.writable)(dir) {
        true => Ok(()),
        false => Err(CgroupError::NotDelegated {
            path: dir.to_path_buf(),
            hint: "",
        }),
    }
}

/// Whether a `/proc/self/cgroup` controllers field names hierarchy `h`: the same set of
/// controllers as its name (`cpu,cpuacct`), `name=X` for a named one, empty for cgroup2.
fn line_is_for(field: &str, h: &Hierarchy) -> bool {
    if h.cgroup2 || field.is_empty() {
        return h.cgroup2 && field.is_empty();
    }
    let mut want: Vec<&str> = field
        .split(',')
        .map(|c| c.strip_prefix("name=").unwrap_or(c))
        .collect();
    let mut have: Vec<&str> = h.name.split(',').collect();
    want.sort_unstable();
    have.sort_unstable();
    want == have
}

/// The caller's cgroup (relative, clean) in the hierarchy whose line `matches`.
fn own_path(
    text: &str,
    matches: impl Fn(&str) -> bool,
    what: &str,
) -> Result<PathBuf, CgroupError> {
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(field), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if !matches(field) {
            continue;
        }
        let mut out = PathBuf::new();
        for c in Path::new(path).components() {
            match c {
                Component::Normal(part) => out.push(part),
                Component::RootDir | Component::CurDir => {}
                // Outside our cgroup namespace: nothing under our mounts.
                _ => {
                    return Err(CgroupError::Path {
                        path: path.into(),
                        message: "the caller's cgroup is outside this cgroup namespace",
                    });
                }
            }
        }
        return Ok(out);
    }
    Err(CgroupError::Unsupported {
        controller: what.into(),
        message: "the caller's cgroup in it is not in /proc/self/cgroup".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(controller: &'static str, name: &str, cgroup2: bool) -> Hierarchy {
        Hierarchy {
            controller,
            mount: Path::new("/cg").join(name),
            name: name.into(),
            cgroup2,
        }
    }

    fn run(
        version: Version,
        hs: &[Hierarchy],
        own: &str,
        path: Option<&str>,
        ok: &dyn Fn(&Path) -> bool,
    ) -> Result<Placement, CgroupError> {
        let facts = Facts {
            root: Path::new("/cg"),
            version,
            hierarchies: hs,
            own,
            writable: ok,
        };
        plan(&Request::parse("web", path)?, &facts)
    }

    /// runc's rules never ask.
    fn none_ok() -> impl Fn(&Path) -> bool {
        |_: &Path| false
    }

    fn leaves(p: &Placement) -> Vec<PathBuf> {
        p.leaves.iter().map(|l| l.2.clone()).collect()
    }

    const V2_OWN: &str = "0::/system.slice/container@web.service\n";

    #[test]
    fn v2_caller_is_split_once_and_only_when_delegated() {
        let yes = |_: &Path| true;
        let p = run(Version::V2, &[], V2_OWN, Some("caller:warren-web"), &yes).expect("plan");
        let unit = PathBuf::from("/cg/system.slice/container@web.service");
        assert_eq!(leaves(&p), [unit.join("warren-web")]);
        assert_eq!(p.split, Some(unit.clone()));
        // Already split: beside the supervisor, no second split.
        let own = "0::/system.slice/container@web.service/supervisor\n";
        let p = run(Version::V2, &[], own, Some("caller:warren-web"), &yes).expect("plan");
        assert_eq!(leaves(&p), [unit.join("warren-web")]);
        assert_eq!(p.split, None);
        // The root cgroup needs no split.
        let p = run(Version::V2, &[], "0::/\n", Some("caller:x"), &yes).expect("plan");
        assert_eq!((leaves(&p), p.split), (vec![PathBuf::from("/cg/x")], None));
        // Not delegated (rootless outside a Delegate=yes scope): an error naming the dir.
        let no = |_: &Path| false;
        let err = run(Version::V2, &[], V2_OWN, Some("caller:x"), &no).expect_err("refused");
        assert!(matches!(err, CgroupError::NotDelegated { ref path, .. } if *path == unit));
    }

    #[test]
    fn runc_rules_for_absolute_relative_and_no_path() {
        let yes = |_: &Path| true;
        let v2 = |p| run(Version::V2, &[], V2_OWN, p, &yes).expect("plan");
        assert_eq!(leaves(&v2(None)), [PathBuf::from("/cg/warren/web")]);
        assert_eq!(leaves(&v2(Some("/a/b"))), [PathBuf::from("/cg/a/b")]);
        // runc's v2 rule: below the parent of the caller's cgroup.
        assert_eq!(
            leaves(&v2(Some("a/b"))),
            [PathBuf::from("/cg/system.slice/a/b")]
        );
        assert_eq!(v2(Some("a/b")).split, None);
        let hs = [h("memory", "memory", false), h("cpu", "cpu,cpuacct", false)];
        let own = "4:memory:/m/x\n2:cpuacct,cpu:/c\n";
        let p = run(Version::V1, &hs, own, Some("a"), &yes).expect("plan");
        assert_eq!(
            leaves(&p),
            [
                PathBuf::from("/cg/memory/m/x/a"),
                PathBuf::from("/cg/cpu,cpuacct/c/a")
            ]
        );
        assert!(Request::parse("web", Some("s.slice:p:n")).is_err());
        assert!(Request::parse("web", Some("caller:../x")).is_err());
    }

    #[test]
    fn hybrid_caller_is_per_hierarchy_and_controller_less_ones_are_optional() {
        let hs = [
            h("pids", "pids", false),
            h("", "systemd", false),
            h("", "unified", true),
        ];
        let own = "9:name=systemd:/s\n8:pids:/p/q\n0::/u\n";
        let only_pids = |d: &Path| d.starts_with("/cg/pids");
        let p = run(Version::V1, &hs, own, Some("caller:w"), &only_pids).expect("plan");
        assert_eq!(
            leaves(&p),
            [
                PathBuf::from("/cg/pids/p/q/w"),
                PathBuf::from("/cg/systemd/s/w"),
                PathBuf::from("/cg/unified/u/w")
            ]
        );
        assert_eq!(p.split, None);
        // runc's relative rule: the hybrid's cgroup2 below its root.
        let p = run(Version::V1, &hs, own, Some("w"), &none_ok()).expect("plan");
        assert_eq!(
            leaves(&p),
            [
                PathBuf::from("/cg/pids/p/q/w"),
                PathBuf::from("/cg/systemd/s/w"),
                PathBuf::from("/cg/unified/w")
            ]
        );
        // A controller's hierarchy that is not ours: refused.
        let none = |_: &Path| false;
        let err = run(Version::V1, &hs, own, Some("caller:w"), &none).expect_err("refused");
        assert!(matches!(err, CgroupError::NotDelegated { .. }), "{err}");
    }
}
