use super::pipeline::IN_FLIGHT;
use super::*;

/// An x86-64 ELF file's chunks are stored filtered, anything else's as bare frames,
/// and both come back byte for byte; a version-1 store is upgraded by the import and
/// its old chunks still read.
#[test]
fn x86_files_are_filtered_and_round_trip_in_an_upgraded_store() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let store = Store::open(&dir).unwrap();
    assert_eq!(
        fs::read_to_string(dir.join("format")).unwrap(),
        super::super::STORE_FORMAT
    );
    // A version-1 store holding a version-1 chunk (a bare frame) and its image.
    fs::write(dir.join("format"), super::super::STORE_FORMATS_READ[0]).unwrap();
    let old = b"an old chunk\n".repeat(100);
    let old_id = ChunkId::of(&old);
    fs::write(
        store.chunk_path(&old_id),
        zstd::bulk::compress(&old, 19).unwrap(),
    )
    .unwrap();
    let store = Store::open(&dir).unwrap();

    let exe = fs::read(std::env::current_exe().unwrap()).unwrap();
    let elf = exe[..exe.len().min(3_000_000)].to_vec();
    // Other bytes (the same bytes in a non-ELF file would be the same chunks).
    let not_elf: Vec<u8> = elf.iter().rev().copied().collect();
    let file = |path: &str, size: usize| Entry {
        path: path.into(),
        kind: Kind::File { size: size as u64 },
        mode: 0o755,
        // The extract gives files these owners: ours, so it runs unprivileged too.
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        mtime: Timestamp::default(),
        xattrs: vec![],
    };
    let mut w = store.writer().unwrap();
    let root = Entry {
        kind: Kind::Dir,
        ..file("", 0)
    };
    w.add(root, None).unwrap();
    w.add(file("old", old.len()), Some(&mut &old[..])).unwrap();
    w.add(file("elf", elf.len()), Some(&mut &elf[..])).unwrap();
    w.add(file("not-elf", not_elf.len()), Some(&mut &not_elf[..]))
        .unwrap();
    w.commit("x86", None).unwrap();
    assert_eq!(
        fs::read_to_string(dir.join("format")).unwrap(),
        super::super::STORE_FORMAT
    );

    let index = store.index("x86").unwrap();
    let (mut filtered, mut bare) = (0, 0);
    let stored = store.chunks().unwrap();
    for c in &index.chunks {
        match stored.raw(&c.id).unwrap().unwrap()[0] {
            chunks::FILTER_X86 => filtered += 1,
            0x28 => bare += 1,
            b => panic!("chunk file starts with {b:#x}"),
        }
    }
    if super::super::bcj::is_x86_64_elf(&elf) {
        assert!(
            filtered >= 2 && bare >= 3,
            "{filtered} filtered, {bare} bare"
        );
    }
    let out = tmp.path().join("out");
    let opts = super::super::ExtractOptions {
        sync: false,
        ..Default::default()
    };
    store.extract("x86", &out, &opts).unwrap();
    assert_eq!(fs::read(out.join("old")).unwrap(), old);
    assert_eq!(fs::read(out.join("elf")).unwrap(), elf);
    assert_eq!(fs::read(out.join("not-elf")).unwrap(), not_elf);
}

/// The importing thread waits while IN_FLIGHT bytes are queued, goes on as soon as a
/// chunk is done with or dropped unprocessed, and never waits with nothing in flight.
#[test]
fn chunks_in_flight_stay_within_the_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let writer = store.writer().unwrap();
    let shared = writer.shared.clone();
    let in_flight = || *shared.in_flight.lock().unwrap();

    let oversized = shared.charge(IN_FLIGHT + 1);
    assert_eq!(in_flight(), IN_FLIGHT + 1);
    drop(oversized);
    assert_eq!(in_flight(), 0);

    let queued: Job = (
        ChunkId::of(b"x"),
        Vec::new(),
        Class::Packed,
        shared.charge(IN_FLIGHT - 10),
    );
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let waiter = {
        let shared = shared.clone();
        std::thread::spawn(move || {
            let charge = shared.charge(100);
            done_tx.send(()).unwrap();
            charge
        })
    };
    let timeout = std::time::Duration::from_millis(200);
    assert!(
        done_rx.recv_timeout(timeout).is_err(),
        "charged past the budget"
    );
    drop(queued);
    done_rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    let charge = waiter.join().unwrap();
    assert_eq!(in_flight(), 100);
    drop(charge);
    assert_eq!(in_flight(), 0);
}

/// Every way in names the path it refused.
#[test]
fn escaping_paths_are_entry_errors_naming_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let mut w = store.writer().unwrap();
    let bad = Path::new("a/../../x");
    let entry = Entry {
        path: bad.into(),
        kind: Kind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: Timestamp::default(),
        xattrs: vec![],
    };
    let results = [w.add(entry, None), w.remove(bad), w.clear_dir(bad)];
    for r in results {
        match r {
            Err(StoreError::Entry { path, .. }) => assert_eq!(path, bad),
            other => panic!("{other:?}"),
        }
    }
}
