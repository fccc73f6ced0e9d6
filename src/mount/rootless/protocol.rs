//! What the caller and the rootless helper say to each other: one JSON object per line
//! over the helper's stdin (caller to helper) and stdout (helper to caller).
//!
//! ```text
//! caller                               helper (re-executed, single-threaded)
//!   Hello { parent, shift, request, nest } ->
//!                                      <- Ready            (in its user namespace)
//!   (newuidmap, newgidmap on its pid,
//!    unless nest: the helper wrote its
//!    maps before Ready)
//!   Go                               ->
//!                                      <- Done { count } | Failed { .. }
//! ```
//!
//! The helper acts only on what comes in here: no argument but the marker, no
//! environment. The work is a closed set of [`Request`]s, not code.

use crate::idmap::range::Shift;
use crate::mount::copy::Plan;
use crate::mount::wire::Bytes;
use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, Write};
use std::os::fd::RawFd;

/// The helper's fd of the caller's kept user namespace, when Hello has [`Nested`] maps.
pub const KEPT_FD: RawFd = 3;

/// The most one message may take: a plan of a million entries with long paths fits.
const MAX_LINE: u64 = 1 << 30;

/// The work the helper does inside the user namespace.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Extract image `image` of the store at `store` into `dest` (a rootless container's
    /// own copy); the count is the entries extracted.
    Extract {
        store: Bytes,
        image: String,
        dest: Bytes,
    },
    /// Remove each of `paths` that exists (trees owned by the block).
    Remove { paths: Vec<Bytes> },
    /// Apply `plan` (owners, xattrs, modes, times read by the caller) to the copy at
    /// `tmp`, then rename it to `view`; on failure remove `tmp`. The count is the entries
    /// whose ids the shift changed.
    ApplyPlan { tmp: Bytes, view: Bytes, plan: Plan },
    /// Create each of `paths` (mode 0755, owned by the block's root) that does not exist:
    /// a container's overlay upper and work dirs.
    MakeDirs { paths: Vec<Bytes> },
}

/// Caller to helper.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToHelper {
    /// `parent` is the caller's pid (the helper's parent, or it refuses); `shift` the
    /// block ids `0..range` inside map onto.
    Hello {
        parent: u32,
        shift: Shift,
        request: Request,
        nest: Option<Nested>,
    },
    /// The maps are written: work.
    Go,
}

/// The helper's maps in the ids of the caller's kept user namespace (`idmap::keeper`,
/// open as [`KEPT_FD`]): the helper makes its namespace inside that one and writes them
/// itself, with no setuid helper, before it says Ready.
#[derive(Debug, Serialize, Deserialize)]
pub struct Nested {
    pub uid_map: String,
    pub gid_map: String,
}

/// Helper to caller.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromHelper {
    /// In its own user namespace, waiting for the maps.
    Ready,
    Done {
        count: u64,
    },
    Failed(Failure),
}

/// Why the helper did not do the work.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failure {
    /// It could not make its user namespace.
    Userns(String),
    /// The work failed (the message names the path).
    Work(String),
}

/// Writes one message as a line and flushes it.
pub fn send<T: Serialize>(out: &mut impl Write, msg: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)?;
    out.flush()
}

/// Reads one message; `Ok(None)` at end of input (the other side is gone).
pub fn recv<T: for<'de> Deserialize<'de>, R: BufRead>(input: &mut R) -> io::Result<Option<T>> {
    let mut line = Vec::new();
    <&mut R as io::Read>::take(input, MAX_LINE).read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a message without its end of line (cut short or too long)",
        ));
    }
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn round_trip<T: Serialize + for<'de> Deserialize<'de>>(msg: &T) -> T {
        let mut buf = Vec::new();
        send(&mut buf, msg).unwrap();
        assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        let mut input = io::Cursor::new(buf);
        let back = recv(&mut input).unwrap().expect("a message");
        assert!(recv::<T, _>(&mut input).unwrap().is_none(), "then the end");
        back
    }

    #[test]
    fn messages_survive_the_wire() {
        let odd = std::ffi::OsStr::from_bytes(b"/x/\xffname\nwith newline");
        let hello = ToHelper::Hello {
            parent: 42,
            shift: Shift {
                to: 0x10000,
                range: 0x10000,
            },
            request: Request::Remove {
                paths: vec![Bytes::from(std::path::Path::new(odd))],
            },
            nest: Some(Nested {
                uid_map: "0 65536 65536\n65536 1000 1\n".into(),
                gid_map: "0 65536 65536\n".into(),
            }),
        };
        match round_trip(&hello) {
            ToHelper::Hello {
                parent: 42,
                shift,
                request: Request::Remove { paths },
                nest: Some(nest),
            } => {
                assert_eq!(shift.to, 0x10000);
                assert_eq!(paths[0].to_path_buf().as_os_str(), odd);
                assert_eq!(nest.uid_map, "0 65536 65536\n65536 1000 1\n");
            }
            other => panic!("{other:?}"),
        }
        for msg in [
            FromHelper::Ready,
            FromHelper::Done { count: 7 },
            FromHelper::Failed(Failure::Work("/a: denied".into())),
        ] {
            assert_eq!(round_trip(&msg), msg);
        }
    }

    #[test]
    fn a_cut_or_garbled_message_is_an_error() {
        let mut cut = io::Cursor::new(b"{\"Done\":{\"count\":1}}".to_vec());
        assert!(recv::<FromHelper, _>(&mut cut).is_err());
        let mut bad = io::Cursor::new(b"hello\n".to_vec());
        assert!(recv::<FromHelper, _>(&mut bad).is_err());
        let mut empty = io::Cursor::new(Vec::new());
        assert!(recv::<FromHelper, _>(&mut empty).unwrap().is_none());
    }

    /// A plan read by the caller applies the same after the trip to the helper.
    #[test]
    fn a_copy_plan_survives_the_wire() {
        if !crate::testing::require_root("applies the plan's owners (all to 0) with chown") {
            return;
        }
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("d/f"), b"x").unwrap();
        std::fs::set_permissions(src.join("d/f"), std::fs::Permissions::from_mode(0o741)).unwrap();
        std::os::unix::fs::symlink("d/f", src.join("l")).unwrap();
        let dst = tmp.path().join("dst");
        let plan =
            crate::mount::copy::copy_deferred(std::slice::from_ref(&src), &dst, None).unwrap();
        let msg = Request::ApplyPlan {
            tmp: Bytes::from(dst.as_path()),
            view: Bytes::default(),
            plan,
        };
        let Request::ApplyPlan { plan, .. } = round_trip(&msg) else {
            panic!("not a plan")
        };
        let uid = nix::unistd::getuid().as_raw();
        let same = Shift { to: 0, range: 0 };
        crate::mount::copy::apply_plan(&dst, &plan, same, same).unwrap();
        let meta = std::fs::metadata(dst.join("d/f")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o741);
        assert_eq!(meta.uid(), uid);
        let mtime = |p: &std::path::Path| std::fs::metadata(p).unwrap().mtime_nsec();
        assert_eq!(mtime(&dst.join("d")), mtime(&src.join("d")));
        assert_eq!(
            std::fs::read_link(dst.join("l")).unwrap(),
            std::path::Path::new("d/f")
        );
    }
}
