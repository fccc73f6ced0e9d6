//! Escape 1: the runtime binary reachable from the container (a CVE-2019-5736 variant).
//!
//! Container processes are clones of the runtime until their execve: a container process
//! that gets hold of `/proc/<pid>/exe` of one (or of a process that exec'd
//! `#!/proc/self/exe`, which this kernel refuses when the binary lies outside the
//! container's mounts) can reopen the file for writing once ETXTBSY clears, and the next
//! `warren` on the host runs its payload. Each probe attacks a scratch copy of warren
//! (never the build output) and asserts its bytes are unchanged and the write failed.

use crate::common::{self, as_rootless, ok, run, scratch};
use crate::rootfs;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The container side of the attack, exec'd into a created container whose init (a
/// clone of the runtime, waiting for `start`) is pid 1: holds /proc/1/exe open in a
/// helper (opened before it returns: a hook's init execs right after), waits in the
/// background for the init's execve (so ETXTBSY clears) and tries, for two seconds, to
/// append to the held file. Writes what /proc/1/exe was to /held and the outcome to
/// /result. CAP_SYS_PTRACE (given to the container) lets it past the non-dumpable init.
const RACER: &str = r#"#!/bin/sh
exec 3</proc/1/exe
sleep 1000 </dev/null >/dev/null 2>&1 &
h=$!
exec 3<&-
readlink /proc/1/exe >/held.tmp 2>&1; mv /held.tmp /held
(
i=0
while [ "$(readlink /proc/1/exe)" != /bin/busybox ] && [ $i -lt 3000 ]; do
  sleep 0.01; i=$((i+1))
done
j=0
while [ $j -lt 200 ]; do
  if echo PAYLOAD 2>/dev/null >>/proc/$h/fd/3; then echo WROTE >/result; kill $h; exit 0; fi
  sleep 0.01; j=$((j+1))
done
echo "DENIED $(echo PAYLOAD 2>&1 >>/proc/$h/fd/3)" >/result
kill $h
) </dev/null >/dev/null 2>&1 &
"#;

/// The host side, run as the binary's owner (root, or the rootless user, who stands
/// for a container root mapped to it): starts `warren exec`, holds its /proc/PID/exe
/// once it re-executed itself (what its container clones show; an old build never
/// does, and is held after 5 s), waits for it to exit and appends to the held file.
const HOLDER: &str = r#"W=$1; ROOT=$2; ID=$3
"$W" --root "$ROOT" exec "$ID" -- sleep 6 & p=$!
self=$(readlink /proc/$$/exe)
i=0
while [ $i -lt 500 ]; do
  case "$(readlink /proc/$p/exe)" in "$W"|"$self"|"") ;; *) break;; esac
  sleep 0.01; i=$((i+1))
done
sleep 1000 3</proc/$p/exe & h=$!
wait $p
if echo PAYLOAD 2>/dev/null >>/proc/$h/fd/3; then echo WROTE; else echo "DENIED $(echo x 2>&1 >>/proc/$h/fd/3)"; fi
kill $h
"#;

/// The warren binary the probes attack copies of: the build's, or `WARREN_PROBE_BIN`
/// (to show a probe catches an older build).
pub fn probed_warren() -> PathBuf {
    std::env::var_os("WARREN_PROBE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::bin("warren"))
}

/// A copy of the warren binary at `dir/warren`, mode 0755, owned by `owner`.
pub fn scratch_warren(dir: &Path, owner: Option<(u32, u32)>) -> PathBuf {
    let path = dir.join("warren");
    std::fs::copy(probed_warren(), &path).expect("copy warren");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown warren");
    }
    path
}

