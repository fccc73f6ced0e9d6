use super::sparse::{HOLE, is_zero, write_sparse};
use super::*;
use crate::store::Entry;

/// Pieces of zeros are left out wherever they fall; whole blocks of them are holes.
#[test]
fn write_sparse_skips_zeros_and_keeps_the_rest() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("f");
    let file = File::create(&path).unwrap();
    let mut want = vec![0u8; 64 << 10];
    want[100] = 1;
    want[5000..5003].copy_from_slice(b"abc");
    want[(64 << 10) - 1] = 9;
    // Fed in odd pieces, as chunks cut a file.
    let mut at = 0;
    for piece in want.chunks(3001) {
        let end = write_sparse(&file, at, piece).unwrap();
        assert!((at..=at + piece.len() as u64).contains(&end));
        at += piece.len() as u64;
    }
    file.set_len(want.len() as u64).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), want);
    // Blocks 0, 1 and 15 hold data; the 12 between are holes.
    assert!(
        file.metadata().unwrap().blocks() * 512 <= 4 * HOLE,
        "not sparse"
    );
    assert!(is_zero(&[0; 33]) && !is_zero(&[0, 0, 1]) && !is_zero(&[[0; 16], [1; 16]].concat()));
}
use crate::store::index::{ChunkRef, Record};
use crate::store::{ImportOptions, Timestamp};

/// Whichever way the tree is made durable, DEST gets all of it and nothing is left
/// beside it.
#[test]
fn every_durability_extracts_the_whole_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("d/e")).unwrap();
    std::fs::write(src.join("small"), b"tiny").unwrap();
    std::fs::write(src.join("d/e/big"), vec![7u8; 300_000]).unwrap();
    std::fs::write(src.join("d/empty"), b"").unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    store
        .import_dir(&src, "t", &ImportOptions::default())
        .unwrap();
    let index = store.index("t").unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    for durability in [Durability::None, Durability::Filesystem, Durability::Files] {
        let dest = out.join(format!("{durability:?}"));
        let opts = ExtractOptions::default();
        let report = extract_durably(&store, &index, &dest, &opts, durability).unwrap();
        assert_eq!(report.files, 3, "{durability:?}");
        assert_eq!(std::fs::read(dest.join("small")).unwrap(), b"tiny");
        assert_eq!(
            std::fs::read(dest.join("d/e/big")).unwrap(),
            vec![7u8; 300_000]
        );
        assert_eq!(std::fs::read(dest.join("d/empty")).unwrap(), b"");
    }
    let mut left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["Files", "Filesystem", "None"]);
}

/// Bypasses the index parser's path checks: openat2 alone must keep writes in DEST.
#[test]
fn openat2_keeps_writes_beneath_dest_even_past_the_parser() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"pwned").unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    store
        .import_dir(&src, "good", &ImportOptions::default())
        .unwrap();
    let chunks: Vec<ChunkRef> = store.index("good").unwrap().chunks;
    let rec = |path: &str, kind: Kind| Record {
        entry: Entry {
            path: path.into(),
            kind,
            mode: 0o644,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            mtime: Timestamp::default(),
            xattrs: vec![],
        },
        offset: 0,
    };
    let outside = tmp.path().join("escaped");
    let cases = [
        vec![rec("../escaped", Kind::File { size: 5 })],
        vec![rec(outside.to_str().unwrap(), Kind::File { size: 5 })],
        vec![
            rec(
                "link",
                Kind::Symlink {
                    target: "..".into(),
                },
            ),
            rec("link/escaped", Kind::File { size: 5 }),
        ],
        vec![
            rec(
                "abs",
                Kind::Symlink {
                    target: tmp.path().into(),
                },
            ),
            rec("abs/escaped", Kind::Hardlink { target: "x".into() }),
        ],
    ];
    for (i, mut records) in cases.into_iter().enumerate() {
        records.insert(0, rec("", Kind::Dir));
        let index = Index {
            name: "evil:latest".into(),
            created: 0,
            config: None,
            chunks: chunks.clone(),
            records,
        };
        let dest = tmp.path().join("inner").join(format!("dest{i}"));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let r = extract(&store, &index, &dest, &ExtractOptions::default());
        assert!(r.is_err(), "case {i} extracted");
        assert!(!outside.exists(), "case {i} wrote outside");
        assert!(!tmp.path().join("inner/escaped").exists(), "case {i}");
        assert!(!dest.exists(), "case {i} left DEST");
    }
}

/// A symlink found where a device node should be: its mode is not changed, and the
/// mode never reaches the link's target.
#[test]
fn set_meta_at_never_chmods_through_a_symlink() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let tree = tmp.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    let target = tmp.path().join("target");
    std::fs::write(&target, b"x").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&target, tree.join("node")).unwrap();
    let index = Index {
        name: "t:latest".into(),
        created: 0,
        config: None,
        chunks: vec![],
        records: vec![],
    };
    let root: OwnedFd =
        nix::fcntl::open(&tree, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
    let dir = root.try_clone().unwrap();
    let ctx = Ctx::new(
        store.chunks().unwrap(),
        &index,
        root,
        &tree,
        &ExtractOptions::default(),
        Durability::None,
    );
    let entry = Entry {
        path: "node".into(),
        kind: Kind::Fifo,
        mode: 0o4777,
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        mtime: Timestamp::default(),
        xattrs: vec![],
    };
    let r = ctx.set_meta_at(&entry, dir.as_fd(), OsStr::new("node"), false);
    assert!(r.is_err(), "chmod of a symlink succeeded");
    let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600, "the symlink's target was chmodded");
}
