//! Device cgroup rules (`linux.resources.devices`), as runc applies them: the config's
//! rules, then runc's defaults (mknod of any node; /dev/null, zero, full, random, urandom,
//! tty, ptmx, the ptys, tun), then an allow rule for each `linux.devices` node.
//!
//! v1: each rule is written in order to `devices.deny` / `devices.allow` (the kernel keeps
//! the list). v2 has no files: an eBPF program (`BPF_PROG_TYPE_CGROUP_DEVICE`) built here
//! from the same rules, as runc's `devicefilter` does, is attached to the cgroup.
//!
//! Applied only by a privileged runtime (root in the initial user namespace): as in runc,
//! a rootless container's rules are left out (it cannot mknod, and a user namespace may
//! not write `devices.*` nor load the program).

use std::os::fd::AsFd;
use std::path::Path;

use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, LinuxResources};

use super::CgroupError;

/// Access bits, as `bpf_cgroup_dev_ctx` has them.
const MKNOD: u8 = 1;
const READ: u8 = 2;
const WRITE: u8 = 4;
const RWM: u8 = MKNOD | READ | WRITE;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    All,
    Char,
    Block,
}

/// One rule; `None` major or minor is `*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Rule {
    pub allow: bool,
    pub kind: Kind,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: u8,
}

/// runc's `AllowedDevices`, appended after the config's rules.
const DEFAULTS: &[(Kind, Option<u32>, Option<u32>, u8)] = &[
    (Kind::Char, None, None, MKNOD),
    (Kind::Block, None, None, MKNOD),
    (Kind::Char, Some(1), Some(3), RWM),
    (Kind::Char, Some(1), Some(8), RWM),
    (Kind::Char, Some(1), Some(7), RWM),
    (Kind::Char, Some(5), Some(0), RWM),
    (Kind::Char, Some(1), Some(5), RWM),
    (Kind::Char, Some(1), Some(9), RWM),
    (Kind::Char, Some(136), None, RWM),
    (Kind::Char, Some(5), Some(2), RWM),
    (Kind::Char, Some(10), Some(200), RWM),
];

fn bad(message: String) -> CgroupError {
    CgroupError::Unsupported {
        controller: "devices".into(),
        message,
    }
}

/// The config's resources, with an allow rule for each `linux.devices` node appended to
/// its device rules when it has any (runc allows the nodes it creates). For create:
/// `resources_for(linux.resources(), linux.devices())`.
pub fn resources_for(
    resources: Option<&LinuxResources>,
    nodes: &[LinuxDevice],
) -> Option<LinuxResources> {
    let mut r = resources?.clone();
    let Some(mut rules) = r.devices().clone().filter(|d| !d.is_empty()) else {
        return Some(r);
    };
    for node in nodes {
        let mut rule = LinuxDeviceCgroup::default();
        rule.set_allow(true);
        rule.set_typ(Some(node.typ()));
        rule.set_major(Some(node.major()));
        rule.set_minor(Some(node.minor()));
        rule.set_access(Some("rwm".into()));
        rules.push(rule);
    }
    r.set_devices(Some(rules));
    Some(r)
}

/// The rules to apply for `resources`: None when it has none, or when this runtime is not
/// privileged enough to apply them (rootless, as runc).
pub(super) fn rules(resources: Option<&LinuxResources>) -> Result<Option<Vec<Rule>>, CgroupError> {
    let Some(list) = resources
        .and_then(|r| r.devices().as_ref())
        .filter(|d| !d.is_empty())
    else {
        return Ok(None);
    };
    let mut out = list.iter().map(parse).collect::<Result<Vec<_>, _>>()?;
    out.extend(DEFAULTS.iter().map(|&(kind, major, minor, access)| Rule {
        allow: true,
        kind,
        major,
        minor,
        access,
    }));
    if !privileged() {
        tracing::debug!("device cgroup rules left out: not root in the initial user namespace");
        return Ok(None);
    }
    Ok(Some(out))
}

