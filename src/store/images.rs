//! What the store holds: reading, listing and removing images' indexes, and figures.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use super::{Index, Result, Store, StoreError, chunks, format, io_err};

/// What an image holds (from its index) and, right after an import, what it added.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImageInfo {
    pub name: String,
    pub created: i64,
    pub entries: u64,
    pub files: u64,
    /// Sum of file sizes.
    pub content_bytes: u64,
    /// Chunks in the content stream (with repeats).
    pub chunks: u64,
    /// Distinct chunks.
    pub unique_chunks: u64,
    /// Size of the index file.
    pub index_bytes: u64,
    /// Size of the config blob, if any.
    pub config_bytes: Option<u64>,
    /// Chunks this import added to the store (0 outside an import).
    pub new_chunks: u64,
    /// Compressed bytes this import added to the store, index included (0 outside an import).
    pub new_bytes: u64,
}

impl ImageInfo {
    pub(super) fn of(index: &Index, index_bytes: u64) -> ImageInfo {
        let unique: std::collections::HashSet<_> = index.chunks.iter().map(|c| c.id).collect();
        ImageInfo {
            name: index.name.clone(),
            created: index.created,
            entries: index.records.len() as u64,
            files: index.file_count(),
            content_bytes: index.content_bytes(),
            chunks: index.chunks.len() as u64,
            unique_chunks: unique.len() as u64,
            index_bytes,
            config_bytes: index.config.as_ref().map(|c| c.len() as u64),
            new_chunks: 0,
            new_bytes: 0,
        }
    }
}

/// Whole-store figures for `warren store stats`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Stats {
    pub images: u64,
    /// Distinct chunks, packed or loose.
    pub chunks: u64,
    /// Pack files (the rest of the chunks are loose files).
    pub packs: u64,
    /// Bytes of every pack and loose chunk file (compressed chunks, pack tables).
    pub chunk_bytes: u64,
    /// Bytes of every index file.
    pub index_bytes: u64,
    /// chunk_bytes + index_bytes: what the store costs on disk (excluding fs overhead).
    pub stored_bytes: u64,
    /// Sum over images of their file contents: what plain copies would cost.
    pub logical_bytes: u64,
    /// logical_bytes / stored_bytes.
    pub dedup_ratio: f64,
}

impl Store {
    /// Reads and validates image `name`'s index.
    pub fn index(&self, name: &str) -> Result<Index> {
        Ok(self.read_index(name)?.0)
    }

    fn read_index(&self, name: &str) -> Result<(Index, u64)> {
        let data = self.index_bytes(name)?;
        let index = Index::decode(&data).map_err(|err| StoreError::Index {
            name: name.to_string(),
            err,
        })?;
        Ok((index, data.len() as u64))
    }

    /// The bytes of image `name`'s index file.
    fn index_bytes(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.index_path(name)?;
        fs::read(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::NoSuchImage(name.to_string()),
            _ => io_err(&path)(e),
        })
    }

    /// The opaque config blob stored with image `name` (its index checked, its entries
    /// not parsed).
    pub fn image_config(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let data = self.index_bytes(name)?;
        Index::decode_config(&data).map_err(|err| StoreError::Index {
            name: name.to_string(),
            err,
        })
    }

    pub fn inspect(&self, name: &str) -> Result<ImageInfo> {
        let (index, len) = self.read_index(name)?;
        Ok(ImageInfo::of(&index, len))
    }

    /// Names (`NAME:TAG`) of every image, sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let images = self.images_dir();
        let mut stack = vec![(images.clone(), String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
                let e = e.map_err(io_err(&dir))?;
                let fname = e.file_name().to_string_lossy().into_owned();
                if fname.starts_with('.') {
                    continue; // temporary files of atomic writes
                }
                let ft = e.file_type().map_err(io_err(e.path()))?;
                if ft.is_dir() {
                    stack.push((e.path(), format!("{prefix}{fname}/")));
                } else if let Some(tag) = fname.strip_suffix(format::INDEX_SUFFIX)
                    && !prefix.is_empty()
                {
                    out.push(format!("{}:{tag}", &prefix[..prefix.len() - 1]));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every image, with what its index says. A broken index is an error naming it.
    pub fn list(&self) -> Result<Vec<ImageInfo>> {
        self.names()?.iter().map(|n| self.inspect(n)).collect()
    }

    /// Removes image `name`'s index; its chunks stay until `gc`.
    pub fn remove(&self, name: &str) -> Result<()> {
        let path = self.index_path(name)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NoSuchImage(name.to_string()));
            }
            Err(e) => return Err(io_err(&path)(e)),
        }
        // Durable removal, and drop the now-empty NAME directories.
        let mut dir = path.parent().map(Path::to_path_buf);
        if let Some(d) = &dir {
            File::open(d)
                .and_then(|f| f.sync_all())
                .map_err(io_err(d))?;
        }
        while let Some(d) = dir {
            if d == self.images_dir() || fs::remove_dir(&d).is_err() {
                break;
            }
            dir = d.parent().map(Path::to_path_buf);
        }
        Ok(())
    }

    pub fn stats(&self) -> Result<Stats> {
        let mut stats = Stats {
            images: 0,
            chunks: 0,
            packs: 0,
            chunk_bytes: 0,
            index_bytes: 0,
            stored_bytes: 0,
            logical_bytes: 0,
            dedup_ratio: 0.0,
        };
        for name in self.names()? {
            let (index, len) = self.read_index(&name)?;
            stats.images += 1;
            stats.index_bytes += len;
            stats.logical_bytes += index.content_bytes();
        }
        let _lock = self.lock(false)?;
        let all = self.chunks()?;
        stats.packs = all.packs().len() as u64;
        let mut ids = std::collections::HashSet::new();
        for pack in all.packs() {
            stats.chunk_bytes += pack.size;
            ids.extend(pack.entries.iter().map(|e| e.id));
        }
        for (id, len) in chunks::list(self)? {
            stats.chunk_bytes += len;
            ids.insert(id);
        }
        stats.chunks = ids.len() as u64;
        stats.stored_bytes = stats.chunk_bytes + stats.index_bytes;
        if stats.stored_bytes > 0 {
            stats.dedup_ratio = stats.logical_bytes as f64 / stats.stored_bytes as f64;
        }
        Ok(stats)
    }
}
