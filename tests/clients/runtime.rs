//! The rootless-podman fixes of issue 16 on the runc-compatible CLI itself (no client):
//! the runtime run as uid 0 of an unprivileged user namespace (`unshare --map-root-user`,
//! what rootless podman does) with `XDG_RUNTIME_DIR` set, compared with runc.

use crate::common::{self, as_rootless, bin, ensure_rootless_user, scratch};
use crate::rootfs;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// What the container sees of its devices: each works, and is a bind of the host's
/// (a mount at its path), not a node made by mknod (EPERM in a user namespace).
const DEVICES: &str = "for d in null zero tty; do stat -c '%n %t:%T' /dev/$d; \
                       grep -c \" /dev/$d \" /proc/self/mountinfo; done; \
                       echo x > /dev/null && head -c 3 /dev/zero | wc -c";

/// Runs `runtime run` of a bundle as the rootless user inside `podman unshare` (its user
/// namespace: own uid as 0, the subuids above; no user namespace in the config, as
/// podman writes it), with a private XDG_RUNTIME_DIR; returns (exit code, stdout, stderr).
fn run_in_userns(runtime: &Path, dir: &Path, id: &str) -> (i32, String, String) {
    let (uid, gid) = ensure_rootless_user();
    // Short: podman refuses a runroot over 50 characters.
    let xdg = dir.join(id.rsplit('-').next().unwrap_or(id));
    std::fs::create_dir_all(&xdg).expect("mkdir xdg");
    std::os::unix::fs::chown(&xdg, Some(uid), Some(gid)).expect("chown xdg");
    let _pause = PauseProcess(xdg.join("libpod/tmp/pause.pid"));
    let out = common::run(
        as_rootless(&common::require_tool("podman", "podman"))
            .arg("--root")
            .arg(xdg.join("s"))
            .arg("--runroot")
            .arg(xdg.join("r"))
            .args(["--storage-driver", "vfs", "unshare", "--"])
            .arg(runtime)
            .args(["run", "-b"])
            .arg(dir.join("bundle"))
            .arg(id)
            .env("XDG_RUNTIME_DIR", &xdg),
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Rootless podman's pause process (it keeps the user namespace): killed by pid at the end.
struct PauseProcess(std::path::PathBuf);

impl Drop for PauseProcess {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[test]
fn runc_cli_in_a_user_namespace_keeps_state_under_xdg_runtime_dir_and_binds_devices() {
    if !common::require_root("runs podman, containerd and docker daemons as root") {
        return;
    }
    let runc = common::require_tool("runc", "runc");
    let (uid, gid) = ensure_rootless_user();
    let dir = scratch("cl-ns");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut c = rootfs::config(&["sh", "-c", DEVICES]);
    // The devices podman --privileged lists: defaults among them (a node made twice).
    c["linux"]["devices"] = json!([
        {"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 438},
        {"path": "/dev/zero", "type": "c", "major": 1, "minor": 5, "fileMode": 438}
    ]);
    let bundle = dir.path().join("bundle");
    std::fs::create_dir_all(&bundle).expect("mkdir bundle");
    rootfs::bundle(&bundle, &c);
    rootfs::chown_tree(&bundle, uid, gid);
    let id = format!("userns-{}", std::process::id());
    let (rc_runc, out_runc, err_runc) = run_in_userns(&runc, dir.path(), &format!("{id}-runc"));
    assert_eq!(rc_runc, 0, "runc itself failed: {err_runc}");
    let (rc, out, err) = run_in_userns(&bin("warren"), dir.path(), &format!("{id}-warren"));
    assert_eq!((rc, out.as_str()), (0, out_runc.as_str()), "warren: {err}");
    assert!(out.contains("/dev/null 1:3\n1\n"), "{out}");
    // The state went where runc's went: $XDG_RUNTIME_DIR/warren (not /run/warren).
    let xdg = dir.path().join("warren");
    assert!(xdg.join("warren").is_dir(), "no {}/warren", xdg.display());
    assert!(
        !xdg.join(format!("warren/{id}-warren")).exists(),
        "state left behind"
    );
}

/// podman --userns=auto hands its storage directory (0700) to the container's ids: the
/// rootfs beneath it is reachable only once the id maps exist. runc looks it up as
/// mapped root; warren too when the early lookup is refused (the race was `rootopen:
/// EACCES` in about one run of three under load).
#[test]
fn runc_cli_finds_a_rootfs_only_the_mapped_ids_may_reach() {
    if !common::require_root("runs podman, containerd and docker daemons as root") {
        return;
    }
    let runc = common::require_tool("runc", "runc");
    const HOST_ID: u32 = 0x3000_0000;
    let dir = scratch("cl-mapped");
    let store = dir.path().join("store");
    std::fs::create_dir(&store).expect("mkdir store");
    let mut c = rootfs::with_userns(
        rootfs::config(&["sh", "-c", "id -u; stat -c %u /"]),
        HOST_ID,
        HOST_ID,
        1024,
    );
    // No cgroup namespace, as podman on cgroup v1 (with one, the race is rarely lost).
    c["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces")
        .retain(|n| n["type"] != "cgroup");
    let bundle = store.join("bundle");
    std::fs::create_dir(&bundle).expect("mkdir bundle");
    rootfs::bundle(&bundle, &c);
    rootfs::chown_tree(&bundle.join("rootfs"), HOST_ID, HOST_ID);
    std::os::unix::fs::chown(&store, Some(HOST_ID), Some(HOST_ID)).expect("chown store");
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let state = dir.path().join("state");
    let run = |runtime: &Path, id: &str| {
        common::run(
            std::process::Command::new(runtime)
                .arg("--root")
                .arg(&state)
                .args(["run", "-b"])
                .arg(&bundle)
                .arg(id),
        )
    };
    let reference = run(&runc, "mapped-runc");
    assert!(reference.status.success(), "runc: {reference:?}");
    // Runs four at a time: the lookup loses the race under load.
    let warren = bin("warren");
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..4)
            .map(|t| {
                let (run, warren, reference) = (&run, &warren, &reference);
                s.spawn(move || {
                    for i in 0..4 {
                        let out = run(warren, &format!("mapped-warren-{t}-{i}"));
                        assert_eq!(
                            (out.status.code(), String::from_utf8_lossy(&out.stdout)),
                            (Some(0), String::from_utf8_lossy(&reference.stdout)),
                            "run {t}-{i}: {}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                })
            })
            .collect();
        for r in runs {
            r.join().expect("a run failed");
        }
    });
}