fn parse(d: &LinuxDeviceCgroup) -> Result<Rule, CgroupError> {
    let kind = match d.typ() {
        None | Some(LinuxDeviceType::A) => Kind::All,
        Some(LinuxDeviceType::C | LinuxDeviceType::U) => Kind::Char,
        Some(LinuxDeviceType::B) => Kind::Block,
        Some(t) => return Err(bad(format!("device type {:?} in rule {d}", t.as_str()))),
    };
    let number = |n: Option<i64>| -> Result<Option<u32>, CgroupError> {
        match n {
            None => Ok(None),
            Some(n) if n < 0 => Ok(None),
            Some(n) => u32::try_from(n)
                .map(Some)
                .map_err(|_| bad(format!("device number {n} in rule {d}"))),
        }
    };
    let mut access = 0;
    for c in d.access().as_deref().unwrap_or("rwm").chars() {
        access |= match c {
            'r' => READ,
            'w' => WRITE,
            'm' => MKNOD,
            _ => return Err(bad(format!("access {c:?} in rule {d}"))),
        };
    }
    Ok(Rule {
        allow: d.allow(),
        kind,
        major: number(d.major())?,
        minor: number(d.minor())?,
        access: if access == 0 { RWM } else { access },
    })
}

/// Root in the initial user namespace (the identity uid map).
fn privileged() -> bool {
    let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    let identity = map
        .split_whitespace()
        .eq(["0", "0", "4294967295"].iter().copied());
    rustix::process::geteuid().is_root() && identity
}

/// The v1 line for a rule: `a`, or `c 1:3 rwm`.
pub(super) fn v1_line(r: &Rule) -> String {
    let kind = match r.kind {
        Kind::All => return "a".into(),
        Kind::Char => 'c',
        Kind::Block => 'b',
    };
    let n = |v: Option<u32>| v.map_or("*".into(), |v| v.to_string());
    let mut access = String::new();
    for (bit, c) in [(READ, 'r'), (WRITE, 'w'), (MKNOD, 'm')] {
        if r.access & bit != 0 {
            access.push(c);
        }
    }
    format!("{kind} {}:{} {access}", n(r.major), n(r.minor))
}

/// v1: writes the rules in order to the `devices` hierarchy's leaf `dir`.
/// Each file is opened once: the kernel takes every write as one rule.
pub(super) fn apply_v1(dir: &Path, rules: &[Rule]) -> Result<(), CgroupError> {
    use std::io::Write;
    let mut open: [Option<std::fs::File>; 2] = [None, None];
    for r in rules {
        let file = if r.allow {
            "devices.allow"
        } else {
            "devices.deny"
        };
        let path = dir.join(file);
        let line = v1_line(r);
        let slot = &mut open[usize::from(r.allow)];
        let written = match slot {
            Some(f) => Ok(f),
            None => std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map(|f| slot.insert(f)),
        }
        .and_then(|f| f.write_all(line.as_bytes()));
        written.map_err(|source| CgroupError::Write {
            controller: "devices".into(),
            path,
            value: line,
            source,
        })?;
    }
    Ok(())
}

/// The state the rules leave, as the v1 kernel keeps it: a default and exceptions to it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Effective {
    pub default_allow: bool,
    /// Rules whose `allow` is the opposite of the default, in order.
    pub exceptions: Vec<Rule>,
}

/// Folds the rules as the v1 kernel does: `a` resets the default and drops every
/// exception; a rule against the default adds an exception; a rule agreeing with the
/// default takes its access away from the exception of the same device.
pub(super) fn effective(rules: &[Rule]) -> Effective {
    let mut e = Effective {
        default_allow: true,
        exceptions: Vec::new(),
    };
    for r in rules {
        if r.kind == Kind::All {
            e.default_allow = r.allow;
            e.exceptions.clear();
        } else if r.allow != e.default_allow {
            match e.exceptions.iter_mut().find(|x| same_device(x, r)) {
                Some(x) => x.access |= r.access,
                None => e.exceptions.push(*r),
            }
        } else {
            for x in e.exceptions.iter_mut().filter(|x| same_device(x, r)) {
                x.access &= !r.access;
            }
            e.exceptions.retain(|x| x.access != 0);
        }
    }
    e
}

fn same_device(a: &Rule, b: &Rule) -> bool {
    (a.kind, a.major, a.minor) == (b.kind, b.major, b.minor)
}

