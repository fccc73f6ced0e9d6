//! Where containers' cgroups go: `runtime::Runtime` containers (`warren run --image`)
//! beneath the caller's own cgroup, as under a `Delegate=yes` unit, on this host's v1
//! hierarchies and on a private cgroup2 view (the caller's cgroup split into `supervisor`
//! and the container's leaf); nothing left behind after delete. As root.

mod common;
#[path = "common/rootfs.rs"]
mod rootfs;

use common::{bin, hierarchies, ok, require_root, require_tool, scratch, warren};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

const CG: &str = "/sys/fs/cgroup";

/// The test's "unit" cgroup in every hierarchy, removed (once empty) on drop.
struct Caller {
    name: String,
    dirs: Vec<PathBuf>,
}

impl Caller {
    fn make(tag: &str) -> Caller {
        let name = format!("warren-test-caller-{tag}-{}", std::process::id());
        let mut dirs = Vec::new();
        for h in hierarchies() {
            let dir = h.join(&name);
            std::fs::create_dir(&dir).expect("mkdir caller cgroup");
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(v) = std::fs::read_to_string(h.join(f)) {
                    std::fs::write(dir.join(f), v.trim()).expect("cpuset");
                }
            }
            dirs.push(dir);
        }
        Caller { name, dirs }
    }
}

impl Caller {
    /// Its directory in the hierarchy named `h`.
    fn dirs_of(&self, h: &str) -> PathBuf {
        Path::new(CG).join(h).join(&self.name)
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        for d in &self.dirs {
            // runc leaves a relative path's parents (only its leaf goes).
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                let _ = std::fs::remove_dir(e.path());
            }
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[test]
fn library_containers_go_beneath_the_callers_cgroup_in_every_v1_hierarchy() {
    if !require_root("makes cgroups under /sys/fs/cgroup and runs containers") {
        return;
    }
    require_tool("busybox", "busybox-static");
    assert!(
        Path::new(CG).join("pids/cgroup.procs").exists(),
        "this test needs the v1 pids hierarchy (a legacy or hybrid host)"
    );
    let dir = scratch("placement-v1");
    let caller = Caller::make("v1");
    let tag = std::process::id();
    // With limits, and without (its cgroup namespace and mount need a cgroup too).
    let cases: [(String, &[&str]); 2] = [
        (
            format!("placed-{tag}"),
            &["--pids-limit", "20", "--memory", "64M"],
        ),
        (format!("placed-plain-{tag}"), &[]),
    ];
    // Dropped before `caller`: its containers go first, even when an assertion fails.
    let _removed = Remove(dir.path(), cases.iter().map(|c| c.0.clone()).collect());
    for (name, limits) in &cases {
        // A shell moved into the caller's cgroup everywhere (as a unit's main process)
        // runs `warren run -d`.
        ok(in_caller(&caller, dir.path())
            .args(["run", "-d", "--image", "busybox", "--name", name])
            .args(*limits)
            .args(["--", "sleep", "60"]));
        let leaf = format!("{}/warren-{name}", caller.name);
        let pids_dir = Path::new(CG).join("pids").join(&leaf);
        let init: i32 = std::fs::read_to_string(pids_dir.join("cgroup.procs"))
            .expect("the container's pids cgroup beneath the caller's")
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("a process in it");
        // Every hierarchy: the init is beneath the caller's cgroup.
        let theirs = std::fs::read_to_string(format!("/proc/{init}/cgroup")).expect("cgroup");
        for line in theirs.lines() {
            let path = line.splitn(3, ':').nth(2).expect("path");
            assert_eq!(path, format!("/{leaf}"), "{name}: {line}\n{theirs}");
        }
        let limit = |h: &str, file: &str| read(&Path::new(CG).join(h).join(&leaf).join(file));
        let (pids, memory) = match limits.is_empty() {
            false => ("20".to_string(), (64u64 << 20).to_string()),
            true => (
                "max".to_string(),
                read(&caller.dirs_of("memory").join("memory.limit_in_bytes")),
            ),
        };
        assert_eq!(limit("pids", "pids.max"), pids, "{name}");
        assert_eq!(limit("memory", "memory.limit_in_bytes"), memory, "{name}");
        for h in hierarchies() {
            let root_placed = h.join("warren").join(name);
            assert!(
                !root_placed.exists(),
                "{}: placed at the root",
                root_placed.display()
            );
        }
    }
    for (name, _) in &cases {
        ok(warren(dir.path()).args(["rm", "--force", name]));
        for d in &caller.dirs {
            let left = d.join(format!("warren-{name}"));
            assert!(!left.exists(), "{} left behind", left.display());
        }
    }
}

/// Removes the named containers (`warren rm --force`) on drop.
struct Remove<'a>(&'a Path, Vec<String>);

impl Drop for Remove<'_> {
    fn drop(&mut self) {
        for name in &self.1 {
            let _ = warren(self.0).args(["rm", "--force", name]).output();
        }
    }
}

