//! The OCI `config.json` for one container of an image: the image's defaults, the
//! caller's overrides, a user namespace onto the container's id block, and the usual
//! container hardening (default capabilities, seccomp, masked and read-only paths).

use super::config::{ContainerConfig, Network};
use crate::idmap::alloc::Reservation;
use crate::store::oci::ImageConfig;
use oci_spec::runtime::Spec;
use serde_json::{Value, json};
use std::io::Read;
use std::path::Path;

/// The capabilities a container's root keeps (the set Docker and podman give by default).
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What is wrong with a container's settings, naming the setting.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("image {0:?} has no Entrypoint or Cmd: give a command")]
    NoCommand(String),
    #[error("working directory {0:?} must be absolute")]
    Workdir(String),
    #[error("environment {0:?}: expected KEY=VALUE")]
    Env(String),
    #[error("{what} {name:?} is not in the image's /etc/{file}")]
    UnknownUser {
        what: &'static str,
        name: String,
        file: &'static str,
    },
    #[error("the generated config is invalid: {0}")]
    Generated(String),
}

/// Builds the spec.
pub(crate) fn build(
    name: &str,
    cfg: &ContainerConfig,
    image: &ImageConfig,
    ids: &Reservation,
    rootfs: &Path,
) -> Result<Spec, SpecError> {
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": process(cfg, image, rootfs)?,
        "root": {"path": rootfs, "readonly": cfg.read_only},
        "hostname": cfg.hostname.clone().unwrap_or_else(|| name.to_string()),
        "mounts": mounts(cfg),
        "linux": linux(name, cfg, ids)?,
    });
    serde_json::from_value(spec).map_err(|e| SpecError::Generated(e.to_string()))
}

/// The process: the command, user, working directory and environment the config asks,
/// else the image's; the default capabilities, no new privileges.
fn process(cfg: &ContainerConfig, image: &ImageConfig, rootfs: &Path) -> Result<Value, SpecError> {
    let args = if cfg.command.is_empty() {
        image.command()
    } else {
        cfg.command.clone()
    };
    if args.is_empty() {
        return Err(SpecError::NoCommand(cfg.image.clone()));
    }
    let (uid, gid) = match cfg.user.as_deref().or(image.user.as_deref()) {
        Some(user) => resolve_user(user, rootfs)?,
        None => (0, 0),
    };
    let cwd = cfg
        .workdir
        .clone()
        .or_else(|| image.working_dir.clone())
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(SpecError::Workdir(cwd));
    }
    let mut env = merge_env(&image.env, &cfg.env)?;
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    if cfg.terminal && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let caps: Value = json!(DEFAULT_CAPS);
    let mut process = json!({
        "terminal": cfg.terminal,
        "user": {"uid": uid, "gid": gid},
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {
            "bounding": caps, "effective": caps, "permitted": caps
        },
        "noNewPrivileges": true,
    });
    if let (true, Some((rows, cols))) = (cfg.terminal, cfg.console_size) {
        process["consoleSize"] = json!({"height": rows, "width": cols});
    }
    Ok(process)
}

/// The kernel filesystems every container gets, then the config's bind mounts.
fn mounts(cfg: &ContainerConfig) -> Vec<Value> {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
    ];
    // sysfs may only be mounted by the owner of the network namespace; with the host's
    // network, bind the host's /sys read-only instead (as rootless runtimes do), its
    // submounts too.
    // A joined namespace (a bridge network's too) is owned by the host's user namespace.
    mounts.push(match cfg.network {
        Network::Host | Network::Join(_) => {
            json!({"destination": "/sys", "type": "bind", "source": "/sys",
                                "options": ["rbind", "nosuid", "noexec", "nodev", "rro"]})
        }
        _ => json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                    "options": ["nosuid", "noexec", "nodev", "ro"]}),
    });
    // The container's own cgroup only, read-only, in its cgroup namespace (over the host's
    // tree that a bind of /sys holds).
    mounts.push(
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    );
    for m in &cfg.mounts {
        let mut options = vec!["rbind", "nosuid", "nodev"];
        if m.readonly {
            options.push("ro");
        }
        mounts.push(json!({"destination": m.destination, "type": "bind",
                           "source": m.source, "options": options}));
    }
    mounts
}