/// A bundle with /bin/racer in a writable rootfs, running `args`, with CAP_SYS_PTRACE.
fn attack_bundle(dir: &Path, args: &[&str], rootless: Option<(u32, u32)>) -> PathBuf {
    let rootfs_dir = dir.join("rootfs");
    rootfs::busybox_rootfs(&rootfs_dir);
    let _ = std::os::unix::fs::symlink("busybox", rootfs_dir.join("bin/mv"));
    let racer = rootfs_dir.join("bin/racer");
    std::fs::write(&racer, RACER).expect("write racer");
    std::fs::set_permissions(&racer, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut config = rootfs::config(args);
    config["root"]["readonly"] = json!(false);
    for set in ["bounding", "effective", "permitted"] {
        config["process"]["capabilities"][set]
            .as_array_mut()
            .expect("capability set")
            .push(json!("CAP_SYS_PTRACE"));
    }
    if let Some((uid, gid)) = rootless {
        config = rootfs::rootless(config, uid, gid, common::ROOTLESS_SUBIDS);
        rootfs::chown_tree(dir, uid, gid);
    }
    rootfs::bundle(dir, &config)
}

/// Waits (bounded) for `path` to be written.
fn wait_file(path: &Path) -> String {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.is_empty() {
                return s;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the racer wrote no {}", path.display());
}

/// A scratch dir the rootless user can enter, with a warren copy (the user's own when
/// rootless: a container root mapped to the user could write it, so warren must seal
/// it), a state dir and a bundle running `args`.
struct Setup {
    dir: tempfile::TempDir,
    warren: PathBuf,
    original: Vec<u8>,
    state: PathBuf,
    bundle: PathBuf,
    user: Option<(u32, u32)>,
}

impl Setup {
    fn new(name: &str, args: &[&str], user: Option<(u32, u32)>) -> Setup {
        let dir = scratch(name);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let warren = scratch_warren(dir.path(), user);
        let original = std::fs::read(&warren).expect("read warren");
        let bundle_dir = dir.path().join("bundle");
        std::fs::create_dir(&bundle_dir).expect("mkdir bundle");
        let bundle = attack_bundle(&bundle_dir, args, user);
        let state = dir.path().join("state");
        std::fs::create_dir(&state).expect("mkdir state");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&state, Some(uid), Some(gid)).expect("chown state");
        }
        Setup {
            dir,
            warren,
            original,
            state,
            bundle,
            user,
        }
    }

    fn as_user(&self, program: &Path) -> Command {
        match self.user {
            Some(_) => as_rootless(program),
            None => Command::new(program),
        }
    }

    fn warren(&self, args: &[&str]) -> Command {
        let mut c = self.as_user(&self.warren);
        c.arg("--root").arg(&self.state).args(args);
        c
    }

    /// Runs warren with `args` to success, its stdio not captured (a container process
    /// it leaves running would keep a captured pipe open).
    fn detached(&self, args: &[&str]) {
        let log = self.dir.path().join("warren.log");
        let file = std::fs::File::create(&log).expect("create log");
        let status = self
            .warren(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .status()
            .expect("run warren");
        assert!(
            status.success(),
            "warren {args:?}: {status}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn assert_unchanged(&self, what: &str) {
        assert!(
            std::fs::read(&self.warren).expect("read warren") == self.original,
            "the scratch warren binary {} changed: {what}",
            self.warren.display()
        );
        let _ = &self.dir;
    }
}

/// A container given CAP_SYS_PTRACE (so the non-dumpable init does not stop it) holds
/// the exe of its not yet started init, a clone of the runtime, and writes it once the
/// init exec'd: with the host binary behind it, host root's next `warren` would run the
/// payload.
#[test]
fn a_container_cannot_overwrite_the_runtime_through_its_init() {
    if !common::require_root("runs rootful containers") {
        return;
    }
    let s = Setup::new("exe-init", &["sleep", "5"], None);
    let id = format!("exe-init-{}", std::process::id());
    let bundle = s.bundle.to_str().unwrap().to_owned();
    s.detached(&["create", "--bundle", &bundle, &id]);
    s.detached(&["exec", "-d", &id, "--", "/bin/racer"]);
    let held = wait_file(&s.bundle.join("rootfs/held"));
    ok(&mut s.warren(&["start", &id]));
    let outcome = wait_file(&s.bundle.join("rootfs/result"));
    let _ = run(&mut s.warren(&["delete", "--force", &id]));
    assert!(
        !outcome.starts_with("WROTE"),
        "a container process overwrote the runtime binary through /proc/1/exe ({held})"
    );
    s.assert_unchanged(&outcome);
    assert!(
        outcome.contains("Read-only file system"),
        "unexpected outcome: {outcome} (init exe {held})"
    );
}

/// `run` skips sealing the binary only when nothing can reach its init before the
/// workload's execve. A startContainer hook runs inside the container while the init
/// (a clone of the runtime) waits for it: the hook leaves the racer behind, holding
/// /proc/1/exe, so this `run` must still come from a sealed binary.
#[test]
fn a_start_container_hook_cannot_overwrite_the_runtime_through_run() {
    if !common::require_root("runs rootful containers") {
        return;
    }
    let s = Setup::new("exe-run-hook", &["sleep", "5"], None);
    let config_path = s.bundle.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).expect("read config")).expect("json");
    config["hooks"] = json!({"startContainer": [{"path": "/bin/racer",
        "args": ["racer"]}]});
    std::fs::write(&config_path, config.to_string()).expect("write config");
    let id = format!("exe-run-hook-{}", std::process::id());
    let bundle = s.bundle.to_str().unwrap().to_owned();
    s.detached(&["run", "-d", "--bundle", &bundle, &id]);
    let held = wait_file(&s.bundle.join("rootfs/held"));
    let outcome = wait_file(&s.bundle.join("rootfs/result"));
    let _ = run(&mut s.warren(&["delete", "--force", &id]));
    s.assert_unchanged(&outcome);
    assert!(
        outcome.contains("Read-only file system"),
        "unexpected outcome: {outcome} (init exe {held})"
    );
}

