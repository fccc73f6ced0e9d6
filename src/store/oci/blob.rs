//! Blobs: where a layer's bytes are, their expected digests, reading them decompressed
//! (format told by magic bytes, not by name) while hashing what goes by.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::Digest as _;

/// A validated `sha256:HEX` or `sha512:HEX` digest (lowercase hex of the right length),
/// safe to use as a file name under `blobs/ALG/`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    pub algorithm: Algorithm,
    pub hex: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }
}

impl Digest {
    /// Parses a digest string; `None` for anything but lowercase sha256/sha512 hex.
    pub fn parse(s: &str) -> Option<Digest> {
        let (alg, hex) = s.split_once(':')?;
        let (algorithm, len) = match alg {
            "sha256" => (Algorithm::Sha256, 64),
            "sha512" => (Algorithm::Sha512, 128),
            _ => return None,
        };
        let ok = hex.len() == len && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }

    /// The sha256 digest of `data`.
    pub fn sha256(data: &[u8]) -> Digest {
        Digest {
            algorithm: Algorithm::Sha256,
            hex: hex::encode(sha2::Sha256::digest(data)),
        }
    }

    /// `blobs/ALG/HEX`, relative to an OCI layout.
    pub fn blob_path(&self) -> PathBuf {
        Path::new("blobs")
            .join(self.algorithm.name())
            .join(&self.hex)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A running hash of either algorithm.
#[derive(Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest {
                algorithm: Algorithm::Sha256,
                hex: hex::encode(h.finalize()),
            },
            Hasher::Sha512(h) => Digest {
                algorithm: Algorithm::Sha512,
                hex: hex::encode(h.finalize()),
            },
        }
    }
}

/// A reader that hashes everything read through it (when it has a hasher).
pub struct Hashing<R> {
    inner: R,
    hasher: Option<Hasher>,
    pub bytes: u64,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R, algorithm: Option<Algorithm>) -> Self {
        Hashing {
            inner,
            hasher: algorithm.map(Hasher::new),
            bytes: 0,
        }
    }

    /// Reads what is left (the padding after a tar's end marker counts too), then returns
    /// the digest and the number of bytes.
    pub fn finish(mut self) -> io::Result<(Option<Digest>, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((self.hasher.map(Hasher::finish), self.bytes))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.bytes += n as u64;
        Ok(n)
    }
}

/// How a blob's bytes are compressed, told by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Looks at the first bytes of `reader` without consuming them. bzip2 and xz are named
/// so the error can say what was found.
pub fn detect<R: BufRead>(reader: &mut R) -> io::Result<Compression> {
    let head = reader.fill_buf()?;
    Ok(match head {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
        [b'B', b'Z', b'h', ..] => {
            return Err(io::Error::other(
                "bzip2-compressed; recompress with gzip or zstd",
            ));
        }
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => {
            return Err(io::Error::other(
                "xz-compressed; recompress with gzip or zstd",
            ));
        }
        _ => Compression::None,
    })
}

/// Wraps `reader` in the decompressor its magic bytes call for.
pub fn decompress<'a, R: BufRead + 'a>(mut reader: R) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match detect(&mut reader)? {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
    })
}

/// Opens a file to read, refusing anything but a regular file: a FIFO would block the
/// import forever (the open does not block: `O_NONBLOCK`), a device would read without
/// end. With `root`, `path` is resolved beneath it and may not lead out of it.
pub fn open_regular(root: Option<&Path>, path: &Path) -> io::Result<File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY;
    let file = match root {
        None => std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)?,
        Some(root) => {
            let dir = File::open(root)?;
            let fd = crate::sys::openat2(
                std::os::fd::AsFd::as_fd(&dir),
                path,
                flags,
                0,
                crate::sys::RESOLVE_BENEATH,
            )
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EXDEV) => io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "is a symlink (or a path) leading outside the layout {}",
                        crate::store::oci::shorten(&root.display().to_string())
                    ),
                ),
                _ => e,
            })?;
            File::from(fd)
        }
    };
    let t = file.metadata()?.file_type();
    if !t.is_file() {
        let what = if t.is_fifo() {
            "a FIFO"
        } else if t.is_dir() {
            "a directory"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else if t.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is {what}, not a regular file"),
        ));
    }
    Ok(file)
}

