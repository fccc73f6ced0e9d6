//! The policy: the built-in default profile, as a table of data, and the checked parse of
//! a config.json `linux.seccomp`.

use std::str::FromStr;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, LinuxSyscall,
};

use super::{SeccompError, invalid};

/// Parses a `linux.seccomp` JSON object, checking the string-valued enums first so a typo is
/// reported by field (`linux.seccomp.syscalls[3].action: unknown action "X"`) rather than by
/// serde's line and column. Use it on the raw `linux.seccomp` value of a config.json.
pub fn parse_profile(value: &serde_json::Value) -> Result<LinuxSeccomp, SeccompError> {
    let check =
        |v: Option<&serde_json::Value>, field: String, what: &str, ok: &dyn Fn(&str) -> bool| {
            match v {
                None => Ok(()),
                Some(serde_json::Value::String(s)) if ok(s) => Ok(()),
                Some(serde_json::Value::String(s)) => {
                    Err(invalid(field, format!("unknown {what} {s:?}")))
                }
                Some(other) => Err(invalid(field, format!("expected a string, found {other}"))),
            }
        };
    let is_action = |s: &str| LinuxSeccompAction::from_str(s).is_ok();
    let is_op = |s: &str| LinuxSeccompOperator::from_str(s).is_ok();
    let is_arch = |s: &str| Arch::from_str(s).is_ok();
    let is_flag = |s: &str| LinuxSeccompFilterFlag::from_str(s).is_ok();
    let root = "linux.seccomp";
    if value.get("defaultAction").is_none() {
        return Err(invalid(format!("{root}.defaultAction"), "missing"));
    }
    check(
        value.get("defaultAction"),
        format!("{root}.defaultAction"),
        "action",
        &is_action,
    )?;
    let items = |key: &str| {
        value
            .get(key)
            .and_then(|v| v.as_array())
            .map(Vec::as_slice)
            .unwrap_or_default()
    };
    for (i, a) in items("architectures").iter().enumerate() {
        check(
            Some(a),
            format!("{root}.architectures[{i}]"),
            "architecture",
            &is_arch,
        )?;
    }
    for (i, f) in items("flags").iter().enumerate() {
        check(Some(f), format!("{root}.flags[{i}]"), "flag", &is_flag)?;
    }
    for (i, s) in items("syscalls").iter().enumerate() {
        let field = format!("{root}.syscalls[{i}]");
        if s.get("action").is_none() {
            return Err(invalid(format!("{field}.action"), "missing"));
        }
        check(
            s.get("action"),
            format!("{field}.action"),
            "action",
            &is_action,
        )?;
        let args = s.get("args").and_then(|a| a.as_array());
        for (j, arg) in args
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            check(
                arg.get("op"),
                format!("{field}.args[{j}].op"),
                "operator",
                &is_op,
            )?;
            for key in ["index", "value", "valueTwo"] {
                if let Some(v) = arg.get(key).filter(|v| !v.is_u64() && !v.is_null()) {
                    return Err(invalid(
                        format!("{field}.args[{j}].{key}"),
                        format!("expected a non-negative integer, found {v}"),
                    ));
                }
            }
        }
    }
    Ok(serde_json::from_value(value.clone())?)
}

/// Syscalls the default profile allows without conditions (Docker's and podman's default
/// allowlist, minus what needs capabilities a container does not get by default). Names
/// missing on this architecture are skipped at compile time.
const DEFAULT_ALLOW: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "chroot",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    // arm and aarch64 specifics
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "breakpoint",
    "cacheflush",
    "set_tls",
    "sync_file_range2",
];

/// CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET: Docker's mask.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7e02_0000;
/// clone's flags argument (s390x swaps clone's first two arguments).
const CLONE_FLAGS_ARG: usize = if cfg!(target_arch = "s390x") { 1 } else { 0 };
/// The address family `socket` may not create: AF_VSOCK, which reaches host services.
const AF_VSOCK: u64 = 40;