/// `warren` run by a shell that first moves itself into `caller`'s cgroup everywhere.
fn in_caller(caller: &Caller, dir: &Path) -> Command {
    let procs: Vec<String> = caller
        .dirs
        .iter()
        .map(|d| d.join("cgroup.procs").display().to_string())
        .collect();
    let script = "for f in $PROCS; do echo $$ > \"$f\" || exit 9; done; exec \"$W\" \"$@\"";
    let mut sh = Command::new("sh");
    sh.args(["-c", script, "sh"])
        .env("W", bin("warren"))
        .env("WARREN_STATE_DIR", dir.join("state"))
        .env("PROCS", procs.join(" "))
        .arg("--root")
        .arg(dir.join("run"));
    sh
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

#[test]
fn on_cgroup2_the_callers_cgroup_splits_into_supervisor_and_container_leaves_once() {
    if !require_root("mounts a private cgroup2 view and runs containers") {
        return;
    }
    require_tool("unshare", "util-linux");
    let unified = Path::new(CG).join("unified");
    assert!(
        unified.join("cgroup.controllers").exists()
            || Path::new(CG).join("cgroup.controllers").exists(),
        "this test needs a cgroup2 hierarchy"
    );
    let dir = scratch("placement-v2");
    let tag = std::process::id();
    let unit = format!("warren-test-unit-{tag}");
    let (a, b) = (format!("split-a-{tag}"), format!("split-b-{tag}"));
    // Each container's config asks for what runtime::Runtime asks for: beneath the caller.
    for id in [&a, &b] {
        let mut c = rootfs::config(&["sleep", "60"]);
        c["linux"]["cgroupsPath"] = json!(warren::container::cgroup::under_caller(&format!(
            "warren-{id}"
        )));
        c["linux"]["resources"] = json!({"devices": [{"allow": false, "access": "rwm"}]});
        std::fs::create_dir_all(dir.path().join(id)).expect("mkdir bundle");
        rootfs::bundle(&dir.path().join(id), &c);
    }
    // In a private mount namespace, a fresh cgroup2 mount on /sys/fs/cgroup: a v2 host
    // whose `unit` cgroup is delegated (root may write it) and holds the caller.
    let script = r#"
set -e
mount -t cgroup2 none /sys/fs/cgroup
U=/sys/fs/cgroup/$UNIT
mkdir $U
echo $$ > $U/cgroup.procs
"$W" --root "$RUN" create -b "$DIR/$A" "$A"
echo "shell: $(grep ^0:: /proc/$$/cgroup)"
echo "a-init: $(cat $U/warren-$A/cgroup.procs)"
"$W" --root "$RUN" create -b "$DIR/$B" "$B"
echo "b-init: $(cat $U/warren-$B/cgroup.procs)"
echo "children: $(cd $U && ls -d */ | tr -d / | tr '\n' ' ')"
"$W" --root "$RUN" delete --force "$A"
"$W" --root "$RUN" delete --force "$B"
echo "after: $(cd $U && ls -d */ | tr -d / | tr '\n' ' ')"
echo $$ > /sys/fs/cgroup/cgroup.procs
rmdir $U/supervisor $U
"#;
    let out = ok(Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script])
        .env("W", bin("warren"))
        .env("RUN", dir.path().join("run"))
        .env("DIR", dir.path())
        .env("UNIT", &unit)
        .env("A", &a)
        .env("B", &b));
    let field = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {out}"))
            .trim()
            .to_string()
    };
    // The caller moved to the supervisor leaf; the containers beside it, one split only.
    assert_eq!(field("shell:"), format!("0::/{unit}/supervisor"), "{out}");
    let mut children: Vec<&str> = Vec::new();
    let listed = field("children:");
    children.extend(listed.split_whitespace());
    children.sort_unstable();
    let mut want = vec![
        "supervisor".to_string(),
        format!("warren-{a}"),
        format!("warren-{b}"),
    ];
    want.sort();
    assert_eq!(children, want, "{out}");
    for (key, id) in [("a-init:", &a), ("b-init:", &b)] {
        let pid = field(key);
        assert!(!pid.is_empty(), "{id}: no process in its leaf: {out}");
    }
    // Nothing but the supervisor leaf after delete; the whole unit removed by the script.
    assert_eq!(field("after:"), "supervisor", "{out}");
    let host_view = if unified.join("cgroup.controllers").exists() {
        unified
    } else {
        PathBuf::from(CG)
    };
    assert!(!host_view.join(&unit).exists(), "{unit} left behind");
}

