//! Rootfs planning against fixture configs: the mounts, their flags and order, the
//! devices a [`Plan`] makes. Nothing here reads the host (bind sources' kinds come from
//! a fixture), so these run unprivileged.

use super::plan::{Kind, Plan, SourceIsDir};
use super::{Cgroups, Inside, PathError};
use crate::container::ConfigError;
use crate::container::cgroup::{HierarchyView, MountView};
use libc::c_ulong;
use oci_spec::runtime::Spec;
use std::path::{Path, PathBuf};

/// runc's default config (`runc spec`) with `mounts` added.
fn config(extra_mounts: serde_json::Value, linux: serde_json::Value) -> Spec {
    let mut mounts = serde_json::json!([
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
    ]);
    if let (Some(m), Some(extra)) = (mounts.as_array_mut(), extra_mounts.as_array()) {
        m.extend(extra.iter().cloned());
    }
    let mut l = serde_json::json!({
        "namespaces": [{"type": "pid"}, {"type": "mount"}],
        "maskedPaths": ["/proc/kcore", "/sys/firmware"],
        "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
    });
    if let (Some(l), Some(extra)) = (l.as_object_mut(), linux.as_object()) {
        l.extend(extra.clone());
    }
    serde_json::from_value(serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "mounts": mounts,
        "linux": l
    }))
    .expect("fixture config")
}

/// Bind sources: directories unless their name ends in `.file`; `missing` is absent.
fn sources(p: &Path) -> std::io::Result<bool> {
    if p.ends_with("missing") {
        return Err(std::io::Error::from_raw_os_error(libc::ENOENT));
    }
    Ok(!p.to_string_lossy().ends_with(".file"))
}

/// The error planning `spec` (rootfs `/r`, no user namespace, no cgroups) gives.
fn refused(spec: &Spec) -> ConfigError {
    let is_dir: SourceIsDir = &sources;
    Plan::with_sources(
        spec,
        Path::new("/r"),
        Path::new("/b"),
        false,
        &Cgroups::default(),
        is_dir,
    )
    .unwrap_err()
}

fn plan(spec: &Spec, userns: bool, cgroups: &Cgroups) -> Plan {
    let is_dir: SourceIsDir = &sources;
    Plan::with_sources(
        spec,
        Path::new("/b/rootfs"),
        Path::new("/b"),
        userns,
        cgroups,
        is_dir,
    )
    .expect("plan")
}

fn targets(p: &Plan) -> Vec<String> {
    p.mounts
        .iter()
        .map(|m| m.target.rel.to_string_lossy().into_owned())
        .collect()
}

fn devices(p: &Plan) -> Vec<String> {
    p.devices
        .iter()
        .map(|d| d.target.rel.to_string_lossy().into_owned())
        .collect()
}

const NOSUID_NODEV_NOEXEC: c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

#[test]
fn a_default_config_mounts_in_config_order_with_runc_flags() {
    let p = plan(
        &config(serde_json::json!([]), serde_json::json!({})),
        false,
        &Cgroups::default(),
    );
    assert_eq!(
        targets(&p),
        [
            "proc",
            "dev",
            "dev/pts",
            "dev/shm",
            "dev/mqueue",
            "sys",
            "sys/fs/cgroup"
        ]
    );
    let kinds: Vec<Kind> = p.mounts.iter().map(|m| m.kind).collect();
    use Kind::*;
    assert_eq!(kinds, [Fs, Fs, Fs, Fs, Virtual, Virtual, Cgroup]);
    let m = &p.mounts;
    assert_eq!(m[0].flags, 0);
    assert_eq!(m[1].flags, libc::MS_NOSUID | libc::MS_STRICTATIME);
    assert_eq!(m[1].data.as_deref(), Some(c"mode=755,size=65536k"));
    assert_eq!(m[2].flags, libc::MS_NOSUID | libc::MS_NOEXEC);
    assert_eq!(
        m[2].data.as_deref(),
        Some(c"newinstance,ptmxmode=0666,mode=0620,gid=5")
    );
    assert_eq!(m[5].flags, NOSUID_NODEV_NOEXEC | libc::MS_RDONLY);
    assert_eq!(m[5].fallback.as_c_str(), c"/sys");
    assert_eq!(m[4].fallback.as_c_str(), c"/dev/mqueue");
    // Nothing is remounted that is not a bind.
    assert!(m.iter().all(|m| m.remount == 0 && !m.file));
    // The cgroup mount without a cgroup of its own: an empty read-only tmpfs.
    let cg = m[6].cgroup.as_ref().expect("cgroup op");
    assert!(cg.tmpfs && cg.parts.is_empty() && cg.links.is_empty());
    assert_eq!(cg.flags, NOSUID_NODEV_NOEXEC | libc::MS_RDONLY);
    // The default devices are made (not bound: no user namespace), with the /dev links.
    assert_eq!(
        devices(&p),
        [
            "dev/null",
            "dev/zero",
            "dev/full",
            "dev/random",
            "dev/urandom",
            "dev/tty"
        ]
    );
    assert!(!p.bind_devices && p.dev_links);
    assert_eq!(p.devices[0].mode, libc::S_IFCHR | 0o666);
    assert_eq!(p.devices[0].dev, libc::makedev(1, 3));
    assert_eq!(p.masked_path(1), "/sys/firmware");
    assert_eq!(p.readonly_path(0), "/proc/sys");
    assert_eq!(p.readonly_path(9), "/");
    // Propagation: rslave unless the config says otherwise, and then nothing to set after
    // pivot_root.
    assert_eq!(p.root_propagation, libc::MS_SLAVE | libc::MS_REC);
    assert!(!p.set_root_propagation && !p.readonly_root && !p.new_cgroupns);
    assert_eq!(p.rootfs.as_c_str(), c"/b/rootfs");
    assert_eq!(p.descriptions[1], "mount tmpfs on /dev (type tmpfs)");
}