/// One rule of the default profile: `names` get `action` (with `errno`) when every
/// `(index, value, valueTwo, op)` argument condition holds.
struct Rule {
    names: &'static [&'static str],
    action: LinuxSeccompAction,
    errno: Option<u32>,
    args: &'static [(usize, u64, u64, LinuxSeccompOperator)],
}

use LinuxSeccompAction::{ScmpActAllow as ALLOW, ScmpActErrno as ERRNO};
use LinuxSeccompOperator::{ScmpCmpEq as EQ, ScmpCmpMaskedEq as MASKED_EQ, ScmpCmpNe as NE};

const fn allow(
    names: &'static [&'static str],
    args: &'static [(usize, u64, u64, LinuxSeccompOperator)],
) -> Rule {
    Rule {
        names,
        action: ALLOW,
        errno: None,
        args,
    }
}

/// The default profile's rules, in order (the default action is ERRNO(EPERM)).
const DEFAULT_RULES: &[Rule] = &[
    allow(DEFAULT_ALLOW, &[]),
    // personality: only the harmless personas Docker allows (query, linux, 32-bit uname).
    allow(&["personality"], &[(0, 0x0, 0, EQ)]),
    allow(&["personality"], &[(0, 0x8, 0, EQ)]),
    allow(&["personality"], &[(0, 0x20000, 0, EQ)]),
    allow(&["personality"], &[(0, 0x20008, 0, EQ)]),
    allow(&["personality"], &[(0, 0xffff_ffff, 0, EQ)]),
    // clone without namespace flags only.
    allow(
        &["clone"],
        &[(CLONE_FLAGS_ARG, CLONE_NAMESPACE_FLAGS, 0, MASKED_EQ)],
    ),
    // clone3's flags are behind a pointer a filter cannot read: ENOSYS makes libc fall back
    // to clone.
    Rule {
        names: &["clone3"],
        action: ERRNO,
        errno: Some(libc::ENOSYS as u32),
        args: &[],
    },
    allow(&["socket"], &[(0, AF_VSOCK, 0, NE)]),
];

/// The built-in profile: an allowlist with defaultAction ERRNO(EPERM), equivalent to the
/// Docker/podman default for a container without extra capabilities. Not allowed (EPERM):
/// keyctl, add_key, request_key, bpf, perf_event_open, kexec_*, open_by_handle_at, module
/// loading, mount/umount2/pivot_root/unshare/setns, ptrace, process_vm_*, reboot, swapon/off,
/// clock_settime/settimeofday, acct, and every syscall not listed. clone is allowed without
/// namespace flags only; clone3 returns ENOSYS so libc falls back to clone, whose flags a
/// filter can inspect (clone3's are behind a pointer). Built from [`DEFAULT_RULES`].
pub fn default_profile() -> LinuxSeccomp {
    let syscalls = DEFAULT_RULES.iter().map(|rule| {
        let args: Vec<_> = rule
            .args
            .iter()
            .map(|&(index, value, value_two, op)| {
                // The builder has a default for every field, so build() cannot fail.
                LinuxSeccompArgBuilder::default()
                    .index(index)
                    .value(value)
                    .value_two(value_two)
                    .op(op)
                    .build()
                    .unwrap_or_default()
            })
            .collect();
        let mut s = LinuxSyscall::default();
        s.set_names(rule.names.iter().map(|n| n.to_string()).collect());
        s.set_action(rule.action);
        s.set_errno_ret(rule.errno);
        s.set_args((!args.is_empty()).then_some(args));
        s
    });
    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(ERRNO);
    profile.set_default_errno_ret(Some(libc::EPERM as u32));
    profile.set_architectures(Some(vec![native_arch()]));
    profile.set_syscalls(Some(syscalls.collect()));
    profile
}

fn native_arch() -> Arch {
    match std::env::consts::ARCH {
        "x86_64" => Arch::ScmpArchX86_64,
        "aarch64" => Arch::ScmpArchAarch64,
        "riscv64" => Arch::ScmpArchRiscv64,
        _ => Arch::ScmpArchNative,
    }
}
