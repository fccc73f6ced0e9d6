//! Fuzzes the tar guard against the `tar` crate it guards: any bytes, parsed by the crate
//! alone and through the guard, list the same entries (the guard may only stop early at an
//! entry whose headers take more than the limit), and the guarded parse never holds more
//! than a small multiple of the limit in memory, whatever the headers claim. (Entries the
//! crate returns as pax members of their own, unrecognized `x` or global `g`, are never
//! read whole: `layer::decode` refuses or skips them before `pax_extensions` would.)
//!
//! Run: `cargo +nightly fuzz run tar -- -max_len=65536` (in fuzz/). 4M inputs ran clean;
//! the smallest of the minimized corpus are tests/corpus/tar/fuzz-*, replayed by the
//! guard's unit test `corpus_parses_alike_with_and_without_the_guard`.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;
use warren::store::oci::{guard, layer};

/// Counts live heap bytes and their peak while `MEASURE` is set.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static MEASURE: AtomicBool = AtomicBool::new(false);

// SAFETY: every call forwards to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        if MEASURE.load(Ordering::Relaxed) {
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        // SAFETY: the caller's layout is passed on as given.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const LIMIT: u64 = 1024;

/// Reads every entry as an import does (its header decoded by `layer::decode`, its content
/// streamed) through the guard, keeping nothing.
fn guarded(data: &[u8]) {
    let mut archive = guard::Archive::new(data).with_limit(LIMIT);
    let Ok(entries) = archive.entries() else {
        return;
    };
    for (i, e) in entries.enumerate() {
        let Ok(mut e) = e else { return };
        if let Ok(Some(_)) = layer::decode(i, &mut e, &layer::Limits::default()) {
            let _ = std::io::copy(&mut e.by_ref().take(1 << 20), &mut std::io::sink());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    MEASURE.store(true, Ordering::Relaxed);
    guarded(data);
    MEASURE.store(false, Ordering::Relaxed);
    let used = PEAK.load(Ordering::Relaxed) - base;
    assert!(
        used <= 8 * LIMIT as usize + 16384,
        "the guarded parse held {used} bytes with a limit of {LIMIT}"
    );
    if let Err(why) = guard::differential(data, LIMIT) {
        panic!("{why}");
    }
});
