//! Decoding one tar entry's header (pass 1 reads headers only).

use std::io::Read;

use super::{Header, HeaderKind, LayerError, Limits, Meta, show};

/// Reads the headers of one layer's tar stream (its content is skipped, not buffered).
/// The reader is left just past the archive's end marker.
pub fn read_headers<R: Read>(
    archive: &mut crate::store::oci::guard::Archive<R>,
    limits: &Limits,
) -> Result<Vec<Header>, LayerError> {
    let mut headers = Vec::new();
    for (index, entry) in archive.entries()?.enumerate() {
        let mut entry = entry?;
        if let Some(header) = decode(index, &mut entry, limits)? {
            headers.push(header);
        }
    }
    Ok(headers)
}

/// Decodes one tar entry's header; `None` for entries that carry no file (global pax).
pub fn decode<R: Read>(
    index: usize,
    entry: &mut tar::Entry<'_, R>,
    limits: &Limits,
) -> Result<Option<Header>, LayerError> {
    use tar::EntryType as T;
    let path = entry.path_bytes().into_owned();
    let header = entry.header();
    let et = header.entry_type();
    let link = || {
        entry
            .link_name_bytes()
            .map(|l| l.into_owned())
            .unwrap_or_default()
    };
    let rdev = || {
        let major = header.device_major().ok().flatten().unwrap_or(0);
        let minor = header.device_minor().ok().flatten().unwrap_or(0);
        libc::makedev(major, minor)
    };
    let kind = match et {
        T::Regular | T::Continuous | T::GNUSparse => HeaderKind::File { size: entry.size() },
        T::Directory => HeaderKind::Dir,
        T::Symlink => HeaderKind::Symlink { target: link() },
        T::Link => HeaderKind::Hardlink { target: link() },
        T::Char => HeaderKind::Char { rdev: rdev() },
        T::Block => HeaderKind::Block { rdev: rdev() },
        T::Fifo => HeaderKind::Fifo,
        T::XGlobalHeader => return Ok(None),
        other => {
            return Err(LayerError::UnsupportedType {
                path: show(&path),
                kind: other.as_byte() as char,
            });
        }
    };
    // Refuse an absurd size before the stream is skipped (or inflated) past it.
    if let HeaderKind::File { size } = kind {
        if size > limits.max_file_size {
            return Err(LayerError::TooLarge {
                path: show(&path),
                what: "file size",
                size,
                limit: limits.max_file_size,
            });
        }
    }
    let mut meta = Meta {
        mode: header.mode().unwrap_or(0o644) & 0o7777,
        uid: u32::try_from(header.uid().unwrap_or(0)).unwrap_or(u32::MAX),
        gid: u32::try_from(header.gid().unwrap_or(0)).unwrap_or(u32::MAX),
        mtime: i64::try_from(header.mtime().unwrap_or(0)).unwrap_or(0),
        mtime_nsec: 0,
        xattrs: Vec::new(),
    };
    read_pax(entry, &path, &mut meta, limits)?;
    meta.xattrs.sort();
    meta.xattrs.dedup_by(|a, b| a.0 == b.0);
    Ok(Some(Header {
        index,
        path,
        kind,
        meta,
    }))
}

/// Applies an entry's pax records (uid, gid, mtime, `SCHILY.xattr.*`) to `meta`.
fn read_pax<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    path: &[u8],
    meta: &mut Meta,
    limits: &Limits,
) -> Result<(), LayerError> {
    let bad = |key: &[u8]| LayerError::BadPax {
        path: show(path),
        key: show(key),
    };
    // Called only for the kinds `decode` accepts: on a pax member returned as an entry (`g`, or an
    // `x` the crate does not recognize) this would read the member whole (see guard.rs).
    if let Some(pax) = entry.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            let (key, value) = (ext.key_bytes(), ext.value_bytes());
            let number = || {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u32>().ok())
            };
            match key {
                b"uid" => meta.uid = number().ok_or_else(|| bad(key))?,
                b"gid" => meta.gid = number().ok_or_else(|| bad(key))?,
                b"mtime" => {
                    (meta.mtime, meta.mtime_nsec) = pax_time(value).ok_or_else(|| bad(key))?
                }
                _ => {
                    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                        if value.len() > limits.max_xattr_size {
                            return Err(LayerError::TooLarge {
                                path: show(path),
                                what: "xattr size",
                                size: value.len() as u64,
                                limit: limits.max_xattr_size as u64,
                            });
                        }
                        meta.xattrs.push((name.to_vec(), value.to_vec()));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Parses a pax time `SECONDS[.FRACTION]` (possibly negative) into seconds and nanoseconds.
pub(super) fn pax_time(value: &[u8]) -> Option<(i64, u32)> {
    let text = std::str::from_utf8(value).ok()?;
    let (sec, frac) = text.split_once('.').unwrap_or((text, ""));
    let sec: i64 = sec.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nsec: u32 = digits.parse().ok()?;
    if sec < 0 && nsec > 0 {
        // -1.5 is 1.5 s before the epoch: -2 s + 0.5 s.
        return Some((sec - 1, 1_000_000_000 - nsec));
    }
    Some((sec, nsec))
}
