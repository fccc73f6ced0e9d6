//! Where id blocks may come from.
//!
//! As root: the root pool, the `warren:` lines of `/etc/subuid` and `/etc/subgid` (their
//! block-aligned parts). No other user's subordinate range may share an id with it: a user
//! may map any id of its own range with `newuidmap`, and with a container's id it owns the
//! container's files and processes. Registering the range in both files (as podman does
//! with its `containers` entry) also keeps `useradd` from handing those ids to a new user.
//! When neither file has a `warren:` line, the first root use registers one
//! ([`ensure_root_pool`]): [`DEFAULT_POOL`], or the first free span above every line.
//!
//! As an unprivileged user: that user's own lines, which `newuidmap` accepts.

use super::range::{DEFAULT_BLOCK, IdRange, MAX_ID};
use super::reservation::{AllocError, Reservation, io_at};
use super::subid::{Entry, Host, POOL_OWNER, SUBGID, SUBUID};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The range registered when there is none: 0x40000000..0x80000000 (16384 blocks), above
/// Debian useradd's `SUB_UID_MAX` (600100000), so no user added later gets these ids.
pub const DEFAULT_POOL: IdRange = IdRange {
    start: 0x4000_0000,
    len: 0x4000_0000,
};

/// Where blocks may come from: `block`-sized blocks laid from the start of each range.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Pool {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
    pub block: u32,
}

impl Pool {
    /// One range shared by uids and gids: reservations get equal blocks. Check it against
    /// the host with [`Pool::check_host`] before handing out blocks as root.
    pub fn new(range: IdRange, block: u32) -> Result<Self, AllocError> {
        if block == 0 {
            return Err(super::range::RangeError::Empty.into());
        }
        Ok(Pool {
            uids: vec![range],
            gids: vec![range],
            block,
        })
    }

    /// A pool that hands out nothing: for reading, checking and freeing reservations.
    pub fn none() -> Self {
        Pool {
            uids: Vec::new(),
            gids: Vec::new(),
            block: DEFAULT_BLOCK,
        }
    }

    /// The root pool of `host`: the block-aligned parts of the `warren:` lines, refused
    /// when another user's line shares an id with it or an account named warren exists.
    pub fn root(host: &Host, block: u32) -> Result<Self, AllocError> {
        let aligned = |file: &super::subid::Subids| -> Result<Vec<IdRange>, AllocError> {
            let parts: Vec<IdRange> = file
                .owned_by(POOL_OWNER)
                .filter_map(|e| aligned_part(e.range, block))
                .collect();
            if parts.is_empty() {
                return Err(AllocError::NoPool {
                    file: file.path.clone(),
                    block,
                });
            }
            Ok(parts)
        };
        let pool = Pool {
            uids: aligned(&host.subuid)?,
            gids: aligned(&host.subgid)?,
            block,
        };
        pool.check_host(host)?;
        Ok(pool)
    }

    /// The subordinate ids of the calling user (`host.user`/`host.uid`); an error saying
    /// what to add when neither file has a line holding one block.
    pub fn rootless(host: &Host, block: u32) -> Result<Self, AllocError> {
        let name = host.user.as_deref();
        let pick = |file: &super::subid::Subids| -> Result<Vec<IdRange>, AllocError> {
            let mine: Vec<IdRange> = file.of(name, host.uid).map(|e| e.range).collect();
            if mine.iter().any(|r| r.len >= block) {
                return Ok(mine);
            }
            // Suggest a block-aligned range past everyone else's.
            let b = u64::from(block);
            let start = file.highest_end().max(0x10_0000).div_ceil(b) * b;
            let who = host.who();
            let flag = if file.path.ends_with("subgid") {
                "--add-subgids"
            } else {
                "--add-subuids"
            };
            Err(AllocError::TooFewSubids {
                suggest: format!("{who}:{start}:{}", 16 * b),
                usermod: format!("usermod {flag} {start}-{} {who}", start + 16 * b - 1),
                user: who,
                file: file.path.clone(),
                have: mine.iter().map(|r| u64::from(r.len)).sum(),
                need: block,
            })
        };
        Ok(Pool {
            uids: pick(&host.subuid)?,
            gids: pick(&host.subgid)?,
            block,
        })
    }