/// v2: loads the program for the rules and attaches it to the cgroup `dir`.
pub(super) fn apply_v2(dir: &Path, rules: &[Rule]) -> Result<(), CgroupError> {
    let io = |source| CgroupError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let insns = program(&effective(rules));
    let cgroup = std::fs::File::open(dir).map_err(io)?;
    let prog = crate::sys::bpf::load_cgroup_device(&insns, c"Apache").map_err(|source| {
        CgroupError::Io {
            path: dir.join("(BPF_PROG_LOAD cgroup device program)"),
            source,
        }
    })?;
    crate::sys::bpf::attach_cgroup_device(cgroup.as_fd(), prog.as_fd()).map_err(|source| {
        CgroupError::Io {
            path: dir.join("(BPF_PROG_ATTACH BPF_CGROUP_DEVICE)"),
            source,
        }
    })
}

use crate::sys::bpf::Insn;

/// The filter: R1 is `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32
/// minor; }`; each exception is a block that jumps to the next on a mismatch and returns
/// its verdict on a match; the end returns the default. As runc's `devicefilter`.
pub(super) fn program(e: &Effective) -> Vec<Insn> {
    let mut p = vec![
        Insn::ldx_w(2, 1, 0),       // R2 = access_type
        Insn::and32_imm(2, 0xFFFF), // R2 &= 0xffff: the type
        Insn::ldx_w(3, 1, 0),       // R3 = access_type
        Insn::rsh32_imm(3, 16),     // R3 >>= 16: the access asked
        Insn::ldx_w(4, 1, 4),       // R4 = major
        Insn::ldx_w(5, 1, 8),       // R5 = minor
    ];
    for x in &e.exceptions {
        p.extend(block(x));
    }
    p.push(Insn::mov32_imm(0, i32::from(e.default_allow)));
    p.push(Insn::exit());
    p
}

