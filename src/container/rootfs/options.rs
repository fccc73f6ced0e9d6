//! Mount options of the config (`ro`, `nosuid`, `rbind`, `rslave`...) as mount(2) flags,
//! like runc reads them.

use libc::c_ulong;

/// Mount propagation option name to its flag.
pub fn propagation_flag(name: &str) -> Option<c_ulong> {
    Some(match name {
        "private" => libc::MS_PRIVATE,
        "rprivate" => libc::MS_PRIVATE | libc::MS_REC,
        "shared" => libc::MS_SHARED,
        "rshared" => libc::MS_SHARED | libc::MS_REC,
        "slave" => libc::MS_SLAVE,
        "rslave" => libc::MS_SLAVE | libc::MS_REC,
        "unbindable" => libc::MS_UNBINDABLE,
        "runbindable" => libc::MS_UNBINDABLE | libc::MS_REC,
        _ => return None,
    })
}

/// Splits mount options into flags, propagation and filesystem data (like runc).
pub(super) fn parse_options(opts: &[String]) -> (c_ulong, c_ulong, Vec<c_ulong>, Vec<String>) {
    let (mut set, mut clear, mut prop, mut data) = (0, 0, Vec::new(), Vec::new());
    for o in opts {
        let (s, c): (c_ulong, c_ulong) = match o.as_str() {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "remount" => (libc::MS_REMOUNT, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "atime" => (0, libc::MS_NOATIME),
            "noatime" => (libc::MS_NOATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "bind" => (libc::MS_BIND, 0),
            // Read-only all the way down (the submounts of an rbind too): see `recursive_ro`.
            "rro" => (libc::MS_RDONLY, 0),
            "rbind" => (libc::MS_BIND | libc::MS_REC, 0),
            "tmpcopyup" | "idmap" | "ridmap" | "" => (0, 0),
            other => {
                if let Some(p) = propagation_flag(other) {
                    prop.push(p);
                } else {
                    data.push(other.to_owned());
                }
                (0, 0)
            }
        };
        set |= s;
        clear |= c;
    }
    (set & !clear, clear, prop, data)
}
