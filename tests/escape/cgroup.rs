//! Escape 3: the host's cgroup tree in the container. A container that sees cgroups sees
//! its own cgroup only, read-only: writes to `cgroup.procs` (leaving its limits),
//! `freezer.state` or `cgroup.freeze` (stopping host processes), `notify_on_release` and
//! `release_agent`, limits and new child cgroups all fail with EROFS, on this hybrid host
//! and in a private cgroup v2 view, in bundle mode (with and without user and cgroup
//! namespaces) and `run --image` (root and rootless). A sentinel cgroup of the host,
//! holding a process, must be invisible inside and unchanged after.

use crate::common::{ROOTLESS_USER, as_rootless, bin, ensure_rootless_user, require_root, scratch};
use crate::rootfs;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

/// Run inside the container with the sentinel's name as $1. Prints `WROTE f` for a write
/// that worked, `REFUSED f ERROR` for one that did not, `SEEN p` for a path of the
/// sentinel, `FOREIGN pid f` for a pid in a cgroup.procs that is not the container's,
/// `PROCS f` for each cgroup.procs read, `LINK name target` for each link at the top, and
/// `EMPTY` when /sys/fs/cgroup holds nothing.
/// Should the hole reopen, the host must not pay for it: each file gets its own content
/// back (the write is what is probed, not the value), `cgroup.procs` the shell's own pid,
/// and only the hierarchies' top two levels are tried (the host's roots, with the old
/// hole); FROZEN goes to the sentinel only.
const PROBE: &str = r#"
S=$1
for f in $(busybox find /sys/fs/cgroup -maxdepth 2 -type f); do
  case ${f##*/} in
    cgroup.procs|tasks) v=$$ ;;
    freezer.state|notify_on_release|release_agent|memory.limit_in_bytes|memory.max) v=$(cat $f) ;;
    cgroup.freeze|cgroup.subtree_control|cgroup.max.descendants) v=$(cat $f) ;;
    *) continue ;;
  esac
  if err=$( (echo "$v" > $f) 2>&1 ); then echo "WROTE $f"; else echo "REFUSED $f $err"; fi
done
for h in $(busybox find /sys/fs/cgroup -maxdepth 1 -mindepth 1 -type d) /sys/fs/cgroup; do
  if err=$(busybox mkdir $h/escape-$S 2>&1); then echo "WROTE $h/escape-$S"; else echo "REFUSED $h/escape-$S $err"; fi
done
for f in /sys/fs/cgroup/freezer/$S/freezer.state /sys/fs/cgroup/$S/cgroup.freeze /sys/fs/cgroup/unified/$S/cgroup.freeze; do
  case $f in *freezer.state) v=FROZEN ;; *) v=1 ;; esac
  if (echo $v > $f) 2>/dev/null; then echo "WROTE $f"; fi
done
for p in $(busybox find /sys/fs/cgroup -maxdepth 3 -name "$S*"); do echo "SEEN $p"; done
for f in $(busybox find /sys/fs/cgroup -maxdepth 2 -name cgroup.procs); do
  echo "PROCS $f"
  while read p; do
    if [ "$p" -gt 0 ] && [ -d /proc/$p ]; then :; else echo "FOREIGN $p $f"; fi
  done < $f
done
for l in $(busybox find /sys/fs/cgroup -maxdepth 1 -type l); do echo "LINK ${l##*/} $(busybox readlink $l)"; done
[ -z "$(busybox ls -A /sys/fs/cgroup)" ] && echo EMPTY
true
"#;

/// Through a bind of the host's whole /sys: each of the sentinel's files, written back
/// with its own content, and a child cgroup of it.
const SYS_PROBE: &str = r#"
S=$1
for f in /sys/fs/cgroup/freezer/$S/freezer.state /sys/fs/cgroup/freezer/$S/notify_on_release /sys/fs/cgroup/memory/$S/memory.limit_in_bytes /sys/fs/cgroup/memory/$S/cgroup.procs; do
  [ -e $f ] || { echo "MISSING $f"; continue; }
  case $f in *cgroup.procs) v=$$ ;; *) v=$(cat $f) ;; esac
  if err=$( (echo "$v" > $f) 2>&1 ); then echo "WROTE $f"; else echo "REFUSED $f $err"; fi
