//! `warren store ...`: the chunk store itself (stats, verify, gc).

use warren::store::registry;

use crate::Global;
use crate::image::{human, open_store};
use warren::runtime::images::ImageCache;

#[derive(clap::Subcommand, Debug)]
#[command(defer = true)]
pub enum Command {
    /// Images, chunks, logical vs stored bytes, dedup ratio.
    Stats,
    /// Check every chunk's hash and every index's references; exit 1 on any problem.
    /// An import or pull reuses any chunk file it finds, so to repair a corrupt chunk run
    /// `verify --repair`, then re-import (or pull) every image it lists as damaged.
    Verify {
        /// Remove the corrupt chunk files found (waits for imports in progress), so the
        /// next import or pull of an image that needs them writes them afresh. Still exits
        /// 1: the store lacks those chunks until the listed images are re-imported.
        #[arg(long)]
        repair: bool,
    },
    /// Remove chunks no image references (waits for imports in progress), and the
    /// extracted image trees (STATE_DIR/images) no image and no container uses.
    Gc,
    /// Publish images' chunks and indexes, all images or only those named: to a store
    /// directory (a path starting with `/` or `.`, or an existing directory) to serve over
    /// HTTP, written as the chunks and indexes it lacks; or to an OCI registry
    /// (`[docker://]HOST/REPO:TAG`) as a warren store artifact (artifactType
    /// application/vnd.warren.store.v1: packs and indexes as blobs, those the registry has
    /// not sent again) that `warren image pull REF` fetches chunk by chunk. Either is
    /// readable by whoever can read it there, every file of every image pushed included,
    /// whatever its mode in the image (the store itself stays private).
    Push {
        /// The store directory, or the registry reference, to publish to.
        dest: String,
        /// The images to push, NAME[:TAG] (default: all).
        images: Vec<String>,
        /// USER:PASSWORD for the registry (instead of the saved ones).
        #[arg(long)]
        creds: Option<String>,
        #[command(flatten)]
        access: crate::registry::Access,
    },
}

pub fn run(global: &Global, command: Command) -> anyhow::Result<i32> {
    let store = open_store(global)?;
    match command {
        Command::Stats => {
            let s = store.stats()?;
            if global.json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                println!("store:         {}", store.dir().display());
                println!("images:        {}", s.images);
                println!("chunks:        {} (in {} packs)", s.chunks, s.packs);
                println!(
                    "logical bytes: {} ({})",
                    s.logical_bytes,
                    human(s.logical_bytes)
                );
                println!(
                    "stored bytes:  {} ({})",
                    s.stored_bytes,
                    human(s.stored_bytes)
                );
                println!(
                    "  chunks:      {} ({})",
                    s.chunk_bytes,
                    human(s.chunk_bytes)
                );
                println!(
                    "  indexes:     {} ({})",
                    s.index_bytes,
                    human(s.index_bytes)
                );
                println!("dedup ratio:   {:.2}", s.dedup_ratio);
            }
            Ok(0)
        }
        Command::Verify { repair } => {
            let r = if repair {
                store.verify_and_repair()?
            } else {
                store.verify()?
            };
            if global.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                for p in &r.problems {
                    println!("BAD {}: {}", p.object, p.error);
                }
                for id in &r.removed_chunks {
                    println!("REMOVED chunk {id}");
                }
                for path in &r.removed_packs {
                    println!("REMOVED pack {path}");
                }
                for name in &r.damaged_images {
                    println!("DAMAGED image {name}");
                }
                println!(
                    "verified {} images and {} chunks: {}",
                    r.images,
                    r.chunks,
                    if r.ok() {
                        "all good".to_string()
                    } else {
                        format!("{} problems", r.problems.len())
                    }
                );
                if !r.damaged_images.is_empty() {
                    println!(
                        "{}re-import (or pull) each damaged image to restore its chunks",
                        if repair {
                            ""
                        } else {
                            "run `warren store verify --repair`, then "
                        }
                    );
                }
            }
            Ok(if r.ok() { 0 } else { 1 })
        }
        Command::Gc => {
            // Extracted trees first: a tree outlives its image's chunks otherwise.
            let state = warren::dirs::state_dir();
            let cache = ImageCache::new(state.join("images"));
            let trees = cache.gc(&store, &state.join("store"), &state.join("containers"))?;
            let r = store.gc()?;
            let blobs = warren::store::registry::clean_blobs(&store)?;
            if global.json {
                let mut v = serde_json::to_value(&r)?;
                v["trees"] = serde_json::to_value(&trees)?;
                v["registry_leftovers"] = blobs.into();
                println!("{v}");
            } else {
                println!(
                    "removed {} chunks ({}) and {} temporary files; kept {} chunks",
                    r.removed_chunks,
                    human(r.removed_bytes),
                    r.removed_temp_files,
                    r.kept_chunks
                );
                println!(
                    "removed {} extracted image trees ({}); kept {} in use",
                    trees.removed.len(),
                    human(trees.freed_bytes),
                    trees.kept
                );
                println!("removed {blobs} files interrupted registry pulls and pushes left");
            }
            Ok(0)
        }
        Command::Push {
            dest,
            images,
            creds,
            access,
        } => {
            if !is_dir_dest(&dest) {
                return push_registry(global, &store, &dest, &images, creds.as_deref(), &access);
            }
            let dir = std::path::PathBuf::from(&dest);
            let r = warren::store::remote::push(&store, &dir, &images)?;
            if global.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "pushed {} image(s) to {}: {} chunks copied ({}), {} already there",
                    r.images.len(),
                    dir.display(),
                    r.copied_chunks,
                    human(r.copied_bytes),
                    r.present_chunks
                );
            }
            Ok(0)
        }
    }
}

/// Whether `store push`'s destination is a directory rather than a registry reference.
fn is_dir_dest(dest: &str) -> bool {
    dest.starts_with('/') || dest.starts_with('.') || std::path::Path::new(dest).is_dir()
}

fn push_registry(
    global: &Global,
    store: &warren::store::Store,
    reference: &str,
    images: &[String],
    creds: Option<&str>,
    access: &crate::registry::Access,
) -> anyhow::Result<i32> {
    let opts = access.options(creds)?;
    let r = registry::store_push(store, reference, images, &opts)?;
    if global.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "pushed {} image(s) to {} ({}): {} packs; {} blobs sent ({}), {} already there",
            r.images.len(),
            r.reference,
            r.digest,
            r.packs,
            r.uploaded_blobs,
            human(r.uploaded_bytes),
            r.skipped_blobs
        );
    }
    Ok(0)
}
