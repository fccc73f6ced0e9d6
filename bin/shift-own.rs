//! `shift-own`: re-own every entry under PATH into another id block, uid u ->
//! SHIFT + (u mod RANGE), likewise gid. Argument parsing and output over
//! `warren::idmap::shift`.

use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use warren::idmap::range::{RangeError, Shift, parse_id};
use warren::idmap::shift::{ShiftOptions, ShiftReport, shift_tree};

#[derive(Parser, Debug)]
#[command(
    name = "shift-own",
    version,
    about = "Shift the uid/gid of every file under PATH into another id block",
    after_help = "Exit status: 0 all shifted, 1 some entries failed (listed on stderr), 2 error."
)]
struct Cli {
    /// First id of the target block (decimal or 0x hex).
    #[arg(short = 's', long = "shift", default_value = "0", value_parser = parse_id)]
    shift: u32,
    /// Size of the id block (decimal or 0x hex).
    #[arg(short = 'r', long = "range", default_value = "0x10000", value_parser = parse_id)]
    range: u32,
    /// Print one line per changed entry: `0:0 -> 196608:196608 .. /path`.
    #[arg(short = 'v', long)]
    verbose: bool,
    /// Show what would change; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Also shift inside filesystems mounted below PATH.
    #[arg(long)]
    cross_mounts: bool,
    /// Worker threads (default: one per core).
    #[arg(short = 'j', long, default_value_t = 0)]
    threads: usize,
    /// Trees to re-own (a symlink is re-owned itself, never followed).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
}

#[derive(serde::Serialize)]
struct PathReport<'a> {
    path: &'a PathBuf,
    shift: Shift,
    #[serde(flatten)]
    report: &'a ShiftReport,
}

fn main() {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("shift-own: {}", warren::error_line(e.as_ref()));
            std::process::exit(2);
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<i32> {
    let shift = Shift::new(cli.shift, cli.range).map_err(|e: RangeError| anyhow::anyhow!(e))?;
    raise_fd_limit();
    let mut opts = ShiftOptions::new(shift);
    opts.cross_mounts = cli.cross_mounts;
    opts.dry_run = cli.dry_run;
    opts.threads = cli.threads;
    opts.record_changes = cli.verbose || cli.json;

    let mut reports = Vec::new();
    let mut failed = false;
    for path in &cli.paths {
        let bar = progress_bar(cli.json);
        let tick = |n: u64| bar.set_position(n);
        let report = shift_tree(path, &opts, Some(&tick));
        bar.finish_and_clear();
        let report = report?;
        failed |= !report.failures.is_empty();
        if !cli.json {
            print_human(path, shift, &report, cli.verbose);
        }
        reports.push((path, report));
    }
    if cli.json {
        let out: Vec<PathReport> = reports
            .iter()
            .map(|(path, report)| PathReport {
                path,
                shift,
                report,
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(i32::from(failed))
}

fn print_human(path: &std::path::Path, shift: Shift, report: &ShiftReport, verbose: bool) {
    if verbose {
        for c in &report.changes {
            println!(
                "{}:{} -> {}:{} .. {}",
                c.from.0,
                c.from.1,
                c.to.0,
                c.to.1,
                c.path.display()
            );
        }
    }
    println!(
        "{} files under {} shifted with {}",
        report.entries,
        path.display(),
        shift
    );
    for m in &report.skipped_mounts {
        eprintln!(
            "shift-own: {}: mount point left alone (see --cross-mounts)",
            m.display()
        );
    }
    if !report.failures.is_empty() {
        for f in &report.failures {
            eprintln!("shift-own: {}: {}", f.path.display(), f.error);
        }
        eprintln!(
            "shift-own: {}: {} shifted, {} failed",
            path.display(),
            report.shifted,
            report.failures.len()
        );
    }
}

/// A spinner with entries/s on a TTY; hidden when stderr is piped or with --json.
fn progress_bar(json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} {human_pos} entries, {per_sec} [{elapsed}]")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// The walk keeps a directory fd open per directory with pending work; use the hard limit.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
