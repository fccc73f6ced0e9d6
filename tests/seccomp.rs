//! Seccomp profiles compiled by warren, installed on real child processes of this kernel.

mod common;

use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork, pipe};
use oci_spec::runtime::LinuxSeccomp;
use serde_json::json;
use warren::container::seccomp::{
    self, CacheSource, SeccompProgram, compile_uncached, compile_with_cache_report,
    default_profile, parse_profile,
};

/// How a probe child ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The probe's return: the syscall result, or -errno.
    Returned(i64),
    Signaled(Signal),
}

/// Forks, installs `program` in the child (as the runtime does: after fork, before the
/// workload runs), runs `probe` there and reports its result. The child only makes raw
/// syscalls: the test harness is multithreaded.
fn in_filtered_child(program: &SeccompProgram, probe: impl Fn() -> i64) -> Outcome {
    let (read, write) = pipe().expect("pipe");
    // SAFETY: the child only calls async-signal-safe functions before _exit.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let value = match program.install() {
                Ok(()) => probe(),
                Err(_) => i64::MIN,
            };
            let bytes = value.to_ne_bytes();
            // SAFETY: plain write and _exit on fds and memory we own.
            unsafe {
                libc::write(
                    std::os::fd::AsRawFd::as_raw_fd(&write),
                    bytes.as_ptr().cast(),
                    8,
                );
                libc::_exit(0)
            }
        }
        ForkResult::Parent { child } => {
            drop(write);
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::fs::File::from(read), &mut buf).expect("read");
            match waitpid(child, None).expect("waitpid") {
                WaitStatus::Exited(_, 0) => {
                    let value = i64::from_ne_bytes(buf.try_into().expect("8 bytes from child"));
                    assert_ne!(value, i64::MIN, "installing the filter failed in the child");
                    Outcome::Returned(value)
                }
                WaitStatus::Signaled(_, signal, _) => Outcome::Signaled(signal),
                other => panic!("probe child ended with {other:?}"),
            }
        }
    }
}

/// A raw syscall's result as `ret` or `-errno`.
fn sys(ret: libc::c_long) -> i64 {
    if ret == -1 {
        -i64::from(nix::errno::Errno::last_raw())
    } else {
        ret
    }
}

const EPERM: i64 = -(libc::EPERM as i64);

fn profile(value: serde_json::Value) -> LinuxSeccomp {
    parse_profile(&value).expect("valid profile")
}

/// Runs `program` from `sh` with the filter installed in pre_exec, returns stdout.
fn run_filtered(program: &SeccompProgram, script: &str, uid: Option<u32>) -> String {
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", script]);
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let program = program.clone();
    // SAFETY: install() is async-signal-safe, as pre_exec requires.
    unsafe { cmd.pre_exec(move || program.install().map_err(std::io::Error::from)) };
    common::ok(&mut cmd)
}

#[test]
fn default_profile_filters_a_real_process() {
    if !common::require_root("installs filters in a child that also drops to another uid") {
        return;
    }
    let program = compile_uncached(&default_profile()).expect("compile default profile");
    let status = run_filtered(&program, "cat /proc/self/status; echo done", None);
    assert!(status.contains("\nSeccomp:\t2\n"), "{status}");
    assert!(status.contains("\nSeccomp_filters:\t1\n"), "{status}");
    // Root keeps CAP_SYS_ADMIN, so no_new_privs is not forced on it.
    assert!(status.contains("\nNoNewPrivs:\t0\n"), "{status}");
    assert!(status.ends_with("done\n"), "{status}");

    // Without CAP_SYS_ADMIN the kernel requires no_new_privs; install() sets it.
    let status = run_filtered(&program, "cat /proc/self/status", Some(65534));
    assert!(status.contains("\nSeccomp:\t2\n"), "{status}");
    assert!(status.contains("\nNoNewPrivs:\t1\n"), "{status}");
}

