//! The mechanism: an OCI profile compiled to classic BPF with `seccompiler`.
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

use std::collections::BTreeMap;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, LinuxSyscall,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

use super::{SeccompError, SeccompProgram, invalid, syscalls};

/// The kernel's limit on a classic BPF program.
pub(super) const BPF_MAX_LEN: usize = 4096;
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
