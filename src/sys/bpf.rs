//! The `bpf(2)` calls a cgroup v2 device filter needs (rustix has none): load a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program and attach it to a cgroup. The instruction
//! encoding is `struct bpf_insn`.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// Programs of child cgroups run too (a nested runtime may add its own).
const BPF_F_ALLOW_MULTI: u32 = 2;

/// One eBPF instruction (`struct bpf_insn`): `regs` is dst in the low nibble, src in the
/// high one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            regs: (src << 4) | (dst & 0xf),
            off,
            imm,
        }
    }
    /// `dst = *(u32 *)(src + off)` (BPF_LDX | BPF_MEM | BPF_W).
    pub const fn ldx_w(dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(0x61, dst, src, off, 0)
    }
    /// `dst &= imm` (32-bit ALU).
    pub const fn and32_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(0x54, dst, 0, 0, imm)
    }
    /// `dst >>= imm` (32-bit ALU).
    pub const fn rsh32_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(0x74, dst, 0, 0, imm)
    }
    /// `dst = src` (32-bit ALU).
    pub const fn mov32_reg(dst: u8, src: u8) -> Insn {
        Insn::new(0xbc, dst, src, 0, 0)
    }
    /// `dst = imm` (32-bit ALU).
    pub const fn mov32_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(0xb4, dst, 0, 0, imm)
    }
    /// `if dst != imm goto +off`.
    pub const fn jne_imm(dst: u8, imm: i32, off: i16) -> Insn {
        Insn::new(0x55, dst, 0, off, imm)
    }
    /// `if dst != src goto +off`.
    pub const fn jne_reg(dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(0x5d, dst, src, off, 0)
    }
    /// `return r0`.
    pub const fn exit() -> Insn {
        Insn::new(0x95, 0, 0, 0, 0)
    }
    /// A conditional jump (whose `off` is a target).
    pub fn is_jump(&self) -> bool {
        self.code == 0x55 || self.code == 0x5d
    }
}

/// The `bpf_attr` fields of BPF_PROG_LOAD we set (the kernel zero-fills the rest up to the
/// size we pass, and checks that any tail beyond what it knows is zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

/// The `bpf_attr` of BPF_PROG_ATTACH.
#[repr(C)]
#[derive(Default)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

/// `bpf(cmd, attr, size)`, returning the non-negative result.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, exclusively borrowed repr(C) prefix of `union bpf_attr`
    // and the size passed is its size; every pointer inside it was set by the caller to
    // memory that outlives this call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("bpf returned a bad fd"))?;
    // SAFETY: the kernel just returned this new fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Loads a cgroup device program; on a verifier error the message says why.
pub fn load_cgroup_device(insns: &[Insn], license: &CStr) -> io::Result<OwnedFd> {
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(insns.len()).map_err(|_| io::Error::other("program too long"))?,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    // Without a log first: a log too small for the verifier's output fails the load.
    let e = match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => return owned(fd),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EINVAL)) => e,
        Err(e) => return Err(e),
    };
    let mut log = vec![0u8; 64 * 1024];
    attr.log_level = 1;
    attr.log_size = log.len() as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    let _ = bpf(BPF_PROG_LOAD, &mut attr).map(owned);
    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]);
    let last = text.lines().rev().take(3).collect::<Vec<_>>().join("; ");
    Err(io::Error::new(e.kind(), format!("{e} (verifier: {last})")))
}

/// Attaches `prog` to the cgroup `cgroup` (a directory fd) as its device filter.
pub fn attach_cgroup_device(cgroup: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = ProgAttach {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_encode_as_struct_bpf_insn() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        let i = Insn::ldx_w(2, 1, 4);
        assert_eq!((i.code, i.regs, i.off), (0x61, 0x12, 4));
        assert_eq!(Insn::jne_reg(1, 3, 5).regs, 0x31);
        assert_eq!(std::mem::size_of::<ProgLoad>(), 48);
        assert_eq!(std::mem::size_of::<ProgAttach>(), 16);
    }
}