/// Where a layer's bytes are: a file, or a span inside one (a member of a docker archive).
#[derive(Clone, Debug)]
pub struct Blob {
    /// For messages: the digest or member name.
    pub name: String,
    /// The file; relative to `root` when there is one.
    pub path: PathBuf,
    /// An OCI layout's directory: `path` is opened beneath it (no symlink leads out).
    pub root: Option<PathBuf>,
    pub offset: u64,
    pub len: Option<u64>,
    /// Digest of the stored (possibly compressed) bytes, from the descriptor.
    pub digest: Option<Digest>,
    /// Size from the descriptor.
    pub size: Option<u64>,
    /// Digest of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: Option<Digest>,
}

impl Blob {
    /// The raw (stored) bytes.
    pub fn open_raw(&self) -> io::Result<Box<dyn Read + Send>> {
        let mut file = open_regular(self.root.as_deref(), &self.path)?;
        if self.offset > 0 {
            file.seek(SeekFrom::Start(self.offset))?;
        }
        Ok(match self.len {
            Some(len) => Box::new(file.take(len)),
            None => Box::new(file),
        })
    }
}

/// A layer opened for reading: verify with `finish` once the tar stream is consumed.
pub struct Opened<'a> {
    pub tar: Hashing<Box<dyn Read + 'a>>,
}

/// Opens a blob decompressed; with `verify`, hashes both the stored bytes and the tar so
/// [`verify`] can compare them with the descriptor and the diff id.
pub fn open(blob: &Blob, verify: bool) -> io::Result<(Opened<'static>, RawCheck)> {
    let raw = Hashing::new(
        blob.open_raw()?,
        blob.digest.as_ref().filter(|_| verify).map(|d| d.algorithm),
    );
    let shared = std::sync::Arc::new(std::sync::Mutex::new(None));
    let raw = Finishing {
        inner: Some(raw),
        out: shared.clone(),
    };
    let tar = decompress(BufReader::with_capacity(1 << 20, raw))?;
    let tar = Expansion {
        inner: tar,
        left: expansion_cap(stored_len(blob)?),
    };
    let tar = Hashing::new(
        Box::new(tar) as Box<dyn Read>,
        blob.diff_id
            .as_ref()
            .filter(|_| verify)
            .map(|d| d.algorithm),
    );
    Ok((Opened { tar }, RawCheck(shared)))
}

/// A layer may decompress to at most this many times its stored size, plus
/// [`EXPANSION_FLOOR`]: a decompression bomb (a small blob of many gigabytes of zeros, in
/// files, extension headers or after the tar's end) is refused once past that.
pub const MAX_EXPANSION: u64 = 100;
pub const EXPANSION_FLOOR: u64 = 512 << 20;

/// The most bytes a blob of `stored` bytes may decompress to.
pub fn expansion_cap(stored: u64) -> u64 {
    EXPANSION_FLOOR.saturating_add(stored.saturating_mul(MAX_EXPANSION))
}

/// The stored (compressed) size of `blob`.
pub fn stored_len(blob: &Blob) -> io::Result<u64> {
    match blob.len.or(blob.size) {
        Some(n) => Ok(n),
        None => Ok(open_regular(blob.root.as_deref(), &blob.path)?
            .metadata()?
            .len()
            .saturating_sub(blob.offset)),
    }
}

/// A decompressed stream that fails past `left` bytes (see [`MAX_EXPANSION`]).
struct Expansion<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Expansion<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::other(format!(
                "decompresses to more than {MAX_EXPANSION} times its size plus {EXPANSION_FLOOR} bytes: refused as a decompression bomb"
            ))
        })?;
        Ok(n)
    }
}

type RawResult = std::sync::Arc<std::sync::Mutex<Option<(Option<Digest>, u64)>>>;

/// The stored bytes' digest and length, available once the decompressor hit their end.
pub struct RawCheck(RawResult);

/// Records the raw digest when the raw stream reaches its end.
struct Finishing {
    inner: Option<Hashing<Box<dyn Read + Send>>>,
    out: RawResult,
}

impl Read for Finishing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(inner) = &mut self.inner else {
            return Ok(0);
        };
        let n = inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            if let Some(done) = self.inner.take() {
                let result = done.finish()?;
                if let Ok(mut out) = self.out.lock() {
                    *out = Some(result);
                }
            }
        }
        Ok(n)
    }
}

