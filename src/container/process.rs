//! The workload process on the parent's side: its plan for the child (argv, env,
//! identity, capabilities), its limits, waiting for it and reading its status.

use super::caps;
use super::child::StartHook;
use super::error::Error;
use super::init::{self, CArray};
use super::seccomp;
use oci_spec::runtime::{PosixRlimitType, Process};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

/// A process started by [`Container::exec`](super::Container::exec), a child of the caller.
#[derive(Debug)]
pub struct ExecProcess {
    pub pid: i32,
    pub(super) pidfd: OwnedFd,
}

impl ExecProcess {
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }
    /// Waits for the process to exit.
    pub fn wait(&self) -> Result<ExitStatus, Error> {
        wait_pidfd(self.pidfd.as_fd())
    }
}

/// Parses a signal name (`TERM`, `SIGTERM`, `sigterm`) or number.
pub fn parse_signal(s: &str) -> Result<i32, Error> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(Error::UnknownSignal(s.to_owned()));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    if let Some(rt) = name.strip_prefix("SIGRTMIN") {
        let base = libc::SIGRTMIN();
        let off: i32 = if rt.is_empty() {
            0
        } else {
            rt.parse().map_err(|_| Error::UnknownSignal(s.to_owned()))?
        };
        return Ok(base + off);
    }
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| Error::UnknownSignal(s.to_owned()))
}

pub(super) fn wait_pidfd(fd: BorrowedFd<'_>) -> Result<ExitStatus, Error> {
    loop {
        // SAFETY: an all-zero siginfo is a valid out buffer.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: P_PIDFD with a valid pidfd and out pointer.
        let r = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                fd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::io("wait for container process")(e));
        }
        // SAFETY: waitid filled a SIGCHLD siginfo.
        let (code, status) = unsafe { (info.si_code, info.si_status()) };
        let raw = match code {
            libc::CLD_EXITED => (status & 0xff) << 8,
            libc::CLD_DUMPED => status | 0x80,
            _ => status,
        };
        return Ok(ExitStatus::from_raw(raw));
    }
}

/// The shell-style exit code of a status: the code, or 128+N for signal N.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

/// Like runc: an AppArmor profile warren cannot apply is an error (here AppArmor is
/// never applied), an SELinux label is ignored where SELinux is disabled.
fn check_lsm(p: &Process) -> Result<(), Error> {
    if let Some(profile) = p.apparmor_profile().as_deref().filter(|s| !s.is_empty()) {
        let enabled = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .is_ok_and(|s| s.trim() == "Y");
        let why = if enabled {
            "warren cannot apply AppArmor profiles"
        } else {
            "AppArmor is not enabled on this host"
        };
        return Err(Error::config(
            "process.apparmorProfile",
            format!("{profile:?}: {why}"),
        ));
    }
    if p.selinux_label().as_deref().is_some_and(|s| !s.is_empty())
        && Path::new("/sys/fs/selinux/enforce").exists()
    {
        return Err(Error::config(
            "process.selinuxLabel",
            "warren cannot apply SELinux labels",
        ));
    }
    Ok(())
}

