//! The one parser of `/etc/subuid` and `/etc/subgid` (`NAME_OR_UID:START:COUNT` per line),
//! used by the allocator ([`super::alloc`]), the map writer ([`super::userns`]) and
//! rootless copies (`mount::rootless`), so a block one hands out is one the others accept.
//!
//! A user owns every line naming it or its uid, as `newuidmap` reads them (shadow matches
//! subgid lines by the user's uid too). A range may span adjacent lines of one owner, as
//! shadow's `have_range` allows.

use super::range::IdRange;
use std::io;
use std::path::{Path, PathBuf};

pub const SUBUID: &str = "/etc/subuid";
pub const SUBGID: &str = "/etc/subgid";

/// The owner name of warren's own subordinate range: the root pool.
pub const POOL_OWNER: &str = "warren";

#[derive(Debug, thiserror::Error)]
pub enum SubidError {
    #[error("{path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} line {line}: {reason} (expected NAME_OR_UID:START:COUNT)")]
    Syntax {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// One line: `owner` may hold ids `range`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// A user name or a numeric uid, as written.
    pub owner: String,
    pub range: IdRange,
    /// 1-based line number in the file.
    pub line: usize,
}

impl Entry {
    /// True when the line belongs to the user `name` (if known) with uid `uid`.
    pub fn is_of(&self, name: Option<&str>, uid: u32) -> bool {
        Some(self.owner.as_str()) == name || self.owner == uid.to_string()
    }
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {} `{}:{}:{}`",
            self.line, self.owner, self.range.start, self.range.len
        )
    }
}

/// The parsed lines of one subuid-format file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subids {
    pub path: PathBuf,
    pub entries: Vec<Entry>,
}

impl Subids {
    /// Parses `text`, read from `path` (named in errors). Blank and `#` lines are skipped,
    /// so are lines granting 0 ids; any other malformed line is an error: a pool or map
    /// checked against a file warren cannot read fully could overlap what it missed.
    pub fn parse(path: impl Into<PathBuf>, text: &str) -> Result<Subids, SubidError> {
        let path = path.into();
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: String| SubidError::Syntax {
                path: path.clone(),
                line: i + 1,
                reason,
            };
            let fields: Vec<&str> = line.split(':').collect();
            let [owner, start, count] = fields[..] else {
                return Err(bad(format!("{} fields instead of 3", fields.len())));
            };
            if owner.is_empty() {
                return Err(bad("no owner".into()));
            }
            let num = |s: &str| {
                s.parse::<u32>()
                    .map_err(|_| bad(format!("{s:?} is not a decimal id")))
            };
            let (start, count) = (num(start)?, num(count)?);
            if count == 0 {
                continue;
            }
            let range = IdRange::new(start, count)
                .map_err(|_| bad(format!("{start}+{count} runs past the highest id")))?;
            entries.push(Entry {
                owner: owner.to_string(),
                range,
                line: i + 1,
            });
        }
        Ok(Subids { path, entries })
    }

    /// Reads and parses `path`; a missing file has no lines.
    pub fn read(path: &Path) -> Result<Subids, SubidError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Subids::parse(path, &text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Subids {
                path: path.to_path_buf(),
                entries: Vec::new(),
            }),
            Err(source) => Err(SubidError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Every line of the user `name`/`uid`, in file order.
    pub fn of<'a>(
        &'a self,
        name: Option<&'a str>,
        uid: u32,
    ) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries.iter().filter(move |e| e.is_of(name, uid))
    }

    /// Every line of `owner` (by the name as written).
    pub fn owned_by<'a>(&'a self, owner: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries.iter().filter(move |e| e.owner == owner)
    }

    /// True when the user's lines hold all of `range` (`newuidmap`'s check: the range may
    /// run across lines that adjoin).
    pub fn covers(&self, name: Option<&str>, uid: u32, range: IdRange) -> bool {
        let mut next = u64::from(range.start);
        while next < range.end() {
            let Some(end) = self
                .of(name, uid)
                .filter(|e| u64::from(e.range.start) <= next && next < e.range.end())
                .map(|e| e.range.end())
                .max()
            else {
                return false;
            };
            next = end;
        }
        true
    }

    /// The lines of owners other than `owner` that share an id with `range`.
    pub fn overlapping_others<'a>(
        &'a self,
        owner: &'a str,
        range: IdRange,
    ) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries
            .iter()
            .filter(move |e| e.owner != owner && e.range.overlaps(&range))
    }

    /// One past the highest id any line grants (0 for an empty file).
    pub fn highest_end(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| e.range.end())
            .max()
            .unwrap_or(0)
    }

    /// The user's lines for an error message: `line 3 `alice:100000:65536`, ...` or none.
    pub fn describe_lines(&self, name: Option<&str>, uid: u32) -> String {
        let lines: Vec<String> = self.of(name, uid).map(Entry::to_string).collect();
        if lines.is_empty() {
            "no line".to_string()
        } else {
            lines.join(", ")
        }
    }
}

