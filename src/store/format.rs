//! The store's on-disk constants in one place (as casync's `caformat.h`): magic numbers,
//! version numbers, and the names and suffixes of its files. docs/FORMAT.md describes the
//! layouts; a change here is a change of the format and goes with a new version there.
//! The chunker's sizes are part of the format too ([`super::chunker::SMALL`],
//! [`super::chunker::LARGE`], [`super::chunker::ALIGN`]).

/// Content of `STORE/format`.
pub const STORE_FORMAT: &str = "warren-store 3\n";
/// Older stores, read as they are: version 1 (no filtered chunks, smaller chunks),
/// version 2 (loose chunks only). The first import or pull into one rewrites its format
/// file to the current version (see docs/FORMAT.md).
pub const STORE_FORMATS_READ: [&str; 2] = ["warren-store 1\n", "warren-store 2\n"];
/// The file holding [`STORE_FORMAT`], in the store's root.
pub const FORMAT_FILE: &str = "format";
/// The store's lock file (flock: shared by writers, exclusive for gc).
pub const LOCK_FILE: &str = "lock";
/// Loose chunks, in 256 prefix dirs: `chunks/ab/<blake3 hex>.zst`.
pub const CHUNKS_DIR: &str = "chunks";
/// Packs and their list.
pub const PACKS_DIR: &str = "packs";
/// Indexes: `images/NAME/TAG.idx`.
pub const IMAGES_DIR: &str = "images";
/// The marker of a store meant to be served (`warren store push` writes one).
pub const PUBLISHED: &str = "published";

/// First bytes of every index file.
pub const INDEX_MAGIC: &[u8; 8] = b"WRNINDEX";
/// The index format version this code writes. Version 1 (the same layout, in a store
/// whose chunks are all bare zstd frames of at most 256 KiB) is read too; version 2 only
/// tells a warren that knows version 1 alone, pulling from a newer store, that it cannot
/// read its chunks (docs/FORMAT.md).
pub const INDEX_VERSION: u32 = 2;
/// Suffix of an index file: `images/NAME/TAG.idx`.
pub const INDEX_SUFFIX: &str = ".idx";

/// The index of image `name:tag` relative to [`IMAGES_DIR`]: `NAME/TAG.idx`.
pub fn index_rel(name: &str, tag: &str) -> String {
    format!("{name}/{tag}{INDEX_SUFFIX}")
}

/// First bytes of a pack file.
pub const PACK_MAGIC: &[u8; 8] = b"wrnpack\0";
/// Last bytes of a pack file (the end of its trailer).
pub const PACK_END_MAGIC: &[u8; 8] = b"wrnpend\0";
/// The pack format version.
pub const PACK_VERSION: u32 = 1;
/// Suffix of a pack file: `packs/<BLAKE3 of its table>.pack`.
pub const PACK_SUFFIX: &str = ".pack";
/// The file in `packs/` naming every published pack, one per line: what a client of a
/// served store reads to find them (a web server need not list directories).
pub const PACK_LIST: &str = "list";

/// Suffix of a loose chunk file: `chunks/ab/<blake3 hex>.zst`.
pub const CHUNK_SUFFIX: &str = ".zst";

/// A loose chunk's file relative to the store's root: `chunks/ab/<hex>.zst`.
pub fn chunk_rel(id: &super::ChunkId) -> String {
    let hex = id.to_string();
    format!("{CHUNKS_DIR}/{}/{hex}{CHUNK_SUFFIX}", &hex[..2])
}
/// First byte of a chunk file whose bytes went through the x86 branch filter
/// (`bcj::encode`) before zstd; the zstd frame follows. A chunk file without a filter
/// is a bare zstd frame (its first byte is 0x28, the frame magic's).
pub const FILTER_X86: u8 = 0x01;