    /// The pool of the calling user: as root the registered root pool (registering it on
    /// first use), else the user's subordinate ids.
    pub fn for_current_user() -> Result<Self, AllocError> {
        if crate::dirs::is_root() {
            let (pool, registered) =
                ensure_root_pool(Path::new(SUBUID), Path::new(SUBGID), DEFAULT_BLOCK)?;
            if let Some(range) = registered {
                tracing::info!("{}", registered_message(range));
            }
            return Ok(pool);
        }
        Pool::rootless(&Host::current()?, DEFAULT_BLOCK)
    }

    /// Refuses a root pool that shares an id with another user's subordinate range (in
    /// either file), or whose owner name is a host account.
    pub fn check_host(&self, host: &Host) -> Result<(), AllocError> {
        if let Some(uid) = host.pool_owner_account {
            return Err(AllocError::PoolOwnerIsAccount { uid });
        }
        for (file, ranges) in [(&host.subuid, &self.uids), (&host.subgid, &self.gids)] {
            for range in ranges {
                if let Some(other) = file.overlapping_others(POOL_OWNER, *range).next() {
                    return Err(AllocError::PoolOverlap {
                        file: file.path.clone(),
                        pool: *range,
                        other: other.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// True when `uids`/`gids` lie inside this pool.
    pub fn holds(&self, uids: IdRange, gids: IdRange) -> bool {
        let inside = |ranges: &[IdRange], r: IdRange| {
            ranges
                .iter()
                .any(|p| p.start <= r.start && r.end() <= p.end())
        };
        inside(&self.uids, uids) && inside(&self.gids, gids)
    }

    pub(crate) fn symmetric(&self) -> bool {
        self.uids == self.gids
    }
}

impl std::fmt::Display for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |r: &[IdRange]| {
            r.iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        if self.symmetric() {
            write!(f, "pool {}", list(&self.uids))
        } else {
            write!(f, "uids {} / gids {}", list(&self.uids), list(&self.gids))
        }
    }
}

/// The part of `range` made of whole `block`-aligned blocks, if any.
fn aligned_part(range: IdRange, block: u32) -> Option<IdRange> {
    let b = u64::from(block.max(1));
    let start = u64::from(range.start).div_ceil(b) * b;
    let end = range.end() / b * b;
    (end > start).then(|| IdRange {
        start: start as u32,
        len: (end - start) as u32,
    })
}

/// The range to register when there is none: [`DEFAULT_POOL`] when no line shares an id
/// with it, else the first block-aligned span above every line of both files (at most
/// as large as the default).
pub fn plan_registration(host: &Host, block: u32) -> Result<IdRange, AllocError> {
    let lines = || host.subuid.entries.iter().chain(&host.subgid.entries);
    if !lines().any(|e| e.range.overlaps(&DEFAULT_POOL)) {
        return Ok(DEFAULT_POOL);
    }
    let b = u64::from(block.max(1));
    let start = lines()
        .map(|e| e.range.end())
        .max()
        .unwrap_or(0)
        .div_ceil(b)
        * b;
    let room = (u64::from(MAX_ID) + 1).saturating_sub(start) / b * b;
    let len = room.min(u64::from(DEFAULT_POOL.len));
    if len == 0 {
        return Err(AllocError::NoRoomForPool {
            subuid: host.subuid.path.clone(),
            subgid: host.subgid.path.clone(),
        });
    }
    Ok(IdRange {
        start: start as u32,
        len: len as u32,
    })
}

/// The root pool of `subuid`/`subgid`, registering [`plan_registration`]'s range first
/// when the files lack `warren:` lines. Returns the pool and the range it registered.
pub fn ensure_root_pool(
    subuid: &Path,
    subgid: &Path,
    block: u32,
) -> Result<(Pool, Option<IdRange>), AllocError> {
    let host = Host::read(subuid, subgid)?;
    if has_pool_lines(&host) {
        return Ok((Pool::root(&host, block)?, None));
    }
    // None in either file (or in one only, after a crash between the two): register.
    let registered = register(subuid, subgid, None, block)?;
    let host = Host::read(subuid, subgid)?;
    Ok((Pool::root(&host, block)?, registered))
}

/// True when both files have a `warren:` line.
fn has_pool_lines(host: &Host) -> bool {
    host.subuid.owned_by(POOL_OWNER).next().is_some()
        && host.subgid.owned_by(POOL_OWNER).next().is_some()
}

/// Takes the lock shadow's tools (useradd, usermod) hold while they rewrite /etc/passwd,
/// /etc/subuid and the rest: a write lock on `.pwd.lock` beside `subuid` (`lckpwdf`). An
/// open-file-description lock: it conflicts with theirs and with other warren threads'.
/// Released when the returned file is closed.
fn lock_passwd_files(subuid: &Path) -> Result<File, AllocError> {
    let dir = subuid
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let path = dir.join(".pwd.lock");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io_at(&path))?;
    // SAFETY: flock is plain data; all-zero is a valid value, filled in below.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_OFD_SETLKW(&lock))
        .map_err(|e| io_at(&path)(e.into()))?;
    Ok(file)
}

/// Adds a `warren:START:COUNT` line to both files, under shadow's lock (see above):
/// `range`, or (when `None`) the planned default unless both files have `warren:` lines
/// (when only one has, the other gets the same lines: a registration a crash cut short).
/// Refuses a range sharing an id with any line of either file. Every other line is kept
/// byte for byte; each file is replaced atomically. Returns the range it added.
pub fn register(
    subuid: &Path,
    subgid: &Path,
    range: Option<IdRange>,
    block: u32,
) -> Result<Option<IdRange>, AllocError> {
    let _lock = lock_passwd_files(subuid)?;
    let host = Host::read(subuid, subgid)?;
    if let Some(uid) = host.pool_owner_account {
        return Err(AllocError::PoolOwnerIsAccount { uid });
    }
    let lines = |file: &super::subid::Subids| -> Vec<IdRange> {
        file.owned_by(POOL_OWNER).map(|e| e.range).collect()
    };
    let (in_uid, in_gid) = (lines(&host.subuid), lines(&host.subgid));
    let (to_uid, to_gid) = match range {
        Some(r) => (vec![r], vec![r]),
        None => match (in_uid.is_empty(), in_gid.is_empty()) {
            (false, false) => return Ok(None),
            (true, true) => {
                let r = plan_registration(&host, block)?;
                (vec![r], vec![r])
            }
            // A registration cut short between the two files: complete it.
            (false, true) => (Vec::new(), in_uid),
            (true, false) => (in_gid, Vec::new()),
        },
    };
    for (file, adds) in [(&host.subuid, &to_uid), (&host.subgid, &to_gid)] {
        for range in adds {
            if let Some(other) = file.entries.iter().find(|e| e.range.overlaps(range)) {
                return Err(AllocError::RegisterOverlap {
                    file: file.path.clone(),
                    range: *range,
                    other: other.clone(),
                });
            }
            if aligned_part(*range, block).is_none() {
                return Err(AllocError::RegisterTooSmall {
                    range: *range,
                    block,
                });
            }
        }
    }
    for (path, adds) in [(subuid, &to_uid), (subgid, &to_gid)] {
        if !adds.is_empty() {
            let text: String = adds
                .iter()
                .map(|r| format!("{POOL_OWNER}:{}:{}\n", r.start, r.len))
                .collect();
            append_lines(path, &text).map_err(io_at(path))?;
        }
    }
    Ok(to_uid.first().or(to_gid.first()).copied())
}

/// What the CLI prints after registering `range`.
pub fn registered_message(range: IdRange) -> String {
    format!(
        "registered the root id pool `{POOL_OWNER}:{}:{}` in {SUBUID} and {SUBGID} \
         (ids no user's subordinate range may share)",
        range.start, range.len
    )
}

/// Rewrites `path` atomically with `lines` appended, keeping its bytes and mode.
fn append_lines(path: &Path, lines: &str) -> std::io::Result<()> {
    let (mut data, mode) = match std::fs::read(path) {
        Ok(d) => (d, std::fs::metadata(path)?.permissions().mode() & 0o7777),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), 0o644),
        Err(e) => return Err(e),
    };
    if data.last().is_some_and(|b| *b != b'\n') {
        data.push(b'\n');
    }
    data.extend_from_slice(lines.as_bytes());
    crate::atomic::write_with(path, |f| {
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(&data)
    })
}

/// A problem with one existing reservation, as `warren ranges check` reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub name: String,
    pub uids: IdRange,
    pub gids: IdRange,
    pub reason: String,
}

/// The reservations that lie outside `pool` or share ids with a subordinate range of
/// anyone but their owner (`owner`: `warren` as root, the user's lines rootless).
pub fn check_reservations(
    reservations: &[Reservation],
    pool: &Pool,
    host: &Host,
    root: bool,
) -> Vec<Problem> {
    let foreign = |e: &Entry| {
        if root {
            e.owner != POOL_OWNER
        } else {
            !e.is_of(host.user.as_deref(), host.uid)
        }
    };
    let mut problems = Vec::new();
    for r in reservations {
        let mut reasons = Vec::new();
        if !pool.holds(r.uids, r.gids) {
            reasons.push(format!("outside the {pool}"));
        }
        for (file, ids) in [(&host.subuid, r.uids), (&host.subgid, r.gids)] {
            for e in file
                .entries
                .iter()
                .filter(|e| foreign(e) && e.range.overlaps(&ids))
            {
                reasons.push(format!(
                    "shares ids with {} {e} (user {})",
                    file.path.display(),
                    e.owner
                ));
            }
        }
        if !reasons.is_empty() {
            problems.push(Problem {
                name: r.name.clone(),
                uids: r.uids,
                gids: r.gids,
                reason: reasons.join("; "),
            });
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idmap::subid::Subids;

    fn host(subuid: &str, subgid: &str) -> Host {
        Host {
            subuid: Subids::parse("/etc/subuid", subuid).unwrap(),
            subgid: Subids::parse("/etc/subgid", subgid).unwrap(),
            ..Host::default()
        }
    }

    fn r(start: u32, len: u32) -> IdRange {
        IdRange::new(start, len).unwrap()
    }

    #[test]
    fn the_root_pool_is_the_warren_lines_aligned() {
        let text = "user:300000:65536\nwarren:1073741824:1073741824\nwarren:5000:200000\n";
        let pool = Pool::root(&host(text, text), 0x10000).unwrap();
        assert_eq!(pool.uids, [DEFAULT_POOL, r(0x10000, 0x20000)]);
        assert!(pool.symmetric());
        // Only in one file: no pool, naming the file that lacks it.
        let err = Pool::root(&host(text, "user:100000:65536\n"), 0x10000).unwrap_err();
        assert!(matches!(err, AllocError::NoPool { .. }), "{err}");
        assert!(err.to_string().contains("/etc/subgid"), "{err}");
    }

    #[test]
    fn a_pool_overlapping_a_user_is_refused_naming_the_line() {
        let uid = "warren:1073741824:1073741824\n";
        let gid = "alice:100000:65536\nwarren:1073741824:1073741824\nbob:1073807360:65536\n";
        let err = Pool::root(&host(uid, gid), 0x10000).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, AllocError::PoolOverlap { .. }), "{msg}");
        for part in ["/etc/subgid", "line 3", "bob", "newuidmap"] {
            assert!(msg.contains(part), "{part}: {msg}");
        }
        assert!(!msg.contains("`warren "), "CLI advice is bin/'s: {msg}");
        // An explicit pool is checked the same way; an account named warren is refused.
        let h = host("alice:100000:65536\n", "");
        let p = Pool::new(r(0x10000, 0x10000), 0x10000).unwrap();
        let msg = p.check_host(&h).unwrap_err().to_string();
        assert!(
            msg.contains("/etc/subuid line 1") && msg.contains("alice"),
            "{msg}"
        );
        let mut h = host(uid, uid);
        h.pool_owner_account = Some(1234);
        assert!(matches!(
            Pool::root(&h, 0x10000),
            Err(AllocError::PoolOwnerIsAccount { uid: 1234 })
        ));
    }

    #[test]
    fn registration_takes_the_default_or_the_first_free_span_above() {
        let b = 0x10000;
        assert_eq!(plan_registration(&host("", ""), b).unwrap(), DEFAULT_POOL);
        let debian = "user:100000:65536\nuser2:165536:65536\n";
        assert_eq!(
            plan_registration(&host(debian, debian), b).unwrap(),
            DEFAULT_POOL
        );
        let high = "user:100000:65536\nbig:1073741800:100\n";
        let got = plan_registration(&host("", high), b).unwrap();
        assert_eq!(got, r(0x4001_0000, 0x4000_0000));
        let top = "big:2000000000:900000\n";
        let got = plan_registration(&host(top, ""), b).unwrap();
        assert_eq!(got.len, DEFAULT_POOL.len);
        assert!(got.start % b == 0 && u64::from(got.start) >= 2_000_900_000);
        // The last block would hold 2^32-1, which is no id: no room.
        let full = "big:1073741824:3221159936\n";
        assert!(plan_registration(&host(full, ""), b).is_err());
    }

    #[test]
    fn register_keeps_every_other_byte_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let (uid, gid) = (dir.path().join("subuid"), dir.path().join("subgid"));
        std::fs::write(&uid, "alice:100000:65536\n# x\nbob:1073741824:10").unwrap();
        let got = register(&uid, &gid, None, 0x10000).unwrap();
        let expect = r(0x4001_0000, 0x4000_0000);
        assert_eq!(got, Some(expect));
        assert_eq!(
            std::fs::read_to_string(&uid).unwrap(),
            "alice:100000:65536\n# x\nbob:1073741824:10\nwarren:1073807360:1073741824\n"
        );
        assert_eq!(
            std::fs::read_to_string(&gid).unwrap(),
            "warren:1073807360:1073741824\n"
        );
        assert_eq!(register(&uid, &gid, None, 0x10000).unwrap(), None);
        let (pool, again) = ensure_root_pool(&uid, &gid, 0x10000).unwrap();
        assert_eq!((pool.uids, again), (vec![expect], None));
        // A registration cut short after the first file is completed from it.
        std::fs::write(&gid, "carol:5:5\n").unwrap();
        assert_eq!(register(&uid, &gid, None, 0x10000).unwrap(), Some(expect));
        assert_eq!(
            std::fs::read_to_string(&gid).unwrap(),
            "carol:5:5\nwarren:1073807360:1073741824\n"
        );
        // An explicit range may not share ids with any line.
        let err = register(&uid, &gid, Some(r(100000, 1 << 16)), 0x10000).unwrap_err();
        assert!(err.to_string().contains("alice"), "{err}");
    }