#[test]
fn with_a_user_namespace_devices_are_bound_from_the_host() {
    let spec = config(serde_json::json!([]), serde_json::json!({}));
    let p = plan(&spec, true, &Cgroups::default());
    assert!(p.bind_devices);
    assert_eq!(p.devices.len(), 6);
    assert_eq!(p.devices[5].host.as_c_str(), c"/dev/tty");
    assert_eq!(targets(&p).len(), 7);
}

#[test]
fn bind_options_become_a_bind_then_a_remount() {
    let spec = config(
        serde_json::json!([
            {"destination": "/data", "type": "bind", "source": "data",
             "options": ["rbind", "ro", "nosuid", "rslave"]},
            {"destination": "/tree", "source": "/srv/tree",
             "options": ["rbind", "rro", "nodev"]},
            {"destination": "/conf.file", "type": "bind", "source": "/etc/app.file",
             "options": ["bind", "rw"]}
        ]),
        serde_json::json!({"rootfsPropagation": "private"}),
    );
    let p = plan(&spec, false, &Cgroups::default());
    let m = &p.mounts[7..];
    assert_eq!(targets(&p)[7..], ["data", "tree", "conf.file"]);
    assert!(m.iter().all(|m| m.kind == Kind::Bind));
    // Relative sources are the bundle's.
    assert_eq!(m[0].source.as_c_str(), c"/b/data");
    assert_eq!(m[0].flags, libc::MS_BIND | libc::MS_REC);
    assert_eq!(m[0].remount, libc::MS_RDONLY | libc::MS_NOSUID);
    assert_eq!(m[0].propagation, [libc::MS_SLAVE | libc::MS_REC]);
    assert!(!m[0].recursive_ro && !m[0].file);
    // rro: read-only, and every mount beneath too.
    assert_eq!(m[1].remount, libc::MS_RDONLY | libc::MS_NODEV);
    assert!(m[1].recursive_ro);
    // A file onto a file; `rw` leaves nothing to remount.
    assert!(m[2].file);
    assert_eq!((m[2].flags, m[2].remount), (libc::MS_BIND, 0));
    assert_eq!(
        p.descriptions[9],
        "mount /etc/app.file on /conf.file (type bind)"
    );
    assert_eq!(p.root_propagation, libc::MS_PRIVATE);
    assert!(p.set_root_propagation);
}

#[test]
fn a_file_bound_onto_dev_null_stands_in_for_the_device() {
    let spec = config(
        serde_json::json!([
            {"destination": "/dev/null", "type": "bind", "source": "/tmp/log.file",
             "options": ["bind"]}
        ]),
        serde_json::json!({}),
    );
    let p = plan(&spec, false, &Cgroups::default());
    assert_eq!(targets(&p).last().map(String::as_str), Some("dev/null"));
    assert!(p.mounts[7].file);
    assert!(!devices(&p).contains(&"dev/null".to_owned()));
    assert_eq!(devices(&p).len(), 5);
    // A config device at the same path is a conflict naming both.
    let spec = config(
        serde_json::json!([
            {"destination": "/dev/null", "type": "bind", "source": "/tmp/log.file",
             "options": ["bind"]}
        ]),
        serde_json::json!({"devices": [{"path": "/dev/null", "type": "c", "major": 1, "minor": 3}]}),
    );
    let e = refused(&spec);
    assert_eq!(e.field.as_deref(), Some("linux.devices[0].path"));
    assert!(e.reason.contains("mounts[7]"), "{e}");
}

#[test]
fn a_bound_dev_gets_no_devices_and_a_missing_source_names_its_field() {
    let spec = config(
        serde_json::json!([{"destination": "/dev", "type": "bind", "source": "/dev", "options": ["rbind"]}]),
        serde_json::json!({}),
    );
    let p = plan(&spec, false, &Cgroups::default());
    assert!(p.devices.is_empty() && !p.dev_links);
    let spec = config(
        serde_json::json!([{"destination": "/x", "type": "bind", "source": "/missing"}]),
        serde_json::json!({}),
    );
    let e = refused(&spec);
    assert_eq!(e.field.as_deref(), Some("mounts[7].source"));
}