#[test]
fn default_profile_blocks_and_allows() {
    if !common::require_root("installs filters in a child that also drops to another uid") {
        return;
    }
    let program = compile_uncached(&default_profile()).expect("compile default profile");
    let run = |probe: fn() -> i64| in_filtered_child(&program, probe);
    use Outcome::Returned;

    // SAFETY (all probes): raw syscalls with valid or null arguments, in the probe child.
    // keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, create)
    assert_eq!(
        run(|| sys(unsafe { libc::syscall(libc::SYS_keyctl, 0, -3, 1) })),
        Returned(EPERM)
    );
    assert_eq!(
        run(|| sys(unsafe { libc::syscall(libc::SYS_add_key, 0, 0, 0, 0, 0) })),
        Returned(EPERM)
    );
    assert_eq!(
        run(|| sys(unsafe { libc::syscall(libc::SYS_bpf, 0, 0, 0) })),
        Returned(EPERM)
    );
    assert_eq!(
        run(|| sys(unsafe { libc::unshare(libc::CLONE_NEWUSER) } as libc::c_long)),
        Returned(EPERM)
    );
    assert_eq!(
        run(|| sys(unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0) })),
        Returned(EPERM)
    );
    assert_eq!(
        run(|| sys(unsafe { libc::umount2(c"/".as_ptr(), libc::MNT_DETACH) } as libc::c_long)),
        Returned(EPERM)
    );
    // clone with a namespace flag is refused by the argument condition...
    assert_eq!(
        run(|| sys(unsafe {
            libc::syscall(
                libc::SYS_clone,
                libc::CLONE_NEWNS | libc::SIGCHLD,
                0,
                0,
                0,
                0,
            )
        })),
        Returned(EPERM)
    );
    // ...clone3 says ENOSYS so libc falls back to clone...
    assert_eq!(
        run(|| sys(unsafe { libc::syscall(libc::SYS_clone3, 0, 0) })),
        Returned(-(libc::ENOSYS as i64))
    );
    // ...and a plain fork works: the grandchild runs and exits 7.
    assert_eq!(
        run(|| {
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                unsafe { libc::_exit(7) }
            }
            let mut status = 0;
            if pid < 0 || unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
                return -1;
            }
            i64::from(libc::WEXITSTATUS(status))
        }),
        Returned(7)
    );
    let Returned(pid) = run(|| sys(unsafe { libc::syscall(libc::SYS_getpid) })) else {
        panic!("getpid killed the child")
    };
    assert!(pid > 0);
    assert_eq!(
        run(|| sys(unsafe { libc::write(-1, std::ptr::null(), 0) } as libc::c_long)),
        Returned(-(libc::EBADF as i64)),
        "write reaches the kernel"
    );
    // personality: querying is allowed, switching to an odd persona is not.
    assert!(
        matches!(run(|| sys(unsafe { libc::syscall(libc::SYS_personality, 0xffff_ffffu64) })), Returned(v) if v >= 0)
    );
    assert_eq!(
        run(|| sys(unsafe { libc::syscall(libc::SYS_personality, 0x0040_0000u64) })),
        Returned(EPERM)
    );
    // socket: AF_VSOCK is refused, AF_UNIX works.
    assert_eq!(
        run(|| sys(unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) } as libc::c_long)),
        Returned(EPERM)
    );
    assert!(
        matches!(run(|| sys(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) } as libc::c_long)), Returned(fd) if fd >= 0)
    );
}