/// The runtime process that clones container processes (`warren exec`'s, here) runs
/// from a binary its owner cannot reopen for writing through /proc/PID/exe once
/// ETXTBSY has cleared: a read-only mount as root, a sealed memfd for a rootless user
/// whose own binary it is.
fn runtime_exe_is_not_writable(name: &str, user: Option<(u32, u32)>) {
    let s = Setup::new(name, &["sleep", "100"], user);
    let id = format!("{name}-{}", std::process::id());
    let bundle = s.bundle.to_str().unwrap().to_owned();
    s.detached(&["run", "-d", "--bundle", &bundle, &id]);
    let script = s.dir.path().join("holder.sh");
    std::fs::write(&script, HOLDER).expect("write holder");
    let out = ok(s
        .as_user(Path::new("/bin/sh"))
        .arg(&script)
        .arg(&s.warren)
        .arg(&s.state)
        .arg(&id));
    let _ = run(&mut s.warren(&["delete", "--force", &id]));
    assert!(
        out.starts_with("DENIED"),
        "the runtime's exe was written through /proc/PID/exe: {out}"
    );
    s.assert_unchanged(&out);
}

#[test]
fn the_runtime_exe_is_not_writable_through_proc_rootful() {
    if !common::require_root("runs rootful containers") {
        return;
    }
    runtime_exe_is_not_writable("exe-proc", None);
}

#[test]
fn the_runtime_exe_is_not_writable_through_proc_rootless() {
    if !crate::common::require_root(
        "switches to the rootless test user (setpriv) and writes its /etc/subuid lines",
    ) {
        return;
    }
    let ids = common::ensure_rootless_user();
    runtime_exe_is_not_writable("exe-proc-rootless", Some(ids));
}

/// Until the workload's execve the container's init is a clone of the runtime: it must
/// be non-dumpable, so a container process can neither read its exe link nor open its
/// memory. A startContainer hook (run in the container by the init just before the
/// workload) looks at its parent.
#[test]
fn the_init_is_not_dumpable_before_exec() {
    if !common::require_root("runs rootful containers") {
        return;
    }
    let dir = scratch("exe-dumpable");
    let mut config = rootfs::config(&["true"]);
    config["root"]["readonly"] = json!(false);
    config["hooks"] = json!({"startContainer": [{
        "path": "/bin/sh",
        "args": ["sh", "-c",
                 "readlink /proc/$PPID/exe >/r 2>&1; echo \"exe=$?\" >>/r; \
                  head -c1 /proc/$PPID/mem >/dev/null 2>>/r; echo \"mem=$?\" >>/r"]
    }]});
    let bundle = rootfs::bundle(dir.path(), &config);
    let state = dir.path().join("state");
    let id = format!("exe-dump-{}", std::process::id());
    ok(Command::new(common::bin("warren"))
        .arg("--root")
        .arg(&state)
        .args(["run", "--bundle", bundle.to_str().unwrap(), &id]));
    let r = std::fs::read_to_string(bundle.join("rootfs/r")).expect("hook output");
    assert!(
        r.contains("exe=1") && r.contains("mem=1"),
        "the init's exe or memory was readable before exec:\n{r}"
    );
}
