//! OCI seccomp profiles compiled to classic BPF with `seccompiler`, a built-in default
//! profile (the usual container allowlist), and a content-addressed compile cache.
//!
//! seccompiler 0.5 builds one `SeccompFilter` per (match action, default action) pair, so a
//! profile whose syscalls carry different actions or errnos cannot be one filter. We build one
//! filter per action group and chain them: each group's "no match" return is rewritten into a
//! jump to the next group, and the last group falls through to `defaultAction`. Group order
//! gives precedence where several rules match one call: rules with argument conditions first
//! (the more specific rule wins, as in libseccomp), then by strictness (kill > trap > errno >
//! trace > log > allow, the kernel's order between stacked filters).
//!
//! Limits: only the native architecture is matched; calls from another ABI (i386 via int 0x80,
//! x32) kill the process, as libseccomp does for architectures missing from a filter, even if
//! the profile lists them. SCMP_ACT_NOTIFY (a seccomp agent) is not supported. Arguments are
//! compared as 64-bit values, like libseccomp.

mod syscalls;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex};

use nix::errno::Errno;
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

/// Errors from parsing or compiling a profile; `field` is the JSON path in config.json.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("linux.seccomp: {0}")]
    Json(#[from] serde_json::Error),
    #[error("linux.seccomp: seccompiler: {0}")]
    Backend(#[from] seccompiler::BackendError),
}

fn invalid(field: impl Into<String>, message: impl fmt::Display) -> SeccompError {
    SeccompError::Invalid {
        field: field.into(),
        message: message.to_string(),
    }
}

/// A compiled filter, ready to install. Cheap to clone and share between threads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeccompProgram {
    filter: Arc<[sock_filter]>,
    flags: u32,
}

impl SeccompProgram {
    /// Installs the filter on the calling thread. Async-signal-safe (no allocation, no lock:
    /// only the seccomp and prctl syscalls), for the last step before execve in a forked child.
    ///
    /// The filter is installed without `no_new_privs` when the caller still holds
    /// CAP_SYS_ADMIN (so `process.noNewPrivileges: false` keeps its meaning); otherwise the
    /// kernel requires it and it is set first.
    pub fn install(&self) -> Result<(), Errno> {
        let prog = libc::sock_fprog {
            // compile() never produces more than BPF_MAX_LEN (4096) instructions.
            len: self.filter.len() as u16,
            // seccompiler's sock_filter is #[repr(C)] with the same fields as the kernel's.
            filter: self.filter.as_ptr() as *mut libc::sock_filter,
        };
        match crate::sys::seccomp_set_mode_filter(&prog, self.flags) {
            Err(Errno::EACCES) => {
                nix::sys::prctl::set_no_new_privs()?;
                crate::sys::seccomp_set_mode_filter(&prog, self.flags)
            }
            other => other,
        }
    }

    /// The BPF instructions.
    pub fn instructions(&self) -> &[sock_filter] {
        &self.filter
    }

    /// SECCOMP_FILTER_FLAG_* bits passed to seccomp(2).
    pub fn flags(&self) -> u32 {
        self.flags
    }
}

/// Where [`compile_with_cache_report`] found the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheSource {
    Memory,
    Disk,
    Compiled,
}

/// Compiles `profile`, reusing an earlier compile of the same profile from this process or
/// from the on-disk cache in [`cache_dir`].
pub fn compile(profile: &LinuxSeccomp) -> Result<SeccompProgram, SeccompError> {
    compile_with_cache_report(profile, Some(&cache_dir())).map(|(program, _)| program)
}

/// `$state_dir/seccomp-cache`.
pub fn cache_dir() -> PathBuf {
    crate::dirs::state_dir().join("seccomp-cache")
}

/// The cache file for `profile` under `dir`: `<blake3 key>.bpf`.
pub fn cache_path(profile: &LinuxSeccomp, dir: &Path) -> Result<PathBuf, SeccompError> {
    Ok(dir.join(format!("{}.bpf", cache_key(profile)?.to_hex())))
}

/// Drops the in-process cache (the disk cache is kept).
pub fn clear_memory_cache() {
    memory().clear();
}

static MEMORY: LazyLock<Mutex<HashMap<[u8; 32], SeccompProgram>>> = LazyLock::new(Default::default);

fn memory() -> std::sync::MutexGuard<'static, HashMap<[u8; 32], SeccompProgram>> {
    // A poisoned cache only means another thread panicked mid-insert of a complete value.
    MEMORY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Like [`compile`], with the disk cache in `cache_dir` (None: memory only), and telling where