#[test]
fn custom_profile_actions_errnos_and_conditions() {
    if !common::require_root("installs filters in a child that also drops to another uid") {
        return;
    }
    let program = compile_uncached(&profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_AARCH64"],
        "syscalls": [
            // Names this kernel lacks are skipped, the rest of the entry applies.
            {"names": ["no_such_syscall", "getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": 0xffff_ffffu64, "op": "SCMP_CMP_EQ"}]},
            // (mode & 0o700) == 0o700 -> EACCES; the conditional rule beats the plain allow.
            {"names": ["umask"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["umask"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
             "args": [{"index": 0, "value": 0o700, "valueTwo": 0o700, "op": "SCMP_CMP_MASKED_EQ"}]},
            // Conditions on one rule are ANDed: 1000 < fd <= 2000 and not 1500 (all unused fds).
            {"names": ["close"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1999,
             "args": [{"index": 0, "value": 1000, "op": "SCMP_CMP_GT"},
                      {"index": 0, "value": 2000, "op": "SCMP_CMP_LE"},
                      {"index": 0, "value": 1500, "op": "SCMP_CMP_NE"}]},
            // The same call with two actions: the stricter wins.
            {"names": ["getpgrp"], "action": "SCMP_ACT_LOG"},
            {"names": ["getpgrp"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5},
            {"names": ["getsid"], "action": "SCMP_ACT_KILL_PROCESS"},
            {"names": ["sched_yield"], "action": "SCMP_ACT_TRAP"},
        ]
    })))
    .expect("compile custom profile");
    let run = |probe: fn() -> i64| in_filtered_child(&program, probe);
    use Outcome::{Returned, Signaled};

    // SAFETY (all probes): raw syscalls with plain integer arguments, in the probe child.
    assert_eq!(
        run(|| sys(unsafe { libc::syscall(libc::SYS_getppid) })),
        Returned(-38)
    );
    assert_eq!(
        run(|| sys(unsafe { libc::syscall(libc::SYS_personality, 0xffff_ffffu64) })),
        Returned(EPERM)
    );
    // personality(PER_LINUX) is not matched: allowed, returns the old persona.
    assert!(
        matches!(run(|| sys(unsafe { libc::syscall(libc::SYS_personality, 0) })), Returned(v) if v >= 0)
    );
    assert_eq!(
        run(|| sys(unsafe { libc::syscall(libc::SYS_umask, 0o777) })),
        Returned(-13)
    );
    assert!(
        matches!(run(|| sys(unsafe { libc::syscall(libc::SYS_umask, 0o022) })), Returned(v) if v >= 0)
    );
    fn close(fd: i64) -> i64 {
        sys(unsafe { libc::syscall(libc::SYS_close, fd) })
    }
    assert_eq!(run(|| close(1001)), Returned(-1999));
    assert_eq!(run(|| close(2000)), Returned(-1999));
    assert_eq!(run(|| close(1500)), Returned(-(libc::EBADF as i64)));
    assert_eq!(run(|| close(2001)), Returned(-(libc::EBADF as i64)));
    assert_eq!(run(|| close(1000)), Returned(-(libc::EBADF as i64)));
    assert_eq!(
        run(|| sys(unsafe { libc::syscall(libc::SYS_getpgrp) })),
        Returned(-5)
    );
    assert_eq!(
        run(|| sys(unsafe { libc::syscall(libc::SYS_getsid, 0) })),
        Signaled(Signal::SIGSYS)
    );
    assert_eq!(
        run(|| sys(unsafe { libc::syscall(libc::SYS_sched_yield) })),
        Signaled(Signal::SIGSYS)
    );
    let Returned(pid) = run(|| sys(unsafe { libc::syscall(libc::SYS_getpid) })) else {
        panic!("getpid killed the child")
    };
    assert!(pid > 0, "the default action (allow) applies to the rest");
}

