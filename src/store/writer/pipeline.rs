//! The import pipeline: chunks cut on the caller's thread are queued, within a memory
//! budget, to worker threads that compress and append the ones the store lacks.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};

use crate::store::compress::{ChunkCompressor, Class};
use crate::store::index::ChunkRef;
use crate::store::pack::PackWriter;
use crate::store::{ChunkId, Progress, Result, Store, StoreError, chunks, io_err};

/// Chunk buffers queued for the writer threads or being compressed take at most this
/// much memory (by capacity; a single bigger chunk still goes). Deep enough that the
/// importing thread and the compressors rarely wait for each other when files change
/// from many small ones to a few big ones: with a queue of 4 chunks the two cores were
/// idle ~11% of an import (docs/BENCHMARKS.md).
pub(super) const IN_FLIGHT: usize = 16 << 20;

/// A chunk on its way to a writer thread: id, bytes, class, and its share of
/// [`IN_FLIGHT`].
pub(super) type Job = (ChunkId, Vec<u8>, Class, Charge);

/// A queued chunk's share of [`IN_FLIGHT`], given back when the chunk is done with or
/// dropped unprocessed (by a worker that is gone): the importing thread never waits for
/// room that cannot come.
pub(super) struct Charge {
    shared: Arc<Shared>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        let mut in_flight = self
            .shared
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *in_flight -= self.bytes;
        self.shared.room.notify_one();
    }
}

pub(super) struct Shared {
    pub(super) store: Store,
    /// Make chunks and index durable before publishing (see `ImageWriter::set_sync`).
    pub(super) sync: std::sync::atomic::AtomicBool,
    pub(super) progress: Arc<Progress>,
    pub(super) error: Mutex<Option<StoreError>>,
    /// What the store held when the import began (the lock we hold keeps gc from
    /// removing any of it).
    pub(super) stored: chunks::Chunks,
    /// The new pack(s), being written.
    pub(super) packs: PackWriter,
    /// The finished packs, until published: (temporary path, final path).
    pub(super) pending: Mutex<Vec<(PathBuf, PathBuf)>>,
    /// Chunk buffers the workers are done with, for the next chunks.
    pub(super) spare: Mutex<Vec<Vec<u8>>>,
    /// Bytes of chunk buffers queued or being compressed (see [`IN_FLIGHT`]), and a signal
    /// when they go down.
    pub(super) in_flight: Mutex<usize>,
    pub(super) room: std::sync::Condvar,
}

impl Shared {
    pub(super) fn fail(&self, e: StoreError) {
        let mut slot = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert(e);
    }
    pub(super) fn failed(&self) -> bool {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }
    pub(super) fn take_error(&self) -> Option<StoreError> {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
    /// Waits until `bytes` more fit in [`IN_FLIGHT`] (or nothing is in flight), and takes
    /// them.
    pub(super) fn charge(self: &Arc<Self>, bytes: usize) -> Charge {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while *in_flight > 0 && *in_flight + bytes > IN_FLIGHT {
            in_flight = self
                .room
                .wait(in_flight)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *in_flight += bytes;
        Charge {
            shared: self.clone(),
            bytes,
        }
    }
}

/// One chunk cut from the stream: record it, and queue it for writing unless this import
/// already queued the same bytes.
pub(super) fn emit(
    data: &[u8],
    chunks: &mut Vec<ChunkRef>,
    seen: &mut HashSet<ChunkId>,
    tx: &Option<SyncSender<Job>>,
    shared: &Arc<Shared>,
    class: Class,
) -> Result<()> {
    let id = ChunkId::of(data);
    chunks.push(ChunkRef {
        id,
        len: data.len() as u32,
    });
    Progress::add(&shared.progress.chunks, 1);
    Progress::add(&shared.progress.bytes, data.len() as u64);
    if seen.insert(id) {
        let mut owned = shared
            .spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default();
        owned.clear();
        owned.extend_from_slice(data);
        let charge = shared.charge(owned.capacity());
        let sent = tx.as_ref().map(|tx| tx.send((id, owned, class, charge)));
        if !matches!(sent, Some(Ok(()))) {
            // Workers are gone: they stopped on an error, which commit/add reports.
            return Err(shared.take_error().unwrap_or_else(|| StoreError::Entry {
                path: PathBuf::new(),
                reason: "chunk writer threads stopped".into(),
            }));
        }
    }
    if shared.failed() {
        return Err(shared.take_error().unwrap_or_else(|| StoreError::Entry {
            path: PathBuf::new(),
            reason: "chunk writer failed".into(),
        }));
    }
    Ok(())
}

/// Compresses and writes queued chunks the store does not already have.
pub(super) fn worker(rx: &Mutex<Receiver<Job>>, shared: &Shared) {
    let mut compressor = ChunkCompressor::default();
    // The chunk file's bytes: filter header, zstd frame. Reused from chunk to chunk.
    let mut out = Vec::new();
    loop {
        let msg = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
        // The charge goes back after the buffer is in `spare` for the next chunk.
        let Ok((id, mut data, class, _charge)) = msg else {
            return;
        };
        // After a failure, keep draining so the producer never blocks forever.
        if !shared.failed()
            && let Err(e) = store_chunk(shared, &mut compressor, &mut out, id, &mut data, class)
        {
            shared.fail(e);
        }
        shared
            .spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(data);
    }
}

/// Appends chunk `id` (`data`, of class `class`) to the new pack, unless the store has it
/// (then it is reused: the lock we hold keeps gc from removing it).
fn store_chunk(
    shared: &Shared,
    compressor: &mut ChunkCompressor,
    out: &mut Vec<u8>,
    id: ChunkId,
    data: &mut [u8],
    class: Class,
) -> Result<()> {
    if shared.stored.contains(&id) {
        return Ok(());
    }
    compressor
        .encode(data, class, out)
        .map_err(io_err(format!("zstd compressing chunk {id}")))?;
    shared.packs.append(id, out)?;
    let p = &shared.progress;
    Progress::add(&p.new_chunks, 1);
    Progress::add(&p.new_bytes, data.len() as u64);
    Progress::add(&p.stored_bytes, out.len() as u64);
    Ok(())
}