/// the program came from. The disk cache is best effort: an unreadable, corrupt or unwritable
/// cache file only costs a compile.
pub fn compile_with_cache_report(
    profile: &LinuxSeccomp,
    cache_dir: Option<&Path>,
) -> Result<(SeccompProgram, CacheSource), SeccompError> {
    let key = cache_key(profile)?;
    if let Some(program) = memory().get(key.as_bytes()) {
        return Ok((program.clone(), CacheSource::Memory));
    }
    let path = cache_dir.map(|d| d.join(format!("{}.bpf", key.to_hex())));
    let loaded = path.as_deref().and_then(|p| {
        let bytes = std::fs::read(p).ok()?;
        let program = decode(&bytes, &key);
        if program.is_none() {
            tracing::warn!("ignoring corrupt seccomp cache file {}", p.display());
        }
        program
    });
    let (program, source) = match loaded {
        Some(program) => (program, CacheSource::Disk),
        None => {
            let program = compile_uncached(profile)?;
            if let Some(path) = &path {
                let stored = path
                    .parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|()| crate::atomic::write(path, &encode(&program, &key)));
                if let Err(e) = stored {
                    tracing::debug!("seccomp cache {} not written: {e}", path.display());
                }
            }
            (program, CacheSource::Compiled)
        }
    };
    memory().insert(*key.as_bytes(), program.clone());
    Ok((program, source))
}

/// Bumped whenever compilation changes, so old cache files are never reused.
const FORMAT: &[u8] = b"warren-seccomp-v1";
const MAGIC: &[u8; 8] = b"WRNBPF01";

/// blake3 over the compiler format, the target arch and the profile's JSON. The JSON is
/// canonical: serde writes the typed struct's fields in declaration order and it holds no maps.
fn cache_key(profile: &LinuxSeccomp) -> Result<blake3::Hash, SeccompError> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(FORMAT);
    hasher.update(&[0]);
    hasher.update(std::env::consts::ARCH.as_bytes());
    hasher.update(&[0]);
    hasher.update(&serde_json::to_vec(profile)?);
    Ok(hasher.finalize())
}

/// Cache file: magic, flags u32, count u32, count × (code u16, jt u8, jf u8, k u32), then
/// blake3(key ‖ all of the above) so a torn or flipped file is never installed.
fn encode(program: &SeccompProgram, key: &blake3::Hash) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + program.filter.len() * 8 + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&program.flags.to_le_bytes());
    out.extend_from_slice(&(program.filter.len() as u32).to_le_bytes());
    for ins in program.filter.iter() {
        out.extend_from_slice(&ins.code.to_le_bytes());
        out.extend_from_slice(&[ins.jt, ins.jf]);
        out.extend_from_slice(&ins.k.to_le_bytes());
    }
    let sum = blake3::Hasher::new()
        .update(key.as_bytes())
        .update(&out)
        .finalize();
    out.extend_from_slice(sum.as_bytes());
    out
}