done
if err=$(busybox mkdir /sys/fs/cgroup/freezer/$S/escape 2>&1); then echo "WROTE mkdir"; else echo "REFUSED mkdir $err"; fi
"#;

/// The layout a probe runs on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Host {
    /// This machine's own: v1 controllers, a named systemd hierarchy, a cgroup2 `unified`.
    Hybrid,
    /// A private mount namespace whose /sys/fs/cgroup is the cgroup2 hierarchy.
    V2,
    /// A private mount namespace with only the v1 hierarchies, the cpu one under another
    /// name and a link to it (as `cpu -> cpu,cpuacct` on hosts that combine them).
    V1,
}

/// A host cgroup holding a sleeping process, in the freezer, memory and cgroup2
/// hierarchies; removed on drop.
struct Sentinel {
    name: String,
    sleeper: Child,
    dirs: Vec<PathBuf>,
}

impl Sentinel {
    fn new(tag: &str) -> Sentinel {
        let name = format!("warren-escape-sentinel-{tag}-{}", std::process::id());
        let sleeper = Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("spawn sleep");
        let mut s = Sentinel {
            name,
            sleeper,
            dirs: Vec::new(),
        };
        for h in ["freezer", "memory", "unified"] {
            let dir = Path::new("/sys/fs/cgroup").join(h).join(&s.name);
            assert!(
                dir.parent()
                    .expect("hierarchy")
                    .join("cgroup.procs")
                    .exists(),
                "this probe expects the hybrid layout with a {h} hierarchy (see docs/ENVIRONMENT)"
            );
            std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            s.dirs.push(dir.clone());
            std::fs::write(dir.join("cgroup.procs"), s.sleeper.id().to_string())
                .unwrap_or_else(|e| panic!("join {}: {e}", dir.display()));
        }
        s
    }

    /// The files an escape would change, with their contents.
    fn files(&self) -> Vec<(PathBuf, String)> {
        let [freezer, memory, unified] = &self.dirs[..] else {
            unreachable!()
        };
        [
            freezer.join("freezer.state"),
            freezer.join("notify_on_release"),
            memory.join("memory.limit_in_bytes"),
            memory.join("notify_on_release"),
            memory.join("cgroup.procs"),
            unified.join("cgroup.freeze"),
            unified.join("cgroup.procs"),
        ]
        .into_iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            (p, text)
        })
        .collect()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dirs[0].join("freezer.state"), "THAWED");
        let _ = self.sleeper.kill();
        let _ = self.sleeper.wait();
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d.join("escape"));
            let _ = std::fs::remove_dir(d);
        }
        // What a reopened hole would have made (an empty cgroup removes with rmdir).
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(h.path().join(format!("escape-{}", self.name)));
        }
    }
}

/// runc's default cgroup mount, with `options`.
fn cgroup_mount(options: &[&str]) -> Value {
    json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
           "options": options})
}

/// A rootful bundle config running the probe, with or without a cgroup namespace and a
/// user namespace.
fn bundle_config(sentinel: &str, cgroupns: bool, userns: bool, mount_options: &[&str]) -> Value {
    let mut c = rootfs::config(&["/bin/sh", "-c", PROBE, "sh", sentinel]);
    c["mounts"]
        .as_array_mut()
        .expect("mounts")
        .push(cgroup_mount(mount_options));
    if !cgroupns {
        c["linux"]["namespaces"]
            .as_array_mut()
            .expect("namespaces")
            .retain(|n| n["type"] != "cgroup");
    }
    if userns {
        c = rootfs::with_userns(c, 0x7a0000, 0x7a0000, 65536);
    }
    c
}

