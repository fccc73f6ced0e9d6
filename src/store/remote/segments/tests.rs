//! Segmented packs: written, fetched, checked; and what is refused.

use super::*;

/// A pack served from memory.
struct Mem(Vec<u8>);

impl Transport for Mem {
    fn get(&self, _: &str, range: Range, limit: u64) -> Result<Vec<u8>, RemoteError> {
        let n = self.0.len() as u64;
        let (at, len) = match range {
            Range::Whole => (0, n),
            Range::Span(at, len) => (at, len),
            Range::Last(len) => (n - len, len),
        };
        assert!(len <= limit && at + len <= n);
        Ok(self.0[at as usize..(at + len) as usize].to_vec())
    }
}

fn text(i: usize) -> Vec<u8> {
    format!("chunk {i}: some words said again and again\n")
        .repeat(300)
        .into_bytes()
}

/// A pack of segments of `per` chunks each, `n` chunks; chunk `lie`'s id in the
/// table is another's.
fn pack(dir: &Path, n: usize, per: usize, lie: Option<usize>) -> (Vec<u8>, Vec<ChunkId>) {
    let path = dir.join(format!("p{n}.{per}.{lie:?}"));
    let mut w = Writer::create(&path).unwrap();
    let ids: Vec<ChunkId> = (0..n).map(|i| ChunkId::of(&text(i))).collect();
    for seg in (0..n).collect::<Vec<_>>().chunks(per) {
        let raw: Vec<u8> = seg.iter().flat_map(|&i| text(i)).collect();
        let chunks: Vec<_> = seg
            .iter()
            .map(|&i| {
                let id = if lie == Some(i) {
                    ids[(i + 1) % n]
                } else {
                    ids[i]
                };
                (id, text(i).len() as u32, false)
            })
            .collect();
        w.add(&chunks, &zstd::bulk::compress(&raw, 3).unwrap())
            .unwrap();
    }
    w.finish(3).unwrap();
    (std::fs::read(&path).unwrap(), ids)
}

fn pull(data: Vec<u8>, want: &[(ChunkId, u32)], dir: &Path) -> Result<usize, RemoteError> {
    let mem = Mem(data);
    let url: Arc<str> = "mem://pack".into();
    let mut plan = Plan::new(tables(&mem, &[url])?);
    for (id, len) in want {
        assert!(plan.want(id, *len)?, "{id} is in the pack");
    }
    let writer = PackWriter::new(dir);
    let mut n = 0;
    for b in plan.batches(1 << 20) {
        n += fetch(&mem, &writer, &b)?.len();
    }
    Ok(n)
}

#[test]
fn fetches_the_segments_of_the_chunks_wanted_each_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (data, ids) = pack(dir.path(), 10, 3, None);
    let segs = parse(&data).unwrap();
    assert_eq!(
        segs.iter().map(|s| s.chunks.len()).collect::<Vec<_>>(),
        [3, 3, 3, 1]
    );
    assert_eq!(
        segs[1].chunks[2].offset,
        (text(3).len() + text(4).len()) as u32
    );
    // Chunks 4 and 9: two segments, one request each (they are not adjacent).
    let want: Vec<_> = [4, 9]
        .iter()
        .map(|&i| (ids[i], text(i).len() as u32))
        .collect();
    let mut plan = Plan::new(tables(&Mem(data.clone()), &["m".into()]).unwrap());
    for (id, len) in &want {
        assert!(plan.want(id, *len).unwrap());
    }
    assert!(!plan.want(&ChunkId::of(b"elsewhere"), 9).unwrap());
    let batches = plan.batches(1 << 20);
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[0].bytes, segs[1].stored);
    assert_eq!(pull(data.clone(), &want, dir.path()).unwrap(), 2);
    // Adjacent segments go in one request.
    let want: Vec<_> = [2, 3]
        .iter()
        .map(|&i| (ids[i], text(i).len() as u32))
        .collect();
    let mut plan = Plan::new(tables(&Mem(data), &["m".into()]).unwrap());
    for (id, len) in &want {
        plan.want(id, *len).unwrap();
    }
    assert_eq!(plan.batches(1 << 20).len(), 1);
}

#[test]
fn a_chunk_that_is_not_what_the_table_says_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (data, ids) = pack(dir.path(), 6, 3, Some(4));
    // The table says chunk 4 holds chunk 5's id: chunk 5 comes out of the wrong bytes.
    let want = [(ids[5], text(4).len() as u32)];
    let err = pull(data, &want, dir.path()).unwrap_err();
    assert!(
        matches!(&err, RemoteError::BadChunk { chunk, .. } if *chunk == ids[5]),
        "{err}"
    );
    // A length that is not the index's is refused before anything is fetched.
    let (data, ids) = pack(dir.path(), 6, 3, None);
    let err = pull(data, &[(ids[1], 7)], dir.path()).unwrap_err();
    assert!(err.to_string().contains("the index says 7"), "{err}");
}