fn decode(bytes: &[u8], key: &blake3::Hash) -> Option<SeccompProgram> {
    let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    if bytes.get(..8)? != MAGIC {
        return None;
    }
    let flags = u32_at(8)?;
    let count = u32_at(12)? as usize;
    if count == 0 || count > BPF_MAX_LEN || bytes.len() != 16 + count * 8 + 32 {
        return None;
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    let expected = blake3::Hasher::new()
        .update(key.as_bytes())
        .update(body)
        .finalize();
    if expected.as_bytes() != sum {
        return None;
    }
    let filter = body[16..]
        .chunks_exact(8)
        .map(|c| sock_filter {
            code: u16::from_le_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    Some(SeccompProgram { filter, flags })
}

/// The kernel's limit on a classic BPF program.
const BPF_MAX_LEN: usize = 4096;
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JA: u16 = 0x05;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;
/// x32 syscalls share AUDIT_ARCH_X86_64 and are told apart by this bit in the number.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// The per-group "no match" action, rewritten into a jump to the next group. ERRNO data above
/// 4095 (MAX_ERRNO) cannot come from a profile: errnoRet is checked against that.
const NO_MATCH: SeccompAction = SeccompAction::Errno(0xffff);
const MAX_ERRNO: u32 = 4095;

/// Compiles without any cache.
pub fn compile_uncached(profile: &LinuxSeccomp) -> Result<SeccompProgram, SeccompError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)?;
    let default = action(
        profile.default_action(),
        profile.default_errno_ret(),
        (
            "linux.seccomp.defaultAction",
            "linux.seccomp.defaultErrnoRet",
        ),
    )?;
    let flags = filter_flags(profile)?;

    // (specific first, strictness, action) -> syscall -> rules (empty: unconditional).
    type Group = BTreeMap<i64, Vec<SeccompRule>>;
    let mut groups: BTreeMap<(bool, u8, u32), (SeccompAction, Group)> = BTreeMap::new();
    for (i, syscall) in profile.syscalls().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        let act = action(
            syscall.action(),
            syscall.errno_ret(),
            (&format!("{field}.action"), &format!("{field}.errnoRet")),
        )?;
        if syscall.names().is_empty() {
            return Err(invalid(format!("{field}.names"), "no syscall names"));
        }
        let rule = rule(syscall, &field)?;
        let key = (rule.is_none(), strictness(&act), u32::from(act.clone()));
        let (_, group) = groups
            .entry(key)
            .or_insert_with(|| (act.clone(), Group::new()));
        // Names this architecture lacks are skipped, as libseccomp does.
        for nr in syscall.names().iter().filter_map(|n| syscall_number(n)) {
            let rules = group.entry(nr).or_default();
            if let Some(rule) = &rule {
                rules.push(rule.clone());
            }
        }
    }

    // The arch check seccompiler puts in front of every filter: an empty filter is the check
    // plus one return.
    let mut filter: BpfProgram =
        SeccompFilter::new(Group::new(), SeccompAction::Allow, NO_MATCH, arch)?.try_into()?;
    let prefix_len = filter.len() - 1;
    filter.truncate(prefix_len);
    #[cfg(target_arch = "x86_64")]
    filter.extend([
        stmt(BPF_LD_W_ABS, 0),
        jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
    ]);
    let no_match = u32::from(NO_MATCH);
    for (act, group) in groups.into_values().filter(|(_, g)| !g.is_empty()) {
        let bpf: BpfProgram = SeccompFilter::new(group, NO_MATCH, act, arch)?.try_into()?;
        let body = &bpf[prefix_len..];
        for (at, ins) in body.iter().enumerate() {
            if ins.code == BPF_RET_K && ins.k == no_match {
                // Jumps are relative to the next instruction; the group ends at body.len().
                filter.push(stmt(BPF_JMP_JA, (body.len() - at - 1) as u32));
            } else {
                filter.push(ins.clone());
            }
        }
    }
    filter.push(stmt(BPF_RET_K, u32::from(default)));
    if filter.len() > BPF_MAX_LEN {
        return Err(invalid(
            "linux.seccomp.syscalls",
            format!(
                "filter has {} BPF instructions, the kernel allows {BPF_MAX_LEN}",
                filter.len()
            ),
        ));
    }
    Ok(SeccompProgram {
        filter: filter.into(),
        flags,
    })
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

fn syscall_number(name: &str) -> Option<i64> {
    let table = syscalls::SYSCALLS;
    table
        .binary_search_by(|(n, _)| n.cmp(&name))
        .ok()
        .map(|i| table[i].1)
}

/// Lower is stricter; the kernel's precedence between actions.
fn strictness(action: &SeccompAction) -> u8 {
    match action {
        SeccompAction::KillProcess => 0,
        SeccompAction::KillThread => 1,
        SeccompAction::Trap => 2,
        SeccompAction::Errno(_) => 3,
        SeccompAction::Trace(_) => 4,
        SeccompAction::Log => 5,
        SeccompAction::Allow => 6,
    }
}

/// `field` names the action, `errno_field` its errnoRet.
fn action(
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    (field, errno_field): (&str, &str),
) -> Result<SeccompAction, SeccompError> {
    let data = || match errno_ret {
        Some(errno) if errno > MAX_ERRNO => Err(invalid(
            errno_field,
            format!("{errno} is above the largest errno {MAX_ERRNO}"),
        )),
        Some(errno) => Ok(errno),
        None => Ok(libc::EPERM as u32),
    };
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(data()?),
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(data()?),
        LinuxSeccompAction::ScmpActNotify => {
            return Err(invalid(
                field,
                "SCMP_ACT_NOTIFY is not supported (warren has no seccomp agent)",
            ));
        }
    })
}

fn filter_flags(profile: &LinuxSeccomp) -> Result<u32, SeccompError> {
    let mut flags = 0;
    for (i, flag) in profile.flags().iter().flatten().enumerate() {
        flags |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                return Err(invalid(
                    format!("linux.seccomp.flags[{i}]"),
                    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV needs SCMP_ACT_NOTIFY, which is not supported",
                ));
            }
        } as u32;
    }
    Ok(flags)
}