/// A runc-CLI config's relative cgroupsPath: runc's rule, beneath the caller's cgroup in each
/// v1 hierarchy (a hybrid host's cgroup2 below its root), for runc and for warren alike
/// (runc 1.1.5, run here).
#[test]
fn a_relative_cgroups_path_is_beneath_the_callers_cgroup_as_with_runc() {
    if !require_root("makes cgroups under /sys/fs/cgroup and runs containers") {
        return;
    }
    let runc = require_tool("runc", "runc");
    assert!(
        Path::new(CG).join("pids/cgroup.procs").exists(),
        "this test needs the v1 pids hierarchy (a legacy or hybrid host)"
    );
    let dir = scratch("placement-relative");
    let caller = Caller::make("rel");
    for (rt, program) in [("runc", runc), ("warren", bin("warren"))] {
        let id = format!("rel-{rt}-{}", std::process::id());
        let rel = format!("{id}-parent/leaf");
        let mut config = rootfs::config(&["sleep", "60"]);
        config["linux"]["cgroupsPath"] = json!(rel);
        let b = dir.path().join(&id);
        std::fs::create_dir_all(&b).expect("mkdir bundle");
        rootfs::bundle(&b, &config);
        let state = dir.path().join(format!("state-{rt}"));
        let procs: Vec<String> = caller
            .dirs
            .iter()
            .map(|d| d.join("cgroup.procs").display().to_string())
            .collect();
        let script = "for f in $PROCS; do echo $$ > \"$f\" || exit 9; done; exec \"$W\" \"$@\"";
        // The init holds its stdio until it runs: nothing to capture.
        let status = Command::new("sh")
            .args(["-c", script, "sh"])
            .env("W", &program)
            .env("PROCS", procs.join(" "))
            .arg("--root")
            .arg(&state)
            .args(["create", "-b"])
            .arg(&b)
            .arg(&id)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run create");
        assert!(status.success(), "{rt} create: {status}");
        let st: serde_json::Value = serde_json::from_str(&ok(Command::new(&program)
            .arg("--root")
            .arg(&state)
            .args(["state", &id])))
        .expect("state json");
        let pid = st["pid"].as_i64().expect("pid");
        let theirs = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
        ok(Command::new(&program)
            .arg("--root")
            .arg(&state)
            .args(["delete", "--force", &id]));
        for line in theirs.lines() {
            let path = line.splitn(3, ':').nth(2).expect("path");
            // runc 1.1.5 puts a hybrid host's cgroup2 below its root.
            let want = match line.starts_with("0::") {
                true => format!("/{rel}"),
                false => format!("/{}/{rel}", caller.name),
            };
            assert_eq!(path, want, "{rt}: {line}\n{theirs}");
        }
        // runc leaves a relative path's parent behind (only its leaf goes).
        for h in hierarchies() {
            let parent = h.join(format!("{id}-parent"));
            let _ = std::fs::remove_dir(&parent);
        }
    }
}