/// The namespaces (all new but the network's, which the config may share or join), the
/// id maps onto the reserved blocks, the masked paths, limits and seccomp.
fn linux(name: &str, cfg: &ContainerConfig, ids: &Reservation) -> Result<Value, SpecError> {
    let mut namespaces = vec![
        json!({"type": "user"}),
        json!({"type": "mount"}),
        json!({"type": "pid"}),
        json!({"type": "uts"}),
        json!({"type": "ipc"}),
        json!({"type": "cgroup"}),
    ];
    match &cfg.network {
        // A bridge network arrives as the namespace it pinned (runtime::network);
        // pasta and slirp4netns attach to a new one after the create.
        Network::None | Network::Bridge { .. } | Network::Pasta | Network::Slirp4netns => {
            namespaces.push(json!({"type": "network"}))
        }
        Network::Host => {}
        Network::Join(path) => namespaces.push(json!({"type": "network", "path": path})),
    }
    let mut linux = json!({
        "uidMappings": [{"containerID": 0, "hostID": ids.uids.start, "size": ids.uids.len}],
        "gidMappings": [{"containerID": 0, "hostID": ids.gids.start, "size": ids.gids.len}],
        "namespaces": namespaces,
        "maskedPaths": [
            "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
            "/sys/firmware", "/sys/devices/virtual/powercap"
        ],
        "readonlyPaths": [
            "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
        ],
        "rootfsPropagation": "private",
    });
    if let Some(resources) = &cfg.resources {
        linux["resources"] =
            serde_json::to_value(resources).map_err(|e| SpecError::Generated(e.to_string()))?;
    }
    linux["cgroupsPath"] = json!(crate::container::cgroup::under_caller(&format!(
        "warren-{name}"
    )));
    if !cfg.no_seccomp {
        let profile = crate::container::seccomp::default_profile();
        linux["seccomp"] =
            serde_json::to_value(profile).map_err(|e| SpecError::Generated(e.to_string()))?;
    }
    Ok(linux)
}

/// The image's environment with the caller's `KEY=VALUE`s replacing same-named keys.
fn merge_env(image: &[String], overrides: &[String]) -> Result<Vec<String>, SpecError> {
    let mut env: Vec<String> = image.to_vec();
    for kv in overrides {
        let Some((key, _)) = kv.split_once('=') else {
            return Err(SpecError::Env(kv.clone()));
        };
        env.retain(|e| e.split_once('=').map(|(k, _)| k) != Some(key));
        env.push(kv.clone());
    }
    Ok(env)
}

/// `UID[:GID]` or `NAME[:GROUP]`, names looked up in the image's /etc/passwd and
/// /etc/group, read beneath the rootfs so a symlink in the image cannot point outside.
fn resolve_user(user: &str, rootfs: &Path) -> Result<(u32, u32), SpecError> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = || read_in_root(rootfs, "etc/passwd");
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(uid) => {
            let gid = lookup(&passwd(), 2, |f| f[2] == u).and_then(|f| f[3].parse().ok());
            (uid, gid.unwrap_or(0))
        }
        Err(_) => {
            let unknown = || SpecError::UnknownUser {
                what: "user",
                name: u.to_string(),
                file: "passwd",
            };
            let fields = lookup(&passwd(), 3, |f| f[0] == u).ok_or_else(unknown)?;
            let uid = fields[2].parse().map_err(|_| unknown())?;
            (uid, fields[3].parse().unwrap_or(0))
        }
    };
    let gid = match g {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup(&read_in_root(rootfs, "etc/group"), 2, |f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| SpecError::UnknownUser {
                    what: "group",
                    name: g.to_string(),
                    file: "group",
                })?,
        },
    };
    Ok((uid, gid))
}

fn lookup(text: &str, min_field: usize, matches: impl Fn(&[&str]) -> bool) -> Option<Vec<String>> {
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > min_field && matches(f))
        .map(|f| f.into_iter().map(String::from).collect())
}

