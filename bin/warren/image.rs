//! `warren image ...`: import, extract, list, inspect and remove images in the store.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use warren::idmap::range::{DEFAULT_BLOCK, Shift, parse_id};
use warren::store::{ExtractOptions, ImportOptions, Progress, Store};

use crate::Global;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Import a directory tree (never following symlinks) as an image.
    Import {
        dir: PathBuf,
        /// NAME[:TAG] (the tag defaults to latest).
        #[arg(long)]
        name: String,
    },
    /// Rebuild an image's tree at DEST (which must not exist, or be empty).
    Extract {
        name: String,
        dest: PathBuf,
        /// Shift every uid/gid to S + (id mod R) while extracting (decimal or 0x hex).
        #[arg(long, short = 's', value_parser = parse_id)]
        shift: Option<u32>,
        /// The range R of --shift.
        #[arg(long, short = 'r', value_parser = parse_id, default_value_t = DEFAULT_BLOCK)]
        range: u32,
        /// Skip the syncfs before DEST appears (faster; a crash may lose data).
        #[arg(long)]
        no_sync: bool,
    },
    /// List the images in the store.
    #[command(alias = "ls")]
    List,
    /// Show what an image holds, and its config blob.
    Inspect { name: String },
    /// Remove an image (its chunks stay until `warren store gc`).
    #[command(alias = "remove")]
    Rm { name: String },
}

pub fn open_store(global: &Global) -> anyhow::Result<Store> {
    let dir = global.store.clone().unwrap_or_else(Store::default_dir);
    Store::open(&dir).with_context(|| format!("opening the store at {}", dir.display()))
}

pub fn run(global: &Global, command: Command) -> anyhow::Result<i32> {
    let store = open_store(global)?;
    match command {
        Command::Import { dir, name } => {
            let progress = Arc::new(Progress::default());
            let opts = ImportOptions {
                progress: Some(progress.clone()),
                config: None,
            };
            let start = Instant::now();
            let info = with_bar(global, &progress, "importing", || {
                store.import_dir(&dir, &name, &opts)
            })?;
            let secs = start.elapsed().as_secs_f64();
            if global.json {
                println!("{}", serde_json::to_string(&info)?);
            } else {
                println!(
                    "Imported {} from {}: {} entries, {} of content in {:.1}s ({}/s); {} new chunks, {} added to the store",
                    info.name,
                    dir.display(),
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
        } => {
            let progress = Arc::new(Progress::default());
            let opts = ExtractOptions {
                shift: shift.map(|to| Shift::new(to, range)).transpose()?,
                sync: !no_sync,
                progress: Some(progress.clone()),
            };
            let start = Instant::now();
            let report = with_bar(global, &progress, "extracting", || {
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

/// Runs `work` with a progress bar on stderr when it is a terminal (and not --json).
fn with_bar<T>(
    global: &Global,
    progress: &Arc<Progress>,
    what: &'static str,
    work: impl FnOnce() -> T,
) -> T {
    if global.json || !std::io::stderr().is_terminal() {
        return work();
    }
    let done = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (done, progress) = (done.clone(), progress.clone());
        std::thread::spawn(move || {
            let bar = indicatif::ProgressBar::new(0);
            let style = indicatif::ProgressStyle::with_template(
                "{prefix} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(what);
            while !done.load(Ordering::Relaxed) {
                let total = Progress::get(&progress.total);
                if total > 0 {
                    bar.set_length(total);
                }
                let bytes = Progress::get(&progress.bytes);
                bar.set_position(bytes);
                let new = Progress::get(&progress.new_bytes);
                if bytes > 0 && what == "importing" {
                    bar.set_length(bytes);
                    bar.set_message(format!(
                        "new {} ({:.0}% deduplicated)",
                        human(new),
                        100.0 * (1.0 - new as f64 / bytes as f64)
                    ));
                }
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