/// The process part of the plan: argv, env, identity, capabilities.
pub(super) fn process_plan(p: &Process, setgroups: bool) -> Result<init::Process, Error> {
    check_lsm(p)?;
    let cs = |s: &str, field: &str| {
        CString::new(s).map_err(|_| Error::config(field, "contains a NUL byte"))
    };
    let args = p.args().clone().unwrap_or_default();
    let argv = args
        .iter()
        .map(|a| cs(a, "process.args"))
        .collect::<Result<Vec<_>, _>>()?;
    let env = p.env().clone().unwrap_or_default();
    let envp = env
        .iter()
        .map(|e| cs(e, "process.env"))
        .collect::<Result<Vec<_>, _>>()?;
    let prog = args.first().cloned().unwrap_or_default();
    if prog.is_empty() {
        return Err(Error::config("process.args", "no program to run"));
    }
    let candidates = if prog.contains('/') {
        vec![cs(&prog, "process.args")?]
    } else {
        let path = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| {
                cs(
                    &format!("{}/{prog}", d.trim_end_matches('/')),
                    "process.args",
                )
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    let caps = match p.capabilities() {
        Some(c) => caps::CapSets::from_spec(c).map_err(|r| Error::Config {
            file: "config.json".into(),
            reason: r.to_string(),
        })?,
        None => caps::CapSets::none(),
    };
    let user = p.user();
    Ok(init::Process {
        argv: CArray::new(argv),
        envp: CArray::new(envp),
        prog,
        candidates,
        cwd: CString::new(p.cwd().as_os_str().as_encoded_bytes())
            .map_err(|_| Error::config("process.cwd", "contains a NUL byte"))?,
        uid: user.uid(),
        gid: user.gid(),
        groups: user.additional_gids().clone().unwrap_or_default(),
        setgroups,
        umask: user.umask(),
        rlimits: p
            .rlimits()
            .iter()
            .flatten()
            .map(|r| {
                let lim = libc::rlimit {
                    rlim_cur: r.soft(),
                    rlim_max: r.hard(),
                };
                (rlimit_resource(r.typ()), lim)
            })
            .collect(),
        caps,
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        terminal: p.terminal().unwrap_or(false),
        console_size: p
            .console_size()
            .map(|b| (b.height() as u16, b.width() as u16)),
        init: false,
    })
}

/// startContainer hooks as C strings for the child (they run from the container's root).
pub(super) fn start_hooks(
    hooks: Option<&oci_spec::runtime::Hooks>,
) -> Result<Vec<StartHook>, Error> {
    let mut out = Vec::new();
    for (i, h) in hooks
        .and_then(|h| h.start_container().as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = format!("hooks.startContainer[{i}]");
        let cs =
            |s: &str| CString::new(s).map_err(|_| Error::config(&field, "contains a NUL byte"));
        let path = cs(&h.path().to_string_lossy())?;
        let mut argv = h.args().clone().unwrap_or_default();
        if argv.is_empty() {
            argv.push(h.path().to_string_lossy().into_owned());
        }
        let argv = argv.iter().map(|a| cs(a)).collect::<Result<Vec<_>, _>>()?;
        let envp = h
            .env()
            .iter()
            .flatten()
            .map(|e| cs(e))
            .collect::<Result<Vec<_>, _>>()?;
        let timeout_ms = match h.timeout() {
            Some(t) if t > 0 => t.saturating_mul(1000).min(i32::MAX as i64) as i32,
            _ => -1,
        };
        out.push(StartHook {
            path,
            argv: CArray::new(argv),
            envp: CArray::new(envp),
            timeout_ms,
        });
    }
    Ok(out)
}

fn rlimit_resource(t: PosixRlimitType) -> libc::__rlimit_resource_t {
    use PosixRlimitType::*;
    match t {
        RlimitCpu => libc::RLIMIT_CPU,
        RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitData => libc::RLIMIT_DATA,
        RlimitStack => libc::RLIMIT_STACK,
        RlimitCore => libc::RLIMIT_CORE,
        RlimitRss => libc::RLIMIT_RSS,
        RlimitNproc => libc::RLIMIT_NPROC,
        RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitAs => libc::RLIMIT_AS,
        RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitNice => libc::RLIMIT_NICE,
        RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

/// Sets the process's oom_score_adj from the parent and, when it is to run in a user
/// namespace other than ours (`other_userns`), its rlimits: there it could not raise a
/// hard limit itself (that needs CAP_SYS_RESOURCE in the initial user namespace), as
/// runc does at that point. Called before GO, while the child waits with our
/// credentials; the child sets the same limits again before it changes uid (its only
/// setting of them otherwise), a no-op here.
pub(super) fn apply_limits(pid: i32, p: &Process, other_userns: bool) -> Result<(), Error> {
    for (i, r) in p
        .rlimits()
        .iter()
        .flatten()
        .enumerate()
        .filter(|_| other_userns)
    {
        let lim = libc::rlimit {
            rlim_cur: r.soft(),
            rlim_max: r.hard(),
        };
        // SAFETY: valid rlimit pointer; NULL old value.
        if unsafe { libc::prlimit(pid, rlimit_resource(r.typ()), &lim, std::ptr::null_mut()) } < 0 {
            return Err(Error::config(
                &format!("process.rlimits[{i}]"),
                std::io::Error::last_os_error(),
            ));
        }
    }
    if let Some(adj) = p.oom_score_adj() {
        std::fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string())
            .map_err(|e| Error::config("process.oomScoreAdj", e))?;
    }
    Ok(())
}

/// The container's seccomp filter, compiled before clone.
pub(super) fn compile_seccomp(
    profile: Option<&oci_spec::runtime::LinuxSeccomp>,
) -> Result<Option<seccomp::SeccompProgram>, Error> {
    Ok(match profile {
        Some(p) => Some(seccomp::compile(p)?),
        None => None,
    })
}