/// Runs `f` in a forked child that, in a private mount namespace with a fresh cgroup2 on
/// /sys/fs/cgroup, moves into the cgroup `unit` (owned by nobody when `delegated`, as
/// systemd's `Delegate=yes` for a user) and becomes nobody; returns its exit code.
fn as_nobody_in_cgroup2_unit(unit: &str, delegated: bool, f: impl FnOnce() -> i32) -> i32 {
    use nix::mount::{MsFlags, mount};
    // SAFETY: the child is single-threaded after fork; it only makes syscalls and runs the
    // library, then leaves with _exit (glibc keeps malloc usable in a forked child).
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            let code = (|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).ok()?;
                let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
                mount(None::<&str>, "/", None::<&str>, private, None::<&str>).ok()?;
                let none = MsFlags::empty();
                mount(Some("none"), CG, Some("cgroup2"), none, None::<&str>).ok()?;
                let dir = Path::new(CG).join(unit);
                std::fs::create_dir(&dir).ok()?;
                if delegated {
                    for f in [
                        "",
                        "cgroup.procs",
                        "cgroup.subtree_control",
                        "cgroup.threads",
                    ] {
                        let p = dir.join(f);
                        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).ok()?;
                    }
                }
                std::fs::write(dir.join("cgroup.procs"), "0").ok()?;
                nix::unistd::setgid(nix::unistd::Gid::from_raw(65534)).ok()?;
                nix::unistd::setuid(nix::unistd::Uid::from_raw(65534)).ok()?;
                Some(f())
            })()
            .unwrap_or(100);
            // SAFETY: leaving the forked child without running the harness's destructors.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            match nix::sys::wait::waitpid(child, None).expect("waitpid") {
                nix::sys::wait::WaitStatus::Exited(_, code) => code,
                other => panic!("child: {other:?}"),
            }
        }
    }
}

#[test]
fn rootless_in_a_delegated_cgroup2_subtree_gets_its_cgroup_there_else_a_hint() {
    if !require_root("mounts a private cgroup2 view and switches to nobody") {
        return;
    }
    let unified = Path::new(CG).join("unified");
    assert!(
        unified.join("cgroup.controllers").exists(),
        "this test needs a hybrid host's cgroup2 at /sys/fs/cgroup/unified to check from outside"
    );
    let tag = std::process::id();
    let name = format!("rootless-{tag}");
    let path = warren::container::cgroup::under_caller(&format!("warren-{name}"));
    // Delegated: the container's leaf beside the supervisor, both in the unit.
    let unit = format!("warren-test-user-unit-{tag}");
    let code = as_nobody_in_cgroup2_unit(&unit, true, || {
        let Ok(cg) = warren::container::cgroup::Cgroup::create(&name, None, Some(&path)) else {
            return 1;
        };
        let leaf = Path::new(CG).join(&unit).join(format!("warren-{name}"));
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let split = own.lines().any(|l| l == format!("0::/{unit}/supervisor"));
        let placed = cg.dirs() == [leaf.clone()] && leaf.is_dir();
        if cg.destroy().is_err() || leaf.exists() {
            return 2;
        }
        match (placed, split) {
            (true, true) => 0,
            (false, _) => 3,
            (true, false) => 4,
        }
    });
    let host = unified.join(&unit);
    let _ = std::fs::remove_dir(host.join("supervisor"));
    let _ = std::fs::remove_dir(&host);
    assert_eq!(
        code, 0,
        "1: create failed, 2: destroy left it, 3: placed elsewhere, 4: no split, 100: setup"
    );
    assert!(!host.exists(), "{} left behind", host.display());
    // Not delegated: no cgroup without limits; with them, the hint that helps.
    let unit = format!("warren-test-root-unit-{tag}");
    let code = as_nobody_in_cgroup2_unit(&unit, false, || {
        use warren::container::cgroup::Cgroup;
        let Ok(plain) = Cgroup::create(&name, None, Some(&path)) else {
            return 1;
        };
        let limits = serde_json::from_value(json!({"pids": {"limit": 5}})).expect("resources");
        match Cgroup::create(&name, Some(&limits), Some(&path)) {
            _ if !plain.is_noop() => 2,
            Err(e)
                if e.to_string()
                    .contains("systemd-run --user --scope -p Delegate=yes") =>
            {
                0
            }
            Err(e) => {
                eprintln!("{e}");
                3
            }
            Ok(_) => 4,
        }
    });
    let host = unified.join(&unit);
    let _ = std::fs::remove_dir(&host);
    assert_eq!(
        code, 0,
        "1: create failed, 2: a cgroup without delegation, 3: wrong hint, 4: limits applied, 100: setup"
    );
    assert!(!host.exists(), "{} left behind", host.display());
}
