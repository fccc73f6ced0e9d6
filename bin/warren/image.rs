//! `warren image ...`: import, extract, list, inspect and remove images in the store.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use warren::idmap::range::{DEFAULT_BLOCK, Shift, parse_id};
use warren::store::{ExtractOptions, ImportOptions, Progress, Store, oci, remote};

use crate::Global;

#[derive(clap::Subcommand, Debug)]
#[command(defer = true)]
pub enum Command {
    /// Import an image: a directory tree (never following symlinks), an OCI layout
    /// (`oci:DIR[:TAG]`), a `docker save` archive (`docker-archive:FILE`), or a tarball
    /// (plain, gzip or zstd, told apart by content; `-` reads stdin).
    Import {
        /// DIR, oci:DIR[:TAG], docker-archive:FILE, or a tarball (FILE or -).
        source: String,
        /// NAME[:TAG] (the tag defaults to latest).
        #[arg(long)]
        name: String,
        /// An OCI image config JSON file to store with the image (Cmd, Env, ...).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Publish without waiting for the disk (faster; a machine crash may lose or
        /// truncate chunks: `warren store verify --repair` finds them and removes the
        /// corrupt ones, then a re-import of the images it lists restores them).
        #[arg(long)]
        no_sync: bool,
    },
    /// Rebuild an image's tree at DEST (which must not exist, or be empty).
    Extract {
        /// The image, NAME[:TAG].
        name: String,
        /// Where to write the tree.
        dest: PathBuf,
        /// Shift every uid/gid to S + (id mod R) while extracting (decimal or 0x hex).
        #[arg(long, short = 's', value_parser = parse_id)]
        shift: Option<u32>,
        /// The range R of --shift.
        #[arg(long, short = 'r', value_parser = parse_id, default_value_t = DEFAULT_BLOCK)]
        range: u32,
        /// Skip syncing the files before DEST appears (faster; a crash may lose data).
        #[arg(long)]
        no_sync: bool,
        /// Fetch the image from this remote store first (only the chunks missing here).
        #[arg(long)]
        remote: Option<String>,
    },
    /// Fetch an image from an OCI registry (`[docker://]HOST/REPO[:TAG|@DIGEST]`, or a
    /// short name tried at the `unqualified-search-registries` of registries.conf, else
    /// docker.io), or from a remote store (a store directory served over HTTP: `URL
    /// NAME`, only the chunks this store lacks). Everything is verified before the image
    /// is listed.
    Pull {
        /// The image reference, or a remote store's base URL (http:// or https://).
        source: String,
        /// The local name (default HOST/REPO:TAG); for a remote store, the image there.
        name: Option<String>,
        /// Store it under this name instead (remote stores).
        #[arg(long = "as")]
        local_name: Option<String>,
        /// OS/ARCH[/VARIANT] to pick from a multi-platform image (default: this host's).
        #[arg(long)]
        platform: Option<String>,
        /// USER:PASSWORD for the registry (instead of the saved ones).
        #[arg(long)]
        creds: Option<String>,
        #[command(flatten)]
        access: crate::registry::Access,
    },
    /// Push an image to an OCI registry as a one-layer image (gzip tar); blobs the
    /// repository has already are not sent again, and blobs warren pushed to another
    /// repository of the same registry are mounted from there.
    Push {
        /// The image here, NAME[:TAG].
        name: String,
        /// Where: [docker://]HOST/REPO[:TAG].
        reference: String,
        /// Manifest format: oci or docker (v2 schema 2).
        #[arg(long, default_value = "oci", value_parser = ["oci", "docker"])]
        format: String,
        /// USER:PASSWORD for the registry (instead of the saved ones).
        #[arg(long)]
        creds: Option<String>,
        #[command(flatten)]
        access: crate::registry::Access,
    },
    /// Write an image as an OCI layout (`oci:DIR[:TAG]`) or a tarball (`tar:FILE`).
    Export {
        /// The image, NAME[:TAG].
        name: String,
        /// oci:DIR[:TAG] or tar:FILE.
        dest: String,
    },
    /// List the images in the store.
    #[command(alias = "ls")]
    List,
    /// Show what an image holds, and its config blob.
    Inspect {
        /// The image, NAME[:TAG].
        name: String,
    },
    /// Remove an image (its chunks stay until `warren store gc`).
    #[command(alias = "remove")]
    Rm {
        /// The image, NAME[:TAG].
        name: String,
    },
}

pub fn open_store(global: &Global) -> anyhow::Result<Store> {
    let dir = global.store.clone().unwrap_or_else(Store::default_dir);
    Store::open(&dir).with_context(|| format!("opening the store at {}", dir.display()))
}