/// One exception: the tests (each a jump to the block's end on a mismatch), then
/// `return verdict`.
fn block(r: &Rule) -> Vec<Insn> {
    // Jumps are patched once the block's length is known.
    let mut tests: Vec<Insn> = Vec::new();
    let kind = match r.kind {
        Kind::Block => 1,
        _ => 2,
    };
    tests.push(Insn::jne_imm(2, kind, 0));
    if r.access != RWM {
        // The access asked must be within the rule's: (R3 & access) == R3.
        tests.push(Insn::mov32_reg(1, 3));
        tests.push(Insn::and32_imm(1, i32::from(r.access)));
        tests.push(Insn::jne_reg(1, 3, 0));
    }
    if let Some(major) = r.major {
        tests.push(Insn::jne_imm(4, major as i32, 0));
    }
    if let Some(minor) = r.minor {
        tests.push(Insn::jne_imm(5, minor as i32, 0));
    }
    tests.push(Insn::mov32_imm(0, i32::from(r.allow)));
    tests.push(Insn::exit());
    let len = tests.len();
    for (i, insn) in tests.iter_mut().enumerate() {
        if insn.is_jump() {
            insn.off = (len - i - 1) as i16;
        }
    }
    tests
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules_of(value: serde_json::Value) -> Vec<Rule> {
        let list: Vec<LinuxDeviceCgroup> = serde_json::from_value(value).expect("rules");
        list.iter()
            .map(parse)
            .collect::<Result<_, _>>()
            .expect("parse")
    }

    fn rule(allow: bool, kind: Kind, major: Option<u32>, minor: Option<u32>, access: u8) -> Rule {
        Rule {
            allow,
            kind,
            major,
            minor,
            access,
        }
    }

    #[test]
    fn oci_rules_parse_to_v1_lines() {
        let r = rules_of(json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rw"},
            {"allow": true, "type": "b", "major": 8, "access": "m"},
            {"allow": true, "type": "c", "major": 10, "minor": -1}
        ]));
        let lines: Vec<String> = r.iter().map(v1_line).collect();
        assert_eq!(lines, ["a", "c 1:3 rw", "b 8:* m", "c 10:* rwm"]);
        assert!(!r[0].allow && r[1].allow);
        let bad: Vec<LinuxDeviceCgroup> =
            serde_json::from_value(json!([{"allow": true, "type": "c", "access": "x"}]))
                .expect("rule");
        assert!(parse(&bad[0]).is_err());
    }

    #[test]
    fn rules_fold_as_the_v1_kernel_keeps_them() {
        // podman/docker: deny all, then allows; a later deny takes access back.
        let mut r = rules_of(json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "r"},
            {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "w"},
            {"allow": false, "type": "c", "major": 1, "minor": 3, "access": "w"}
        ]));
        let e = effective(&r);
        assert!(!e.default_allow);
        assert_eq!(
            e.exceptions,
            [
                rule(true, Kind::Char, Some(1), Some(3), READ | MKNOD),
                rule(true, Kind::Char, Some(1), Some(5), READ | WRITE),
            ]
        );
        // Allow-all (docker --privileged) resets: no exceptions, default allow.
        r.push(rule(true, Kind::All, None, None, RWM));
        r.push(rule(false, Kind::Block, Some(8), None, RWM));
        let e = effective(&r);
        assert!(e.default_allow);
        assert_eq!(e.exceptions, [rule(false, Kind::Block, Some(8), None, RWM)]);
        // No deny-all: the kernel's default (allow) stays.
        assert!(effective(&[]).default_allow);
    }

    #[test]
    fn linux_devices_nodes_are_allowed_after_the_configs_rules() {
        let res: LinuxResources =
            serde_json::from_value(json!({"devices": [{"allow": false, "access": "rwm"}]}))
                .expect("resources");
        let nodes: Vec<LinuxDevice> = serde_json::from_value(
            json!([{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]),
        )
        .expect("nodes");
        let with = resources_for(Some(&res), &nodes).expect("rules");
        let list = with.devices().as_ref().expect("devices");
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].to_string(), "c 10:229 rwm");
        // No rules, no device cgroup: nothing is added.
        let none: LinuxResources = serde_json::from_value(json!({})).expect("resources");
        assert_eq!(resources_for(Some(&none), &nodes), Some(none));
        assert_eq!(resources_for(None, &nodes), None);
    }

    /// Runs the program on one access as the kernel would (a tiny interpreter of the
    /// instructions `program` emits).
    fn run(p: &[Insn], kind: u32, access: u32, major: u32, minor: u32) -> bool {
        let ctx = [(access << 16) | kind, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            let imm = i.imm as i64 as u64;
            pc += 1;
            match i.code {
                0x61 => r[dst] = u64::from(ctx[(i.off / 4) as usize]),
                0x54 => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
                0x74 => r[dst] = ((r[dst] as u32) >> i.imm) as u64,
                0xbc => r[dst] = r[src] as u32 as u64,
                0xb4 => r[dst] = i.imm as u32 as u64,
                0x55 if r[dst] != imm => pc += i.off as usize,
                0x5d if r[dst] != r[src] => pc += i.off as usize,
                0x55 | 0x5d => {}
                0x95 => return r[0] == 1,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn the_v2_program_allows_exactly_what_the_rules_allow() {
        let mut r = rules_of(json!([{"allow": false, "access": "rwm"}]));
        r.extend(DEFAULTS.iter().map(|&(kind, major, minor, access)| Rule {
            allow: true,
            kind,
            major,
            minor,
            access,
        }));
        let p = program(&effective(&r));
        let (c, b) = (2, 1);
        assert!(run(&p, c, READ as u32 | WRITE as u32, 1, 3), "/dev/null rw");
        assert!(run(&p, c, READ as u32, 136, 7), "a pty");
        assert!(run(&p, b, MKNOD as u32, 8, 0), "mknod of a disk");
        assert!(!run(&p, b, READ as u32, 8, 0), "reading a disk");
        assert!(!run(&p, c, READ as u32 | MKNOD as u32, 1, 1), "/dev/mem");
        assert!(!run(&p, c, WRITE as u32, 10, 229), "/dev/fuse");
        // Default allow with one exception.
        let deny_disk =
            rules_of(json!([{"allow": false, "type": "b", "major": 8, "access": "rw"}]));
        let p = program(&effective(&deny_disk));
        assert!(!run(&p, b, READ as u32, 8, 16));
        assert!(run(&p, b, MKNOD as u32, 8, 16));
        assert!(run(&p, c, READ as u32, 1, 1));
    }
}