#[test]
fn malformed_profiles_name_the_field() {
    let err = |value: serde_json::Value| -> String {
        match parse_profile(&value) {
            Err(e) => e.to_string(),
            Ok(p) => compile_uncached(&p)
                .expect_err("profile should be rejected")
                .to_string(),
        }
    };
    let allow = json!({"names": ["getpid"], "action": "SCMP_ACT_ALLOW"});
    assert_eq!(
        err(json!({"defaultAction": "SCMP_ACT_ERRNO",
                   "syscalls": [allow, allow, allow, {"names": ["read"], "action": "X"}]})),
        r#"linux.seccomp.syscalls[3].action: unknown action "X""#
    );
    assert_eq!(
        err(json!({"defaultAction": "SCMP_ACT_NOPE"})),
        r#"linux.seccomp.defaultAction: unknown action "SCMP_ACT_NOPE""#
    );
    assert_eq!(
        err(json!({"syscalls": []})),
        "linux.seccomp.defaultAction: missing"
    );
    assert_eq!(
        err(json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]})),
        r#"linux.seccomp.architectures[0]: unknown architecture "SCMP_ARCH_Z80""#
    );
    assert_eq!(
        err(
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [allow,
            {"names": ["read"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                      {"index": 1, "value": 1, "op": "SCMP_CMP_ALMOST"}]}]})
        ),
        r#"linux.seccomp.syscalls[1].args[1].op: unknown operator "SCMP_CMP_ALMOST""#
    );
    assert_eq!(
        err(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]})),
        "linux.seccomp.syscalls[0].args[0].index: 6 is not a syscall argument (0..=5)"
    );
    assert_eq!(
        err(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}]})),
        "linux.seccomp.syscalls[0].args[0].value: expected a non-negative integer, found -1"
    );
    assert_eq!(
        err(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": 1, "valueTwo": 2, "op": "SCMP_CMP_EQ"}]}]})),
        "linux.seccomp.syscalls[0].args[0].valueTwo: only SCMP_CMP_MASKED_EQ takes a second value"
    );
    assert_eq!(
        err(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 70000}]})),
        "linux.seccomp.syscalls[0].errnoRet: 70000 is above the largest errno 4095"
    );
    assert_eq!(
        err(json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 5000})),
        "linux.seccomp.defaultErrnoRet: 5000 is above the largest errno 4095"
    );
    assert_eq!(
        err(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": [], "action": "SCMP_ACT_ERRNO"}]})),
        "linux.seccomp.syscalls[0].names: no syscall names"
    );
    assert_eq!(
        err(
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [allow,
            {"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]})
        ),
        "linux.seccomp.syscalls[1].action: SCMP_ACT_NOTIFY is not supported (warren has no seccomp agent)"
    );
}

#[test]
fn compiled_programs_are_cached_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A profile no other test compiles, so the in-process cache is ours to clear.
    let mut value = serde_json::to_value(default_profile()).expect("to json");
    value["syscalls"].as_array_mut().expect("syscalls").push(
        json!({"names": [format!("warren_cache_test_{}", std::process::id())], "action": "SCMP_ACT_ALLOW"}),
    );
    let custom = profile(value);
    let path = seccomp::cache_path(&custom, dir.path()).expect("cache path");

    let (first, source) = compile_with_cache_report(&custom, Some(dir.path())).expect("compile");
    assert_eq!(source, CacheSource::Compiled);
    let written = std::fs::read(&path).expect("cache file written");
    assert_eq!(written.len(), 16 + first.instructions().len() * 8 + 32);

    let (again, source) = compile_with_cache_report(&custom, Some(dir.path())).expect("compile");
    assert_eq!(source, CacheSource::Memory);
    assert_eq!(again, first);

    seccomp::clear_memory_cache();
    let (from_disk, source) =
        compile_with_cache_report(&custom, Some(dir.path())).expect("compile");
    assert_eq!(source, CacheSource::Disk);
    assert_eq!(from_disk, first);

    // One flipped bit in an instruction: ignored, recompiled and rewritten.
    let mut corrupt = written.clone();
    corrupt[40] ^= 0x01;
    std::fs::write(&path, &corrupt).expect("corrupt cache");
    seccomp::clear_memory_cache();
    let (recompiled, source) =
        compile_with_cache_report(&custom, Some(dir.path())).expect("compile");
    assert_eq!(source, CacheSource::Compiled);
    assert_eq!(recompiled, first);
    assert_eq!(std::fs::read(&path).expect("rewritten"), written);

    // A truncated file likewise.
    std::fs::write(&path, &written[..written.len() - 9]).expect("truncate cache");
    seccomp::clear_memory_cache();
    let (_, source) = compile_with_cache_report(&custom, Some(dir.path())).expect("compile");
    assert_eq!(source, CacheSource::Compiled);
    seccomp::clear_memory_cache();
    let (_, source) = compile_with_cache_report(&custom, Some(dir.path())).expect("compile");
    assert_eq!(source, CacheSource::Disk);

    // A different profile never reads another's file.
    let other = profile(json!({"defaultAction": "SCMP_ACT_ALLOW"}));
    assert_ne!(seccomp::cache_path(&other, dir.path()).expect("path"), path);
}