    #[test]
    fn rootless_pools_take_every_line_of_the_user() {
        let text = "alice:100000:65536\n1000:300000:65536\nbob:400000:65536\n";
        let mut h = host(text, text);
        h.uid = 1000;
        h.user = Some("alice".into());
        let pool = Pool::rootless(&h, 0x10000).unwrap();
        assert_eq!(pool.uids, [r(100000, 65536), r(300000, 65536)]);
        h.user = Some("carol".into());
        h.uid = 1002;
        let msg = Pool::rootless(&h, 0x10000).unwrap_err().to_string();
        assert!(msg.contains("carol:1048576:1048576"), "{msg}");
        assert!(msg.contains("/etc/subuid"), "{msg}");
    }

    #[test]
    fn check_reports_reservations_outside_or_shared() {
        let text = "alice:100000:65536\nwarren:1073741824:1073741824\n";
        let h = host(text, text);
        let pool = Pool::root(&h, 0x10000).unwrap();
        let res = |name: &str, start| super::super::reservation::Reservation {
            name: name.into(),
            uids: r(start, 0x10000),
            gids: r(start, 0x10000),
        };
        let all = [
            res("ok", 0x4000_0000),
            res("old", 131072),
            res("low", 0x10000),
        ];
        let problems = check_reservations(&all, &pool, &h, true);
        let names: Vec<_> = problems.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["old", "low"]);
        assert!(problems[0].reason.contains("alice"), "{problems:?}");
        assert!(problems[1].reason.contains("outside"), "{problems:?}");
    }
}