/// `cmd` as it runs on `host`: as is, or in a private mount namespace whose
/// /sys/fs/cgroup is the cgroup2 hierarchy.
fn on(host: Host, cmd: Command) -> Command {
    let setup = match host {
        Host::Hybrid => return cmd,
        Host::V2 => "mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup",
        Host::V1 => {
            "mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup && cd /sys/fs/cgroup && \
             for h in cpuacct cpuset memory devices freezer blkio pids; do \
               mkdir $h && mount -t cgroup -o $h cgroup $h || exit 1; done && \
             mkdir cpu,linked && mount -t cgroup -o cpu cgroup cpu,linked && \
             ln -s cpu,linked cpu && cd /"
        }
    };
    let mut c = Command::new("unshare");
    c.args(["-m", "--propagation", "private", "--", "sh", "-c"])
        .arg(format!("{setup} && exec \"$@\""))
        .arg("sh")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a bundle with `config` to completion (`warren run`), returning the probe's output.
fn run_bundle(host: Host, id: &str, config: &Value) -> String {
    let dir = scratch(&format!("escape-cgroup-{id}"));
    let b = dir.path().join("bundle");
    std::fs::create_dir(&b).expect("mkdir bundle");
    rootfs::bundle(&b, config);
    let mut cmd = Command::new(bin("warren"));
    cmd.arg("--root")
        .arg(dir.path().join("state"))
        .args(["run", "-b"])
        .arg(&b)
        .arg(id);
    finished(id, output(&mut on(host, cmd)))
}

/// `warren run --image busybox` of the probe, as root or as the rootless test user.
fn run_image(host: Host, id: &str, sentinel: &str, rootless: bool) -> String {
    let dir = scratch(&format!("escape-cgroup-{id}"));
    let mut cmd = if rootless {
        let (uid, gid) = ensure_rootless_user();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown scratch");
        let mut c = as_rootless(&bin("warren"));
        c.env("XDG_DATA_HOME", dir.path());
        c
    } else {
        let mut c = Command::new(bin("warren"));
        c.env("WARREN_STATE_DIR", dir.path().join("state"))
            .arg("--root")
            .arg(dir.path().join("run"));
        c
    };
    cmd.args(["run", "--rm", "--image", "busybox", "--name", id, "--"])
        .args(["sh", "-c", PROBE, "sh", sentinel]);
    finished(id, output(&mut on(host, cmd)))
}

fn finished(id: &str, out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{id}: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Every write refused with EROFS, nothing of the host seen; `expect` names files that
/// must have been among those probed (so that an empty view cannot pass for a safe one).
fn assert_contained(id: &str, out: &str, expect: &[&str]) {
    for line in out.lines() {
        for bad in ["WROTE", "SEEN", "FOREIGN"] {
            assert!(!line.starts_with(bad), "{id}: {line}\n{out}");
        }
        if let Some(rest) = line.strip_prefix("REFUSED ") {
            assert!(
                rest.contains("Read-only file system"),
                "{id}: refused, but not as read-only: {line}\n{out}"
            );
        }
    }
    for name in expect {
        assert!(
            out.lines()
                .any(|l| l.starts_with("REFUSED ") && l.contains(&format!("/{name} "))),
            "{id}: no {name} was probed\n{out}"
        );
    }
    if !expect.is_empty() {
        assert!(out.contains("PROCS "), "{id}: no cgroup.procs read\n{out}");
    }
}

const V1_FILES: &[&str] = &[
    "cgroup.procs",
    "tasks",
    "freezer.state",
    "notify_on_release",
    "memory.limit_in_bytes",
    // The hybrid host's cgroup2 `unified` hierarchy.
    "cgroup.freeze",
];
const V2_FILES: &[&str] = &["cgroup.procs", "cgroup.freeze", "cgroup.subtree_control"];

fn expected(host: Host) -> &'static [&'static str] {
    match host {
        Host::Hybrid => V1_FILES,
        Host::V2 => V2_FILES,
        Host::V1 => &V1_FILES[..V1_FILES.len() - 1],
    }
}

/// Bundles as root: with and without a cgroup namespace and a user namespace, with the
/// mount `ro` and without any option (read-only all the same).
fn bundles(host: Host) {
    crate::common::assert_root("bundles");
    let tag = match host {
        Host::Hybrid => "bh",
        Host::V2 => "b2",
        Host::V1 => "b1",
    };
    let sentinel = Sentinel::new(tag);
    let before = sentinel.files();
    let ro = ["nosuid", "noexec", "nodev", "relatime", "ro"];
    for (cgroupns, userns, options) in [
        (true, false, &ro[..]),
        (false, false, &[][..]),
        (true, true, &ro[..]),
        (false, true, &ro[..]),
    ] {
        let id = format!("esc-cg-{tag}-{}{}", cgroupns as u8, userns as u8);
        let config = bundle_config(&sentinel.name, cgroupns, userns, options);
        let out = run_bundle(host, &id, &config);
        assert_contained(&id, &out, expected(host));
        if host == Host::V1 {
            assert!(
                out.lines().any(|l| l == "LINK cpu cpu,linked"),
                "{id}: {out}"
            );
        }
    }
    assert_eq!(
        sentinel.files(),
        before,
        "the host's sentinel cgroup changed"
    );
}

#[test]
fn bundle_containers_see_only_their_own_cgroup_read_only() {
    if !crate::common::require_root("runs containers in their cgroups on a rootful installation") {
        return;
    }
    bundles(Host::Hybrid);
}

#[test]
fn bundle_containers_see_only_their_own_cgroup_read_only_on_v2() {
    if !crate::common::require_root("runs containers in their cgroups on a rootful installation") {
        return;
    }
    bundles(Host::V2);
}

#[test]
fn bundle_containers_see_only_their_own_cgroup_read_only_on_v1_with_links() {
    if !crate::common::require_root("runs containers in their cgroups on a rootful installation") {
        return;
    }
    bundles(Host::V1);
}

#[test]
fn image_containers_see_only_their_own_cgroup_read_only() {
    if !require_root("runs containers in their cgroups on a rootful installation") {
        return;
    }
    let sentinel = Sentinel::new("img");
    let before = sentinel.files();
    for host in [Host::Hybrid, Host::V2] {
        let id = format!("esc-cg-img-{host:?}").to_lowercase();
        let out = run_image(host, &id, &sentinel.name, false);
        assert_contained(&id, &out, expected(host));
    }
    assert_eq!(
        sentinel.files(),
        before,
        "the host's sentinel cgroup changed"
    );
}

#[test]
fn rootless_image_containers_see_no_host_cgroup() {
    if !require_root(
        "switches to the rootless test user (setpriv) and writes its /etc/subuid lines",
    ) {
        return;
    }
    let sentinel = Sentinel::new("rl");
    let before = sentinel.files();
    let id = "esc-cg-rootless";
    let out = run_image(Host::Hybrid, id, &sentinel.name, true);
    // Without a delegated cgroup the user's container has none of its own: an empty,
    // read-only /sys/fs/cgroup; with one, only its own.
    if out.lines().any(|l| l == "EMPTY") {
        assert_contained(id, &out, &[]);
        assert!(
            out.lines().any(
                |l| l.starts_with(&format!("REFUSED /sys/fs/cgroup/escape-{} ", sentinel.name))
            ),
            "{ROOTLESS_USER}: {out}"
        );
    } else {
        assert_contained(id, &out, V1_FILES);
    }
    assert_eq!(
        sentinel.files(),
        before,
        "the host's sentinel cgroup changed"
    );
}

/// A bind of the host's /sys (`rro`, as `run --image --network host` makes), or the
/// bind warren falls back on when a user namespace cannot mount sysfs (no network
/// namespace of its own): the host's cgroup tree under it is read-only too, not only the
/// top of /sys.
#[test]
fn a_bind_of_the_host_sys_is_read_only_all_the_way_down() {
    if !require_root("runs containers in their cgroups on a rootful installation") {
        return;
    }
    let sentinel = Sentinel::new("sys");
    let before = sentinel.files();
    let args = ["/bin/sh", "-c", SYS_PROBE, "sh", &sentinel.name];
    let mut rro = rootfs::config(&args);
    for m in rro["mounts"].as_array_mut().expect("mounts") {
        if m["destination"] == "/sys" {
            *m = json!({"destination": "/sys", "type": "bind", "source": "/sys",
                        "options": ["rbind", "nosuid", "noexec", "nodev", "rro"]});
        }
    }
    rro["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces")
        .retain(|n| n["type"] != "cgroup");
    let mut fallback = rootfs::with_userns(rootfs::config(&args), 0x7a0000, 0x7a0000, 65536);
    fallback["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces")
        .retain(|n| n["type"] != "network");
    for (id, config) in [("esc-cg-sys-rro", rro), ("esc-cg-sys-fallback", fallback)] {
        let out = run_bundle(Host::Hybrid, id, &config);
        let refused = out.lines().filter(|l| l.starts_with("REFUSED ")).count();
        assert_eq!(refused, 5, "{id}: {out}");
        for line in out.lines() {
            assert!(
                line.starts_with("REFUSED ") && line.contains("Read-only file system"),
                "{id}: {line}\n{out}"
            );
        }
    }
    assert_eq!(
        sentinel.files(),
        before,
        "the host's sentinel cgroup changed"
    );
}
