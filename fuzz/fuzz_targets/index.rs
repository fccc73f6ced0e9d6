//! Fuzzes the image index parser: any bytes give an index or an error, never a panic,
//! and whatever parses re-encodes to the same index.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren::store::index::Index;

fuzz_target!(|data: &[u8]| {
    // The whole file (magic, version, checksum, zstd body)...
    let _ = Index::decode(data);
    // ...and the body parser directly, which the checksum would otherwise shield.
    if let Ok(index) = Index::decode_body(data) {
        assert_eq!(Index::decode(&index.encode()).as_ref(), Ok(&index));
    }
});
