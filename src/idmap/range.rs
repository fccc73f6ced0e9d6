//! Id ranges: a block of uids/gids and the shift mapping of the original `shift-own`
//! (the `uid_map` lines that give a user namespace a block: [`super::userns`]).

use std::fmt;
use std::str::FromStr;

/// The highest id a file may be owned by: 2^32-1 is `(uid_t)-1`, "no change" to chown.
pub const MAX_ID: u32 = u32::MAX - 1;

/// The default size of one container's block: 65536 ids.
pub const DEFAULT_BLOCK: u32 = 0x10000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RangeError {
    #[error("invalid id or count {0:?}: expected a decimal or 0x-prefixed hex number")]
    Parse(String),
    #[error("a range of 0 ids is empty")]
    Empty,
    #[error("id range {start}+{len} runs past the highest id {MAX_ID}")]
    Overflow { start: u32, len: u32 },
    #[error("id {id} shifted by {shift} lands past the highest id {MAX_ID}")]
    ShiftOverflow { id: u32, shift: Shift },
}

/// Parses a decimal or `0x` hex id/count: `196608`, `0x30000`.
pub fn parse_id(s: &str) -> Result<u32, RangeError> {
    let t = s.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => t.parse(),
    };
    parsed.map_err(|_| RangeError::Parse(s.to_string()))
}

/// A contiguous block of ids `start .. start + len`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct IdRange {
    pub start: u32,
    pub len: u32,
}

impl IdRange {
    pub fn new(start: u32, len: u32) -> Result<Self, RangeError> {
        if len == 0 {
            return Err(RangeError::Empty);
        }
        if u64::from(start) + u64::from(len) - 1 > u64::from(MAX_ID) {
            return Err(RangeError::Overflow { start, len });
        }
        Ok(IdRange { start, len })
    }

    /// One past the last id.
    pub fn end(&self) -> u64 {
        u64::from(self.start) + u64::from(self.len)
    }

    pub fn contains(&self, id: u32) -> bool {
        id >= self.start && u64::from(id) < self.end()
    }

    pub fn overlaps(&self, other: &IdRange) -> bool {
        u64::from(self.start) < other.end() && u64::from(other.start) < self.end()
    }

    /// The shift that moves ids into this block: `u -> start + (u mod len)`.
    pub fn shift(&self) -> Shift {
        Shift {
            to: self.start,
            range: self.len,
        }
    }
}

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}+{:#x}", self.start, self.len)
    }
}

/// The mapping of the original `shift-own -s SHIFT -r RANGE`: id `u` becomes
/// `to + (u mod range)`. Idempotent, and `to = 0` brings a shifted tree back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Shift {
    pub to: u32,
    pub range: u32,
}

impl Default for Shift {
    fn default() -> Self {
        Shift {
            to: 0,
            range: DEFAULT_BLOCK,
        }
    }
}

impl Shift {
    pub fn new(to: u32, range: u32) -> Result<Self, RangeError> {
        IdRange::new(to, range)?;
        Ok(Shift { to, range })
    }

    /// The shifted id, or an error when it would land past `MAX_ID`.
    pub fn map(&self, id: u32) -> Result<u32, RangeError> {
        let mapped = u64::from(self.to) + u64::from(id % self.range.max(1));
        u32::try_from(mapped)
            .ok()
            .filter(|m| *m <= MAX_ID)
            .ok_or(RangeError::ShiftOverflow { id, shift: *self })
    }

    /// The target block this shift lands ids in.
    pub fn target(&self) -> IdRange {
        IdRange {
            start: self.to,
            len: self.range,
        }
    }
}

impl fmt::Display for Shift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x} using range {:#x}", self.to, self.range)
    }
}

impl FromStr for IdRange {
    type Err = RangeError;

    /// `START+LEN` or `START:LEN`, each decimal or hex.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (start, len) = s
            .split_once(['+', ':'])
            .ok_or_else(|| RangeError::Parse(s.to_string()))?;
        IdRange::new(parse_id(start)?, parse_id(len)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_decimal_and_hex() {
        assert_eq!(parse_id("196608"), Ok(196608));
        assert_eq!(parse_id("0x30000"), Ok(0x30000));
        assert!(parse_id("0x").is_err());
        assert!(parse_id("-1").is_err());
        assert!(parse_id("4294967296").is_err());
    }

    #[test]
    fn shift_is_idempotent_and_reversible() {
        let s = Shift::new(0x30000, 0x10000).unwrap();
        assert_eq!(s.map(0), Ok(196608));
        assert_eq!(s.map(1000), Ok(0x30000 + 1000));
        assert_eq!(s.map(s.map(1000).unwrap()), s.map(1000));
        assert_eq!(Shift::default().map(0x30000 + 42), Ok(42));
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        let s = Shift::new(0xFFFF_0000, 0xFFFF).unwrap();
        assert!(s.map(0xFFFE).is_ok());
        assert!(Shift::new(0xFFFF_0000, 0x10000).is_err());
        assert_eq!(IdRange::new(0, 0), Err(RangeError::Empty));
        assert!(IdRange::new(u32::MAX - 10, 11).is_err());
        assert!(IdRange::new(u32::MAX - 11, 11).is_ok());
    }

    #[test]
    fn ranges_overlap_and_render() {
        let a: IdRange = "0x10000+0x10000".parse().unwrap();
        let b: IdRange = "131072:65536".parse().unwrap();
        assert!(!a.overlaps(&b));
        assert!(a.overlaps(&IdRange::new(0x1ffff, 2).unwrap()));
        assert!(a.contains(0x1ffff) && !a.contains(0x20000));
    }
}