/// The host facts id planning depends on: both files, and who is asking. Planning
/// functions take this as an argument so tests cover every layout without root.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Host {
    pub subuid: Subids,
    pub subgid: Subids,
    /// The effective uid and gid of the caller.
    pub uid: u32,
    pub gid: u32,
    /// The caller's user name, when it has one.
    pub user: Option<String>,
    /// The uid of a host account named [`POOL_OWNER`], if one exists: `newuidmap` would let
    /// it map the whole root pool.
    pub pool_owner_account: Option<u32>,
}

impl Host {
    /// The caller's facts, with the subordinate ids read from `subuid` and `subgid`.
    pub fn read(subuid: &Path, subgid: &Path) -> Result<Host, SubidError> {
        let uid = nix::unistd::geteuid();
        let user = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name);
        let pool_owner_account = passwd_uid(
            &std::fs::read_to_string(PASSWD).unwrap_or_default(),
            POOL_OWNER,
        );
        Ok(Host {
            subuid: Subids::read(subuid)?,
            subgid: Subids::read(subgid)?,
            uid: uid.as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            user,
            pool_owner_account,
        })
    }

    /// The caller's facts from `/etc/subuid` and `/etc/subgid`.
    pub fn current() -> Result<Host, SubidError> {
        Host::read(Path::new(SUBUID), Path::new(SUBGID))
    }

    /// The caller's name, or its uid when it has none.
    pub fn who(&self) -> String {
        self.user.clone().unwrap_or_else(|| self.uid.to_string())
    }
}

/// The local account database `newuidmap` reads a caller's name from.
const PASSWD: &str = "/etc/passwd";

/// The uid of account `name` in passwd-format `text`. Read from the file, not through NSS:
/// in the static release build glibc's dlopen'ed NSS modules (libnss_systemd) crash on a
/// name no module knows. An account from a network directory is therefore not seen.
fn passwd_uid(text: &str, name: &str) -> Option<u32> {
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next() == Some(name))
            .then(|| fields.nth(1)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_uid_finds_the_account_by_name() {
        let text = "root:x:0:0:root:/root:/bin/sh\nwarren:x:998:998::/:/bin/false\nbad\n";
        assert_eq!(passwd_uid(text, "warren"), Some(998));
        assert_eq!(passwd_uid(text, "root"), Some(0));
        assert_eq!(passwd_uid(text, "warre"), None);
        assert_eq!(passwd_uid(text, "bad"), None);
    }

    fn r(start: u32, len: u32) -> IdRange {
        IdRange::new(start, len).unwrap()
    }

    #[test]
    fn parses_every_line_of_every_owner() {
        let text = "alice:100000:65536\n\n# note\n1001:165536:65536\nalice:300000:65536\nbob:5:0\n";
        let s = Subids::parse("/etc/subuid", text).unwrap();
        assert_eq!(s.entries.len(), 3);
        let alice: Vec<_> = s.of(Some("alice"), 1000).map(|e| e.line).collect();
        assert_eq!(alice, [1, 5]);
        let by_uid: Vec<_> = s.of(Some("carol"), 1001).map(|e| e.range).collect();
        assert_eq!(by_uid, [r(165536, 65536)]);
        assert_eq!(s.of(None, 1002).count(), 0);
        assert_eq!(s.highest_end(), 300000 + 65536);
    }

    #[test]
    fn errors_name_the_file_and_line() {
        for (text, what) in [
            ("a:1:2\nb:1\n", "2 fields"),
            ("a:1:2\n\nb:x:2\n", "\"x\""),
            ("a:4294967295:2\n", "past the highest"),
            (":1:2\n", "no owner"),
        ] {
            let err = Subids::parse("/etc/subgid", text).unwrap_err().to_string();
            assert!(err.starts_with("/etc/subgid line "), "{err}");
            assert!(err.contains(what), "{err}");
        }
        let err = Subids::parse("/f", "a:1:2\n\nb:x:2\n").unwrap_err();
        assert!(matches!(err, SubidError::Syntax { line: 3, .. }), "{err}");
    }

    #[test]
    fn covers_any_line_and_adjoining_lines() {
        let s = Subids::parse(
            "/etc/subuid",
            "alice:100000:65536\nalice:300000:65536\nalice:365536:100\nbob:165536:65536\n",
        )
        .unwrap();
        let alice = |range| s.covers(Some("alice"), 1000, range);
        assert!(alice(r(100000, 65536)));
        assert!(alice(r(300000, 65536)), "the second line counts");
        assert!(alice(r(300000, 65636)), "adjoining lines together");
        assert!(!alice(r(100000, 65537)));
        assert!(!alice(r(165536, 1)), "bob's ids are not alice's");
        assert!(!s.covers(None, 1000, r(1, 1)));
        let others: Vec<_> = s
            .overlapping_others("alice", r(160000, 10000))
            .map(|e| e.line)
            .collect();
        assert_eq!(others, [4]);
    }
}
