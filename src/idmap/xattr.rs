//! The xattrs that carry ids and so must be shifted with a file's owner:
//! `security.capability` (the v3 rootid) and the POSIX ACLs' named users and groups.
//! Pure byte rewriting, shared by `idmap::shift` and `store::extract`.

use super::range::{RangeError, Shift};

pub const CAPABILITY: &str = "security.capability";
pub const ACL_ACCESS: &str = "system.posix_acl_access";
pub const ACL_DEFAULT: &str = "system.posix_acl_default";

const VFS_CAP_REVISION_MASK: u32 = 0xFF00_0000;
const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
const VFS_CAP_REVISION_3: u32 = 0x0300_0000;
const CAP_V2_SIZE: usize = 20;
const CAP_V3_SIZE: usize = 24;

const ACL_VERSION: u32 = 2;
const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;

#[derive(Debug, thiserror::Error)]
pub enum XattrError {
    #[error("malformed {attr} xattr ({len} bytes)")]
    Malformed { attr: &'static str, len: usize },
    #[error(transparent)]
    Range(#[from] RangeError),
}

/// True for the xattrs whose bytes hold ids.
pub fn carries_ids(name: &str) -> bool {
    name == CAPABILITY || name == ACL_ACCESS || name == ACL_DEFAULT
}

/// Rewrites an id-carrying xattr value for `shift`; other xattrs come back unchanged.
pub fn shift_value(name: &str, value: &[u8], shift: Shift) -> Result<Vec<u8>, XattrError> {
    match name {
        CAPABILITY => shift_capability(value, shift),
        ACL_ACCESS | ACL_DEFAULT => shift_acl(name, value, shift),
        _ => Ok(value.to_vec()),
    }
}

/// A v3 capability keeps its bits and gets its rootid shifted; a v2 (or v1) capability,
/// valid in every namespace, becomes v3 owned by the target block's root, so it holds only
/// inside that container. Reading a v3 whose rootid is 0 gives v2 back, so `-s 0` restores.
pub fn shift_capability(value: &[u8], shift: Shift) -> Result<Vec<u8>, XattrError> {
    let malformed = || XattrError::Malformed {
        attr: CAPABILITY,
        len: value.len(),
    };
    let magic = u32::from_le_bytes(
        value
            .get(0..4)
            .ok_or_else(malformed)?
            .try_into()
            .map_err(|_| malformed())?,
    );
    let (bits, rootid) = match (magic & VFS_CAP_REVISION_MASK, value.len()) {
        (VFS_CAP_REVISION_3, CAP_V3_SIZE) => {
            let root = u32::from_le_bytes(value[20..24].try_into().map_err(|_| malformed())?);
            (&value[4..20], root)
        }
        (VFS_CAP_REVISION_2, CAP_V2_SIZE) => (&value[4..20], 0),
        // v1 has one 32-bit word per set; widen it to v2's two words.
        (0x0100_0000, 12) => {
            let mut out = Vec::with_capacity(CAP_V3_SIZE);
            out.extend_from_slice(
                &((magic & !VFS_CAP_REVISION_MASK) | VFS_CAP_REVISION_3).to_le_bytes(),
            );
            out.extend_from_slice(&value[4..8]);
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&value[8..12]);
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&shift.map(0)?.to_le_bytes());
            return Ok(out);
        }
        _ => return Err(malformed()),
    };
    let mut out = Vec::with_capacity(CAP_V3_SIZE);
    out.extend_from_slice(&((magic & !VFS_CAP_REVISION_MASK) | VFS_CAP_REVISION_3).to_le_bytes());
    out.extend_from_slice(bits);
    out.extend_from_slice(&shift.map(rootid)?.to_le_bytes());
    Ok(out)
}

/// Shifts the ids of the named-user and named-group entries of a POSIX ACL xattr.
pub fn shift_acl(name: &str, value: &[u8], shift: Shift) -> Result<Vec<u8>, XattrError> {
    let attr = if name == ACL_DEFAULT {
        ACL_DEFAULT
    } else {
        ACL_ACCESS
    };
    let malformed = || XattrError::Malformed {
        attr,
        len: value.len(),
    };
    if value.len() < 4 || (value.len() - 4) % 8 != 0 {
        return Err(malformed());
    }
    if u32::from_le_bytes([value[0], value[1], value[2], value[3]]) != ACL_VERSION {
        return Err(malformed());
    }
    let mut out = value.to_vec();
    for entry in out[4..].chunks_exact_mut(8) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        if tag == ACL_USER || tag == ACL_GROUP {
            let id = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
            entry[4..8].copy_from_slice(&shift.map(id)?.to_le_bytes());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap_v2(permitted: u32) -> Vec<u8> {
        let mut v = (VFS_CAP_REVISION_2 | 1).to_le_bytes().to_vec();
        v.extend_from_slice(&permitted.to_le_bytes());
        v.extend_from_slice(&[0; 12]);
        v
    }

    #[test]
    fn v2_capability_becomes_v3_owned_by_target_root() {
        let s = Shift::new(0x30000, 0x10000).unwrap();
        let v3 = shift_capability(&cap_v2(1 << 13), s).unwrap();
        assert_eq!(v3.len(), CAP_V3_SIZE);
        assert_eq!(
            u32::from_le_bytes(v3[0..4].try_into().unwrap()),
            VFS_CAP_REVISION_3 | 1
        );
        assert_eq!(&v3[4..20], &cap_v2(1 << 13)[4..20]);
        assert_eq!(u32::from_le_bytes(v3[20..24].try_into().unwrap()), 0x30000);
        let back = shift_capability(&v3, Shift::default()).unwrap();
        assert_eq!(u32::from_le_bytes(back[20..24].try_into().unwrap()), 0);
    }

    #[test]
    fn acl_named_entries_shift_and_others_stay() {
        let mut acl = ACL_VERSION.to_le_bytes().to_vec();
        for (tag, id) in [
            (0x01u16, u32::MAX),
            (ACL_USER, 1000),
            (ACL_GROUP, 50),
            (0x20, u32::MAX),
        ] {
            acl.extend_from_slice(&tag.to_le_bytes());
            acl.extend_from_slice(&7u16.to_le_bytes());
            acl.extend_from_slice(&id.to_le_bytes());
        }
        let s = Shift::new(0x30000, 0x10000).unwrap();
        let out = shift_acl(ACL_ACCESS, &acl, s).unwrap();
        let id =
            |i: usize| u32::from_le_bytes(out[4 + i * 8 + 4..4 + i * 8 + 8].try_into().unwrap());
        assert_eq!(
            (id(0), id(1), id(2), id(3)),
            (u32::MAX, 0x30000 + 1000, 0x30000 + 50, u32::MAX)
        );
        assert_eq!(shift_acl(ACL_ACCESS, &out, Shift::default()).unwrap(), acl);
        assert!(shift_acl(ACL_ACCESS, &acl[..7], s).is_err());
    }

    #[test]
    fn garbage_capability_is_an_error() {
        assert!(shift_capability(&[1, 2, 3], Shift::default()).is_err());
        assert!(shift_capability(&[0; 20], Shift::default()).is_err());
    }
}
