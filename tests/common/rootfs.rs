//! A busybox rootfs and OCI bundle for runtime tests: /bin/busybox from Debian's
//! busybox-static, applet symlinks, /etc/passwd and /etc/group, and a runc-like config.
#![allow(dead_code)]

use serde_json::{Value, json};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ls", "id", "hostname", "true", "false", "sleep", "mount", "ps", "grep",
    "head", "tty", "ulimit", "touch", "mkdir", "kill", "wc", "stat", "env", "test", "readlink",
    "printf", "wait", "trap", "ip",
];

/// Creates `dir` as a busybox rootfs.
pub fn busybox_rootfs(dir: &Path) {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "/bin/busybox is missing: apt-get install -y busybox-static"
    );
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root"] {
        std::fs::create_dir_all(dir.join(d)).expect("create rootfs dir");
    }
    std::fs::copy(busybox, dir.join("bin/busybox")).expect("copy busybox");
    for a in APPLETS {
        let _ = symlink("busybox", dir.join("bin").join(a));
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    )
    .expect("write passwd");
    std::fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").expect("write group");
}

/// The config `runc spec` writes (rootful), running `args`.
pub fn config(args: &[&str]) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "inheritable": ["CAP_KILL"],
                "ambient": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "warren-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

/// Adds a user namespace mapping container ids 0..size to host ids from `host`.
pub fn with_userns(mut c: Value, uid_host: u32, gid_host: u32, size: u32) -> Value {
    c["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces")
        .push(json!({"type": "user"}));
    c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": uid_host, "size": size}]);
    c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": gid_host, "size": size}]);
    c
}

/// The rootless config (`runc spec --rootless`-like): own uid -> 0 plus a subuid block.
pub fn rootless(c: Value, uid: u32, gid: u32, sub: (u32, u32)) -> Value {
    let mut c = with_userns(c, uid, gid, 1);
    c["linux"]["uidMappings"]
        .as_array_mut()
        .expect("uid maps")
        .push(json!({"containerID": 1, "hostID": sub.0, "size": 65536}));
    c["linux"]["gidMappings"]
        .as_array_mut()
        .expect("gid maps")
        .push(json!({"containerID": 1, "hostID": sub.0, "size": 65536}));
    // No network namespace, like runc's rootless spec (sysfs then falls back to a bind).
    c["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces")
        .retain(|n| n["type"] != "network");
    c
}

/// Writes a bundle (rootfs + config.json) into `dir` and returns its path.
pub fn bundle(dir: &Path, config: &Value) -> PathBuf {
    let rootfs = dir.join("rootfs");
    if !rootfs.join("bin/busybox").exists() {
        busybox_rootfs(&rootfs);
    }
    write_config(dir, config);
    dir.to_owned()
}

pub fn write_config(dir: &Path, config: &Value) {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(config).expect("serialize config"),
    )
    .expect("write config.json");
}

/// Recursively lchowns `path` to `uid`:`gid`.
pub fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).expect("lchown");
    if path.is_dir() && !path.is_symlink() {
        for e in std::fs::read_dir(path).expect("read dir") {
            chown_tree(&e.expect("dir entry").path(), uid, gid);
        }
    }
}