/// The AND of a syscall entry's argument conditions; None when it has none.
fn rule(syscall: &LinuxSyscall, field: &str) -> Result<Option<SeccompRule>, SeccompError> {
    let args = syscall.args().as_deref().unwrap_or_default();
    if args.is_empty() {
        return Ok(None);
    }
    let conditions = args
        .iter()
        .enumerate()
        .map(|(j, arg)| condition(arg, &format!("{field}.args[{j}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(SeccompRule::new(conditions)?))
}

fn condition(arg: &LinuxSeccompArg, field: &str) -> Result<SeccompCondition, SeccompError> {
    let index = u8::try_from(arg.index())
        .ok()
        .filter(|i| *i <= 5)
        .ok_or_else(|| {
            invalid(
                format!("{field}.index"),
                format!("{} is not a syscall argument (0..=5)", arg.index()),
            )
        })?;
    let two = arg.value_two().unwrap_or(0);
    let (op, value) = match arg.op() {
        // OCI: (arg & value) == valueTwo.
        LinuxSeccompOperator::ScmpCmpMaskedEq => (SeccompCmpOp::MaskedEq(arg.value()), two),
        _ if two != 0 => {
            return Err(invalid(
                format!("{field}.valueTwo"),
                "only SCMP_CMP_MASKED_EQ takes a second value",
            ));
        }
        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
    };
    Ok(SeccompCondition::new(
        index,
        SeccompCmpArgLen::Qword,
        op,
        value,
    )?)
}

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

/// The built-in profile: an allowlist with defaultAction ERRNO(EPERM), equivalent to the
/// Docker/podman default for a container without extra capabilities. Not allowed (EPERM):
/// keyctl, add_key, request_key, bpf, perf_event_open, kexec_*, open_by_handle_at, module
/// loading, mount/umount2/pivot_root/unshare/setns, ptrace, process_vm_*, reboot, swapon/off,
/// clock_settime/settimeofday, acct, and every syscall not listed. clone is allowed without
/// namespace flags only; clone3 returns ENOSYS so libc falls back to clone, whose flags a
/// filter can inspect (clone3's are behind a pointer).
pub fn default_profile() -> LinuxSeccomp {
    let entry = |names: &[&str], action, errno: Option<u32>, args: Vec<LinuxSeccompArg>| {
        let mut s = LinuxSyscall::default();
        s.set_names(names.iter().map(|n| n.to_string()).collect());
        s.set_action(action);
        s.set_errno_ret(errno);
        s.set_args((!args.is_empty()).then_some(args));
        s
    };
    let arg = |index: usize, value: u64, value_two: u64, op| {
        // The builder has a default for every field, so build() cannot fail.
        LinuxSeccompArgBuilder::default()
            .index(index)
            .value(value)
            .value_two(value_two)
            .op(op)
            .build()
            .unwrap_or_default()
    };
    use LinuxSeccompAction::{ScmpActAllow as Allow, ScmpActErrno as Errno_};
    use LinuxSeccompOperator::{ScmpCmpEq as Eq, ScmpCmpMaskedEq as Masked, ScmpCmpNe as Ne};
    // s390x swaps clone's first two arguments.
    let clone_flags_arg = if cfg!(target_arch = "s390x") { 1 } else { 0 };
    let mut syscalls = vec![entry(DEFAULT_ALLOW, Allow, None, vec![])];
    // personality: only the harmless personas Docker allows (query, linux, 32-bit uname).
    for persona in [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff] {
        syscalls.push(entry(
            &["personality"],
            Allow,
            None,
            vec![arg(0, persona, 0, Eq)],
        ));
    }
    syscalls.push(entry(
        &["clone"],
        Allow,
        None,
        vec![arg(clone_flags_arg, CLONE_NAMESPACE_FLAGS, 0, Masked)],
    ));
    syscalls.push(entry(
        &["clone3"],
        Errno_,
        Some(libc::ENOSYS as u32),
        vec![],
    ));
    // socket, except AF_VSOCK (40), which reaches host services.
    syscalls.push(entry(&["socket"], Allow, None, vec![arg(0, 40, 0, Ne)]));

    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(Errno_);
    profile.set_default_errno_ret(Some(libc::EPERM as u32));
    profile.set_architectures(Some(vec![native_arch()]));
    profile.set_syscalls(Some(syscalls));
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
