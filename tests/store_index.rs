//! The index parser against hostile bytes: a real index truncated, bit-flipped and
//! garbled thousands of times (deterministically), both as a whole file and re-sealed with
//! a valid checksum so the body parser itself is exercised; plus the regression corpus in
//! tests/corpus/index/ (inputs found by `cargo fuzz run index`, see fuzz/). Every input
//! must give an index or an error, never a panic.

use std::path::{Path, PathBuf};

use warren::store::index::{ChunkId, ChunkRef, Index, MAGIC, Record, VERSION};
use warren::store::{Entry, Kind, Timestamp};

fn sample() -> Index {
    let e = |path: &str, kind, xattrs: Vec<(Vec<u8>, Vec<u8>)>| Record {
        entry: Entry {
            path: path.into(),
            kind,
            mode: 0o2755,
            uid: 1000,
            gid: 100,
            mtime: Timestamp {
                sec: 1_700_000_000,
                nsec: 999_999_999,
            },
            xattrs,
        },
        offset: 0,
    };
    let mut records = vec![
        e("", Kind::Dir, vec![]),
        e("bin", Kind::Dir, vec![(b"user.x".to_vec(), b"y".to_vec())]),
        e(
            "bin/sh",
            Kind::File { size: 70_000 },
            vec![(
                b"security.capability".to_vec(),
                vec![0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            )],
        ),
        e(
            "bin/sh2",
            Kind::Hardlink {
                target: "bin/sh".into(),
            },
            vec![],
        ),
        e("dev", Kind::Dir, vec![]),
        e("dev/null", Kind::Char { rdev: 259 }, vec![]),
        e("dev/sda", Kind::Block { rdev: 2048 }, vec![]),
        e("dev/fifo", Kind::Fifo, vec![]),
        e("dev/sock", Kind::Socket, vec![]),
        e(
            "lib",
            Kind::Symlink {
                target: "usr/lib".into(),
            },
            vec![],
        ),
        e("z", Kind::File { size: 30_000 }, vec![]),
    ];
    records.sort_by(|a, b| a.entry.path.cmp(&b.entry.path));
    for r in &mut records {
        if r.entry.path == Path::new("z") {
            r.offset = 70_000;
        }
    }
    Index {
        name: "sample:1".into(),
        created: 1,
        config: Some(br#"{"config":{"Env":["PATH=/bin"]}}"#.to_vec()),
        chunks: vec![
            ChunkRef {
                id: ChunkId::of(b"a"),
                len: 65_536,
            },
            ChunkRef {
                id: ChunkId::of(b"b"),
                len: 34_464,
            },
        ],
        records,
    }
}

/// Wraps a body in a valid header (correct length and checksum).
fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(body).as_bytes());
    out.extend_from_slice(&zstd::bulk::compress(body, 1).unwrap());
    out
}

fn body_of(file: &[u8]) -> Vec<u8> {
    zstd::stream::decode_all(&file[52..]).unwrap()
}

#[path = "../src/testing/mutator.rs"]
mod mutator;
use mutator::Mutator;

#[test]
fn sample_round_trips() {
    let s = sample();
    assert_eq!(Index::decode(&s.encode()), Ok(s.clone()));
    assert_eq!(Index::decode(&seal(&body_of(&s.encode()))), Ok(s));
}

#[test]
fn every_truncation_of_a_real_index_is_an_error() {
    let file = sample().encode();
    for n in 0..file.len() {
        assert!(Index::decode(&file[..n]).is_err(), "file prefix {n}");
    }
    let body = body_of(&file);
    for n in 0..body.len() {
        assert!(Index::decode(&seal(&body[..n])).is_err(), "body prefix {n}");
    }
}

#[test]
fn thousands_of_mutations_never_panic() {
    let file = sample().encode();
    let body = body_of(&file);
    let mut rng = Mutator::new(0x9E37_79B9_7F4A_7C15);
    let mut parsed = 0;
    for _ in 0..20_000 {
        // A mutated file: the checksum catches almost all; no panic either way.
        let _ = Index::decode(&rng.mutate(&file));
        // A mutated body under a valid checksum: the parser itself must cope.
        let m = rng.mutate(&body);
        if let Ok(index) = Index::decode(&seal(&m)) {
            parsed += 1;
            // Whatever parses is self-consistent: it re-encodes to itself.
            assert_eq!(Index::decode(&index.encode()), Ok(index));
        }
    }
    // Some mutations (inside xattr values, names, mtimes) are still valid indexes.
    assert!(parsed > 0);
}

#[test]
fn regression_corpus_never_panics() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/index");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let (file, body) = (Index::decode(&data), Index::decode_body(&data));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // Seeds named valid.* are real indexes (file and body); the rest must not panic.
        if name == "valid.idx" {
            assert!(file.is_ok(), "{name}: {file:?}");
        } else if name == "valid.body" {
            assert!(body.is_ok(), "{name}: {body:?}");
        } else if name.ends_with(".idx") {
            assert!(file.is_err(), "{name} parsed");
        }
        n += 1;
    }
    assert!(n > 0, "empty corpus in {}", dir.display());
}