pub fn run(global: &Global, command: Command) -> anyhow::Result<i32> {
    let store = open_store(global)?;
    match command {
        Command::Import {
            source,
            name,
            config,
            no_sync,
        } => {
            let progress = Arc::new(Progress::default());
            let config = match &config {
                Some(path) => Some(
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
                ),
                None => None,
            };
            let start = Instant::now();
            let info = if std::path::Path::new(&source).is_dir() {
                let opts = ImportOptions {
                    progress: Some(progress.clone()),
                    config: Some(config.unwrap_or_else(oci::minimal_config)),
                    no_sync,
                };
                let dir = std::path::Path::new(&source);
                with_bar(global, &progress, "importing", Some(dir), || {
                    store.import_dir(dir, &name, &opts)
                })?
            } else {
                let opts = oci::ImportOptions {
                    config,
                    progress: Some(progress.clone()),
                    ..Default::default()
                };
                with_bar(global, &progress, "importing", None, || {
                    oci::import(&store, &source, &name, &opts)
                })?
            };
            let dir = source;
            let secs = start.elapsed().as_secs_f64();
            if global.json {
                println!("{}", serde_json::to_string(&info)?);
            } else {
                println!(
                    "Imported {} from {}: {} entries, {} of content in {:.1}s ({}/s); {} new chunks, {} added to the store",
                    info.name,
                    dir,
                    info.entries,
                    human(info.content_bytes),
                    secs,
                    human((info.content_bytes as f64 / secs.max(1e-9)) as u64),
                    info.new_chunks,
                    human(info.new_bytes),
                );
            }
        }
        Command::Extract {
            name,
            dest,
            shift,
            range,
            no_sync,
            remote,
        } => {
            if let Some(url) = remote {
                pull(global, &store, &url, &name, None)?;
            }
            let progress = Arc::new(Progress::default());
            let opts = ExtractOptions {
                shift: shift.map(|to| Shift::new(to, range)).transpose()?,
                sync: !no_sync,
                progress: Some(progress.clone()),
            };
            let start = Instant::now();
            let report = with_bar(global, &progress, "extracting", None, || {
                store.extract(&name, &dest, &opts)
            })?;
            let secs = start.elapsed().as_secs_f64();
            if global.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                let shifted = opts
                    .shift
                    .map(|s| format!(", ids shifted with {s}"))
                    .unwrap_or_default();
                println!(
                    "Extracted {} to {}: {} entries, {} in {:.1}s ({}/s){shifted}",
                    report.name,
                    report.dest.display(),
                    report.entries,
                    human(report.bytes),
                    secs,
                    human((report.bytes as f64 / secs.max(1e-9)) as u64),
                );
            }
        }
        Command::List => {
            let images = store.list()?;
            if global.json {
                println!("{}", serde_json::to_string(&images)?);
            } else {
                println!(
                    "{:<40} {:>8} {:>10} {:>8}",
                    "NAME", "ENTRIES", "SIZE", "CHUNKS"
                );
                for i in images {
                    println!(
                        "{:<40} {:>8} {:>10} {:>8}",
                        i.name,
                        i.entries,
                        human(i.content_bytes),
                        i.unique_chunks
                    );
                }
            }
        }
        Command::Inspect { name } => {
            let info = store.inspect(&name)?;
            let config = store.image_config(&name)?;
            let config_json = config.as_ref().map(|c| {
                serde_json::from_slice::<serde_json::Value>(c).unwrap_or_else(|_| {
                    serde_json::Value::String(String::from_utf8_lossy(c).into())
                })
            });
            let mut v = serde_json::to_value(&info)?;
            v["config"] = config_json.unwrap_or(serde_json::Value::Null);
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Command::Pull {
            source,
            name,
            local_name,
            platform,
            creds,
            access,
        } => {
            if source.starts_with("http://") || source.starts_with("https://") {
                let name = name.context("pulling from a remote store: name the image")?;
                pull(global, &store, &source, &name, local_name)?
            } else {
                let name = local_name.or(name);
                crate::registry::pull(
                    global,
                    &store,
                    &source,
                    name,
                    platform.as_deref(),
                    creds.as_deref(),
                    &access,
                )?
            }
        }
        Command::Push {
            name,
            reference,
            format,
            creds,
            access,
        } => crate::registry::push(
            global,
            &store,
            &name,
            &reference,
            &format,
            creds.as_deref(),
            &access,
        )?,
        Command::Export { name, dest } => {
            let digest = oci::export(&store, &name, &dest)?;
            if global.json {
                println!(
                    "{}",
                    serde_json::json!({ "image": name, "dest": dest, "manifest": digest })
                );
            } else {
                match digest {
                    Some(d) => println!("Exported {name} to {dest} (manifest {d})"),
                    None => println!("Exported {name} to {dest}"),
                }
            }
        }
        Command::Rm { name } => {
            store.remove(&name)?;
            if global.json {
                println!("{}", serde_json::json!({ "removed": name }));
            } else {
                println!("Removed {name} (run `warren store gc` to free its chunks)");
            }
        }
    }
    Ok(0)
}

