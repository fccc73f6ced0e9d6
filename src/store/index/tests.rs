use super::*;

fn sample() -> Index {
    let e = |path: &str, kind| Entry {
        path: path.into(),
        kind,
        mode: 0o4755,
        uid: 1,
        gid: 2,
        mtime: Timestamp { sec: 3, nsec: 4 },
        xattrs: vec![(b"user.a".to_vec(), b"b".to_vec())],
    };
    Index {
        name: "x:latest".into(),
        created: 5,
        config: Some(b"{}".to_vec()),
        chunks: vec![ChunkRef {
            id: ChunkId::of(b"hello"),
            len: 5,
        }],
        records: vec![
            Record {
                entry: e("", Kind::Dir),
                offset: 0,
            },
            Record {
                entry: e("a", Kind::File { size: 5 }),
                offset: 0,
            },
            Record {
                entry: e("b", Kind::Hardlink { target: "a".into() }),
                offset: 0,
            },
        ],
    }
}

#[test]
fn round_trips() {
    let i = sample();
    assert_eq!(Index::decode(&i.encode()), Ok(i));
}

#[test]
fn reads_versions_1_and_2_only() {
    let i = sample();
    let data = i.encode();
    assert_eq!(data[8..12], VERSION.to_le_bytes());
    for (version, ok) in [(0u32, false), (1, true), (2, true), (3, false)] {
        let mut d = data.clone();
        d[8..12].copy_from_slice(&version.to_le_bytes());
        match Index::decode(&d) {
            Ok(got) => assert!(ok && got == i, "version {version}"),
            Err(e) => assert!(!ok && e == IndexError::Version(version), "{version}: {e}"),
        }
    }
}

#[test]
fn rejects_escapes_and_bad_links() {
    assert!(normalize(Path::new("a/../../b")).is_err());
    assert_eq!(
        normalize(Path::new("/./a//b/")).unwrap(),
        PathBuf::from("a/b")
    );
    let mut i = sample();
    i.records[2].entry.kind = Kind::Hardlink {
        target: "zz".into(),
    };
    assert!(matches!(
        Index::decode(&i.encode()),
        Err(IndexError::Invalid(_))
    ));
    let mut i = sample();
    i.records[1].entry.path = "../a".into();
    assert!(Index::decode(&i.encode()).is_err());
}

#[test]
fn file_count_counts_files_not_links_or_dirs() {
    let mut i = sample();
    assert_eq!(i.file_count(), 1);
    i.records.push(Record {
        entry: Entry {
            path: "c".into(),
            kind: Kind::File { size: 0 },
            ..i.records[1].entry.clone()
        },
        offset: 5,
    });
    assert_eq!(i.file_count(), 2);
}

#[test]
fn every_truncation_is_an_error() {
    let data = sample().encode();
    for n in 0..data.len() {
        assert!(Index::decode(&data[..n]).is_err(), "prefix {n}");
    }
}

#[test]
fn byte_order_and_canonical_check_agree_with_path() {
    let paths: Vec<&[u8]> = vec![
        b"", b"a", b"a-b", b"a.b", b"a b", b"a/b", b"a/b/c", b"a/b-c", b"a/b.c", b"a/bc", b"a0",
        b"a/\x01", b"ab", b"b", b"\xff", b"a/b/c/d", b"a-/b", b"a/-",
    ];
    for a in &paths {
        for b in &paths {
            let (pa, pb) = (
                Path::new(OsStr::from_bytes(a)),
                Path::new(OsStr::from_bytes(b)),
            );
            assert_eq!(super::path_cmp(a, b), pa.cmp(pb), "{pa:?} vs {pb:?}");
        }
    }
    let cases: Vec<&[u8]> = vec![
        b"", b"a", b"a/b", b"/a", b"a/", b"a//b", b"./a", b"a/./b", b"a/.", b".", b"..", b"a/..",
        b"a/../b", b"...", b"a/.b", b"a\0b", b".a",
    ];
    for c in cases {
        let p = Path::new(OsStr::from_bytes(c));
        // Byte for byte: `Path`'s equality would take `a/` and `a//b` as canonical.
        let expected = normalize(p).is_ok_and(|n| n.as_os_str().as_bytes() == c);
        assert_eq!(super::is_canonical(c), expected, "{p:?}");
    }
}

#[test]
fn the_config_alone_is_read_and_checked_like_the_whole_index() {
    let index = sample();
    let bytes = index.encode();
    assert_eq!(Index::decode_config(&bytes).unwrap(), index.config);
    let mut bad = bytes.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(Index::decode_config(&bad).is_err());
    assert!(Index::decode_config(&bytes[..10]).is_err());
}