/// A digest mismatch or size mismatch, named.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("layer {name}: digest is {actual}, its descriptor says {expected}")]
    Digest {
        name: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("layer {name}: uncompressed digest is {actual}, the config's diff_id says {expected}")]
    DiffId {
        name: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("layer {name}: {actual} bytes, its descriptor says {expected}")]
    Size {
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error("layer {name}: {err}")]
    Io { name: String, err: io::Error },
}

/// After the tar stream was read: drains both streams to their ends and compares the
/// digests and size with what `blob` expects.
pub fn verify(blob: &Blob, opened: Opened<'_>, raw: RawCheck) -> Result<(), VerifyError> {
    let io_err = |source| VerifyError::Io {
        name: blob.name.clone(),
        err: source,
    };
    let (diff, _) = opened.tar.finish().map_err(io_err)?;
    let raw = raw.0.lock().ok().and_then(|mut r| r.take());
    let Some((digest, len)) = raw else {
        return Err(io_err(io::Error::other(
            "trailing data after the compressed stream",
        )));
    };
    if let (Some(expected), Some(actual)) = (&blob.digest, digest) {
        if *expected != actual {
            return Err(VerifyError::Digest {
                name: blob.name.clone(),
                expected: expected.clone(),
                actual,
            });
        }
    }
    if let Some(expected) = blob.size {
        if expected != len {
            return Err(VerifyError::Size {
                name: blob.name.clone(),
                expected,
                actual: len,
            });
        }
    }
    if let (Some(expected), Some(actual)) = (&blob.diff_id, diff) {
        if *expected != actual {
            return Err(VerifyError::DiffId {
                name: blob.name.clone(),
                expected: expected.clone(),
                actual,
            });
        }
    }
    Ok(())
}

/// Hashes a blob's stored bytes and compares them with its descriptor: the root cause to
/// report when a layer fails to decompress or parse.
pub fn check_raw(blob: &Blob) -> Result<(), VerifyError> {
    let Some(expected) = &blob.digest else {
        return Ok(());
    };
    let io_err = |source| VerifyError::Io {
        name: blob.name.clone(),
        err: source,
    };
    let raw = Hashing::new(blob.open_raw().map_err(io_err)?, Some(expected.algorithm));
    let (actual, _) = raw.finish().map_err(io_err)?;
    match actual {
        Some(actual) if actual != *expected => Err(VerifyError::Digest {
            name: blob.name.clone(),
            expected: expected.clone(),
            actual,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_is_bounded() {
        let read = |n: u64, left: u64| {
            let mut e = Expansion {
                inner: io::repeat(0).take(n),
                left,
            };
            io::copy(&mut e, &mut io::sink())
        };
        assert_eq!(read(100, 100).unwrap(), 100);
        let err = read(101, 100).unwrap_err().to_string();
        assert!(err.contains("decompression bomb"), "{err}");
        assert_eq!(expansion_cap(1 << 20), EXPANSION_FLOOR + (100 << 20));
        assert_eq!(expansion_cap(u64::MAX), u64::MAX);
    }

    #[test]
    fn digests_parse_strictly() {
        let hex = "a".repeat(64);
        assert!(Digest::parse(&format!("sha256:{hex}")).is_some());
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_none());
        assert!(Digest::parse("sha256:../../../etc/passwd").is_none());
        assert!(Digest::parse(&format!("md5:{hex}")).is_none());
        assert_eq!(
            Digest::sha256(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn detects_compression_by_magic() {
        let data = b"hello tar".repeat(100);
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            io::Write::write_all(&mut e, &data).unwrap();
            e.finish().unwrap()
        };
        let zs = zstd::encode_all(&data[..], 1).unwrap();
        for (input, kind) in [
            (&data[..], Compression::None),
            (&gz[..], Compression::Gzip),
            (&zs[..], Compression::Zstd),
        ] {
            assert_eq!(detect(&mut BufReader::new(input)).unwrap(), kind);
            let mut out = Vec::new();
            decompress(BufReader::new(input))
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, data);
        }
        assert!(detect(&mut BufReader::new(&b"BZh91AY"[..])).is_err());
    }
}