/// The image's `rel` (a small text file such as etc/passwd), or "" when it is missing or
/// not a regular file: a FIFO or device put there by the image can neither block nor
/// flood us.
fn read_in_root(rootfs: &Path, rel: &str) -> String {
    const MAX: u64 = 1 << 20;
    let read = || -> std::io::Result<String> {
        let root = std::fs::File::open(rootfs)?;
        let fd = crate::sys::openat2(
            std::os::fd::AsFd::as_fd(&root),
            Path::new(rel),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOFOLLOW,
            0,
            crate::sys::RESOLVE_IN_ROOT,
        )?;
        let file = std::fs::File::from(fd);
        if !file.metadata()?.is_file() {
            return Ok(String::new());
        }
        let mut text = String::new();
        file.take(MAX).read_to_string(&mut text)?;
        Ok(text)
    };
    read().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idmap::IdRange;

    fn ids() -> Reservation {
        let r = IdRange::new(0x30000, 0x10000).unwrap();
        Reservation {
            name: "web".into(),
            uids: r,
            gids: r,
        }
    }

    #[test]
    fn image_defaults_and_overrides() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nwww:x:33:34::/:/bin/sh\n",
        )
        .unwrap();
        let image = ImageConfig {
            cmd: vec!["/bin/sh".into()],
            env: vec!["PATH=/bin".into(), "A=1".into()],
            user: Some("www".into()),
            ..ImageConfig::default()
        };
        let cfg = ContainerConfig {
            image: "busybox".into(),
            env: vec!["A=2".into()],
            ..ContainerConfig::default()
        };
        let spec = build("web", &cfg, &image, &ids(), dir.path()).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &vec!["/bin/sh".to_string()]);
        assert_eq!(
            p.env().as_ref().unwrap(),
            &vec!["PATH=/bin".to_string(), "A=2".to_string()]
        );
        assert_eq!((p.user().uid(), p.user().gid()), (33, 34));
        let linux = spec.linux().as_ref().unwrap();
        let map = &linux.uid_mappings().as_ref().unwrap()[0];
        assert_eq!(
            (map.container_id(), map.host_id(), map.size()),
            (0, 0x30000, 0x10000)
        );
        assert!(linux.seccomp().is_some());
        assert_eq!(spec.hostname().as_deref(), Some("web"));
        // Its own cgroup, read-only, in a cgroup namespace of its own.
        let cgroup = spec
            .mounts()
            .iter()
            .flatten()
            .find(|m| m.destination() == Path::new("/sys/fs/cgroup"))
            .expect("a cgroup mount");
        assert_eq!(cgroup.typ().as_deref(), Some("cgroup"));
        assert!(cgroup.options().iter().flatten().any(|o| o == "ro"));
        assert!(linux.namespaces().iter().flatten().any(|n| n.typ()
            == oci_spec::runtime::LinuxNamespaceType::Cgroup
            && n.path().is_none()));
    }

    #[test]
    fn a_terminal_gets_its_size_before_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let image = ImageConfig {
            cmd: vec!["/bin/sh".into()],
            ..ImageConfig::default()
        };
        let mut cfg = ContainerConfig {
            image: "busybox".into(),
            terminal: true,
            console_size: Some((33, 77)),
            ..ContainerConfig::default()
        };
        let spec = build("web", &cfg, &image, &ids(), dir.path()).unwrap();
        let size = spec.process().as_ref().unwrap().console_size().unwrap();
        assert_eq!((size.height(), size.width()), (33, 77));
        // No pty, no size.
        cfg.terminal = false;
        let spec = build("web", &cfg, &image, &ids(), dir.path()).unwrap();
        assert!(spec.process().as_ref().unwrap().console_size().is_none());
    }

    #[test]
    fn bad_input_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ContainerConfig {
            image: "empty".into(),
            ..ContainerConfig::default()
        };
        let err = build("x", &cfg, &ImageConfig::default(), &ids(), dir.path()).unwrap_err();
        assert!(err.to_string().contains("no Entrypoint or Cmd"), "{err}");
        let cfg = ContainerConfig {
            image: "busybox".into(),
            command: vec!["true".into()],
            user: Some("nobody".into()),
            ..ContainerConfig::default()
        };
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        nix::unistd::mkfifo(
            &dir.path().join("etc/passwd"),
            nix::sys::stat::Mode::S_IRWXU,
        )
        .unwrap();
        // A FIFO where /etc/passwd should be neither blocks nor satisfies the lookup.
        let err = build("x", &cfg, &ImageConfig::default(), &ids(), dir.path()).unwrap_err();
        assert!(err.to_string().contains("nobody"), "{err}");
    }
}