fn pull(
    global: &Global,
    store: &Store,
    url: &str,
    name: &str,
    local_name: Option<String>,
) -> anyhow::Result<()> {
    let progress = Arc::new(Progress::default());
    let opts = remote::PullOptions {
        local_name,
        progress: Some(progress.clone()),
        ..Default::default()
    };
    let report = with_bar(global, &progress, "pulling", None, || {
        remote::pull(url, name, store, &opts)
    })?;
    if global.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "Pulled {} from {url}: {} of {} chunks fetched ({}), the rest already here",
            report.name,
            report.fetched_chunks,
            report.chunks,
            human(report.fetched_bytes),
        );
    }
    Ok(())
}

/// Runs `work` with a progress bar on stderr when it is a terminal (and not --json):
/// bytes done against the total once it is known (`progress.total`, or `tree`'s size
/// for a directory import, measured beside it), else a spinner with the rate.
pub fn with_bar<T>(
    global: &Global,
    progress: &Arc<Progress>,
    what: &'static str,
    tree: Option<&std::path::Path>,
    work: impl FnOnce() -> T,
) -> T {
    if global.json || !std::io::stderr().is_terminal() {
        return work();
    }
    let done = Arc::new(AtomicBool::new(false));
    if let Some(dir) = tree.map(std::path::Path::to_path_buf) {
        let (done, progress) = (done.clone(), progress.clone());
        std::thread::spawn(move || {
            let total = tree_bytes(&dir, &done);
            if !done.load(Ordering::Relaxed) {
                progress.total.store(total, Ordering::Relaxed);
            }
        });
    }
    let ticker = {
        let (done, progress) = (done.clone(), progress.clone());
        std::thread::spawn(move || {
            let bar = indicatif::ProgressBar::new_spinner();
            let style = |t: &str| {
                indicatif::ProgressStyle::with_template(t)
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            };
            bar.set_style(style("{prefix} {spinner} {bytes} {bytes_per_sec} {msg}"));
            bar.set_prefix(what);
            let mut known = false;
            while !done.load(Ordering::Relaxed) {
                let bytes = Progress::get(&progress.bytes);
                if let Some(len) = bar_length(bytes, Progress::get(&progress.total)) {
                    if !known {
                        bar.set_style(style(
                            "{prefix} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                        ));
                        known = true;
                    }
                    bar.set_length(len);
                }
                bar.set_position(bytes);
                let new = Progress::get(&progress.new_bytes);
                if bytes > 0 && what == "importing" {
                    bar.set_message(format!(
                        "new {} ({:.0}% deduplicated)",
                        human(new),
                        100.0 * (1.0 - new as f64 / bytes as f64)
                    ));
                }
                bar.tick();
                std::thread::sleep(Duration::from_millis(100));
            }
            bar.finish_and_clear();
        })
    };
    let result = work();
    done.store(true, Ordering::Relaxed);
    let _ = ticker.join();
    result
}

/// The bar's length: the total once known, never below the bytes done (a file that
/// grew while it was read), so the bar never reads "45 MiB/25 MiB".
fn bar_length(bytes: u64, total: u64) -> Option<u64> {
    (total > 0).then(|| total.max(bytes))
}

/// The bytes of the regular files under `dir` (each hard-linked file once), never
/// following symlinks; stops early (with what it has) when `stop` is set.
fn tree_bytes(dir: &std::path::Path, stop: &AtomicBool) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut total = 0;
    while let Some(d) = stack.pop() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() && (meta.nlink() == 1 || seen.insert((meta.dev(), meta.ino())))
            {
                total += meta.len();
            }
        }
    }
    total
}

pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_never_shows_more_done_than_its_total() {
        assert_eq!(bar_length(10, 0), None, "unknown total: a spinner");
        assert_eq!(bar_length(10, 25), Some(25));
        assert_eq!(bar_length(45, 25), Some(45));
    }

    #[test]
    fn a_tree_counts_regular_files_once_and_follows_no_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("a"), [0u8; 100]).unwrap();
        std::fs::write(d.join("sub/b"), [0u8; 20]).unwrap();
        std::fs::hard_link(d.join("a"), d.join("sub/a2")).unwrap();
        std::os::unix::fs::symlink("/usr", d.join("usr")).unwrap();
        assert_eq!(tree_bytes(d, &AtomicBool::new(false)), 120);
    }
}