#[test]
fn corrupt_tables_segments_and_versions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (data, ids) = pack(dir.path(), 6, 3, None);
    let want = [(ids[0], text(0).len() as u32)];
    let n = data.len();
    // A segment's frame damaged: corrupt, whatever zstd makes of it.
    let mut bad = data.clone();
    bad[HEADER as usize + 20] ^= 0x40;
    let err = pull(bad, &want, dir.path()).unwrap_err();
    assert!(err.to_string().contains("corrupt"), "{err}");
    // The table damaged: its checksum.
    let mut bad = data.clone();
    bad[n - TRAILER - 3] ^= 1;
    let err = pull(bad, &want, dir.path()).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    // A version this warren does not know, in the trailer and in the header.
    let mut bad = data.clone();
    bad[n - TRAILER + 16] = 2;
    let err = pull(bad.clone(), &want, dir.path()).unwrap_err();
    assert!(
        err.to_string().contains("version 2, this warren reads 1"),
        "{err}"
    );
    assert!(parse(&bad).is_err());
    let mut bad = data.clone();
    bad[8] = 2;
    assert!(parse(&bad).unwrap_err().contains("version 2"));
    // Not a segmented pack at all.
    let mut bad = data.clone();
    bad[n - 1] ^= 1;
    assert!(pull(bad, &want, dir.path()).is_err());
    parse(&data).unwrap();
}

#[test]
fn a_segment_bigger_than_its_table_says_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb");
    let mut w = Writer::create(&path).unwrap();
    let small = text(0);
    let id = ChunkId::of(&small);
    // The frame holds 64 MiB; the table says one small chunk.
    let frame = zstd::bulk::compress(&vec![0u8; 64 << 20], 3).unwrap();
    w.add(&[(id, small.len() as u32, false)], &frame).unwrap();
    w.finish(3).unwrap();
    let data = std::fs::read(&path).unwrap();
    let err = pull(data, &[(id, small.len() as u32)], dir.path()).unwrap_err();
    assert!(err.to_string().contains("corrupt"), "{err}");
    // A table that gives a segment a frame far past any segment's bound: refused
    // before anything is fetched.
    let path = dir.path().join("huge");
    let mut w = Writer::create(&path).unwrap();
    w.add(&[(id, small.len() as u32, false)], &vec![0u8; 9 << 20])
        .unwrap();
    w.finish(3).unwrap();
    let err = pull(std::fs::read(&path).unwrap(), &[(id, 1)], dir.path()).unwrap_err();
    assert!(err.to_string().contains("a frame of"), "{err}");
}

/// Pack `data` with its table replaced by `plain`, compressed and sealed again: what a
/// hostile writer makes (the checksum is no defence against the writer).
fn reseal(data: &[u8], plain: &[u8]) -> Vec<u8> {
    let trailer = &data[data.len() - TRAILER..];
    let at = u64::from_le_bytes(trailer[..8].try_into().unwrap());
    let table = zstd::bulk::compress(plain, 1).unwrap();
    let mut out = data[..at as usize].to_vec();
    out.extend_from_slice(&table);
    out.extend_from_slice(&at.to_le_bytes());
    out.extend_from_slice(&(table.len() as u64).to_le_bytes());
    out.extend_from_slice(&trailer[16..24]);
    out.extend_from_slice(&blake3::hash(&table).as_bytes()[..8]);
    out.extend_from_slice(END_MAGIC);
    out
}

/// What a pull relies on in any table that parses: frames back to back from the header
/// to the table, chunks back to back in each segment, every length within bounds.
fn assert_consistent(segs: &[Segment], table_at: u64) {
    let mut at = HEADER;
    for s in segs {
        assert_eq!(s.at, at);
        assert!(s.stored > 0 && s.raw <= MAX_SEGMENT);
        let mut offset = 0u64;
        for c in &s.chunks {
            assert_eq!(u64::from(c.offset), offset);
            assert!(c.len > 0 && c.len as usize <= chunker::MAX_SIZE);
            offset += u64::from(c.len);
        }
        assert_eq!(offset, s.raw);
        at += s.stored;
    }
    assert_eq!(at, table_at);
}

#[test]
fn hostile_packs_tables_and_frames_are_refused_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = pack(dir.path(), 12, 4, None);
    let segs = parse(&data).unwrap();
    let trailer: &[u8; TRAILER] = data[data.len() - TRAILER..].try_into().unwrap();
    let (table_at, table_len) = table_span(trailer).unwrap();
    let table = &data[table_at as usize..(table_at + table_len) as usize];
    let plain = zstd::bulk::decompress(table, 1 << 20).unwrap();
    let mut m = crate::testing::Mutator::new(0x5EED_0F5E);
    let mut parsed = 0;
    for _ in 0..5_000 {
        // Any bytes of the pack: the framing or the checksum refuse almost all.
        if let Ok(got) = parse(&m.mutate(&data)) {
            assert_eq!(got, segs);
        }
        // A table its writer sealed: the parser's own checks are all there is.
        if let Ok(got) = parse(&reseal(&data, &m.mutate(&plain))) {
            parsed += 1;
            // The frames are untouched: the table starts where it did.
            assert_consistent(&got, table_at);
        }
        // A segment's frame changed in flight: exactly its declared bytes, or an error.
        let s = &segs[m.below(segs.len())];
        let frame = &data[s.at as usize..(s.at + s.stored) as usize];
        if let Ok(raw) = decompress(s, &m.mutate(frame)) {
            assert_eq!(raw.len() as u64, s.raw);
        }
    }
    // Some edits (inside chunk ids) still make a table that parses.
    assert!(parsed > 0);
}