fn v1_view() -> MountView {
    let h = |name: &str, data: &str| HierarchyView {
        name: name.into(),
        dir: PathBuf::from(format!("/sys/fs/cgroup/{name}/warren/c1")),
        fstype: "cgroup",
        data: data.into(),
    };
    MountView {
        hierarchies: vec![h("cpu,cpuacct", "cpu,cpuacct"), h("memory", "memory")],
        links: vec![("cpu".into(), "cpu,cpuacct".into())],
    }
}

#[test]
fn a_cgroup_mount_shows_only_the_containers_cgroup() {
    let spec = config(serde_json::json!([]), serde_json::json!({}));
    // Without a cgroup namespace: each hierarchy's own directory, bound, in a tmpfs.
    let cgroups = Cgroups {
        new_ns: false,
        view: v1_view(),
    };
    let p = plan(&spec, false, &cgroups);
    let cg = p.mounts[6].cgroup.as_ref().expect("cgroup op");
    assert!(cg.tmpfs);
    let parts: Vec<_> = cg
        .parts
        .iter()
        .map(|c| {
            (
                c.target.rel.to_string_lossy().into_owned(),
                c.dir.to_string_lossy().into_owned(),
            )
        })
        .collect();
    assert_eq!(
        parts,
        [
            (
                "sys/fs/cgroup/cpu,cpuacct".into(),
                "/sys/fs/cgroup/cpu,cpuacct/warren/c1".into()
            ),
            (
                "sys/fs/cgroup/memory".into(),
                "/sys/fs/cgroup/memory/warren/c1".to_owned()
            ),
        ]
    );
    assert_eq!(cg.parts[1].data.as_deref(), Some(c"memory"));
    assert_eq!(cg.links[0].0.rel.as_c_str(), c"sys/fs/cgroup/cpu");
    assert_eq!(cg.flags, NOSUID_NODEV_NOEXEC | libc::MS_RDONLY);
    // Hierarchies are described after the config's mounts, in order.
    assert_eq!(p.descriptions.len(), 9);
    assert_eq!(cg.parts[0].desc, 0);
    assert!(
        p.descriptions[8].contains("memory"),
        "{}",
        p.descriptions[8]
    );
    assert!(
        p.descriptions[7].ends_with("bound)"),
        "{}",
        p.descriptions[7]
    );

    // With one: mounted anew, and `rw` when the config says so.
    let spec = config(
        serde_json::json!([]),
        serde_json::json!({"namespaces": [{"type": "mount"}, {"type": "cgroup"}]}),
    );
    let mut spec_rw = spec.clone();
    let mut mounts = spec_rw.mounts().clone().unwrap_or_default();
    mounts[6].set_options(Some(vec!["nosuid".into(), "rw".into()]));
    spec_rw.set_mounts(Some(mounts));
    let cgroups = Cgroups {
        new_ns: true,
        view: v1_view(),
    };
    let p = plan(&spec_rw, false, &cgroups);
    assert!(p.new_cgroupns);
    let cg = p.mounts[6].cgroup.as_ref().expect("cgroup op");
    assert_eq!(cg.flags, NOSUID_NODEV_NOEXEC);
    assert!(
        p.descriptions[7].contains("cgroup namespace"),
        "{}",
        p.descriptions[7]
    );

    // A v2 host: the one hierarchy is the mount itself.
    let cgroups = Cgroups {
        new_ns: true,
        view: MountView {
            hierarchies: vec![HierarchyView {
                name: String::new(),
                dir: "/sys/fs/cgroup/warren/c1".into(),
                fstype: "cgroup2",
                data: String::new(),
            }],
            links: Vec::new(),
        },
    };
    let p = plan(&spec, false, &cgroups);
    let cg = p.mounts[6].cgroup.as_ref().expect("cgroup op");
    assert!(!cg.tmpfs);
    assert_eq!(cg.parts[0].target.rel.as_c_str(), c"sys/fs/cgroup");
    assert_eq!(cg.parts[0].fstype.as_c_str(), c"cgroup2");
    assert_eq!(cg.parts[0].data, None);
}

#[test]
fn sysctls_and_bad_paths_are_checked() {
    let spec = config(
        serde_json::json!([]),
        serde_json::json!({"sysctl": {"net.ipv4.ip_forward": "1"}}),
    );
    let p = plan(&spec, false, &Cgroups::default());
    assert_eq!(p.sysctl_path(0), "/proc/sys/net/ipv4/ip_forward");
    let spec = config(
        serde_json::json!([{"destination": "/a/../../etc", "type": "tmpfs", "source": "tmpfs"}]),
        serde_json::json!({}),
    );
    let e = refused(&spec);
    assert_eq!(e.field.as_deref(), Some("mounts[7].destination"));
    assert_eq!(
        Inside::new(Path::new("/a/../b")).unwrap_err(),
        PathError::DotDot(PathBuf::from("/a/../b"))
    );
}
