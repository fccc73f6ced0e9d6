//! shift-mount: mount a shifted view of LOWER at MOUNTPOINT, with the writes in INTERMEDIATE.
//! Argument parsing and output only; the work is `warren::mount::shifted`.

use clap::Parser;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use warren::idmap::range::{DEFAULT_BLOCK, Shift, parse_id};
use warren::mount::shifted::{self, Method, MountReport, MountSpec};

#[derive(Parser, Debug)]
#[command(
    name = "shift-mount",
    version,
    about = "Mount a view of LOWER owned by another id block: an overlay with the writes in \
             INTERMEDIATE (idmapped lower layers, or metacopy over shifted metadata, or a shifted copy)"
)]
struct Args {
    /// Mount, print and exit, leaving the mount (for systemd Type=oneshot + RemainAfterExit).
    /// Without it, stay in the foreground and unmount on SIGTERM/SIGINT.
    #[arg(long)]
    oneshot: bool,
    /// Shift ids to this base (decimal or 0x hex).
    #[arg(short = 's', long = "shift", default_value = "0", value_parser = parse_id)]
    shift: u32,
    /// Size of the id block (decimal or 0x hex).
    #[arg(short = 'r', long = "range", default_value_t = DEFAULT_BLOCK, value_parser = parse_id)]
    range: u32,
    /// auto (fastest the kernel allows), idmap, metacopy or copy.
    #[arg(long, default_value = "auto")]
    method: String,
    /// Re-shift an INTERMEDIATE that was set up with another shift.
    #[arg(long)]
    reshift: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Unmount a view mounted by shift-mount, and exit.
    #[arg(long, value_name = "MOUNTPOINT", conflicts_with_all = ["lower", "oneshot", "method"])]
    unmount: Option<PathBuf>,
    /// Lower layers, `:`-separated, top-most first. Never modified.
    #[arg(required_unless_present = "unmount")]
    lower: Option<String>,
    /// Holds the container's writes (upper/, work/ or copy/) and the applied shift.
    #[arg(required_unless_present = "unmount")]
    intermediate: Option<PathBuf>,
    #[arg(required_unless_present = "unmount")]
    mountpoint: Option<PathBuf>,
}

fn main() {
    // First: a rootless copy re-executes this binary as its helper.
    warren::mount::rootless::dispatch();
    match run(Args::parse()) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("shift-mount: {}", warren::error_line(e.as_ref()));
            if let Some(hint) = hint(&e) {
                eprintln!("hint: {hint}");
            }
            std::process::exit(1);
        }
    }
}

/// What to type next, for errors the library states without CLI advice.
fn hint(e: &anyhow::Error) -> Option<String> {
    match e.downcast_ref::<shifted::MountError>()? {
        shifted::MountError::AlreadyMounted { path } => Some(format!(
            "a view an interrupted run left there goes with `shift-mount --unmount {}`",
            path.display()
        )),
        shifted::MountError::ShiftMismatch { .. } => {
            Some("use another INTERMEDIATE directory, or --reshift".into())
        }
        _ => None,
    }
}

fn run(args: Args) -> anyhow::Result<i32> {
    if let Some(mountpoint) = &args.unmount {
        shifted::unmount(mountpoint)?;
        if args.json {
            let _ = writeln!(
                std::io::stdout(),
                "{}",
                serde_json::json!({ "unmounted": mountpoint })
            );
        } else {
            let _ = writeln!(std::io::stdout(), "Unmounted {}", mountpoint.display());
        }
        return Ok(0);
    }
    let (Some(lower), Some(intermediate), Some(mountpoint)) =
        (args.lower, args.intermediate, args.mountpoint)
    else {
        anyhow::bail!("LOWER, INTERMEDIATE and MOUNTPOINT are required");
    };
    let mut spec = MountSpec::new(
        lower
            .split(':')
            .filter(|l| !l.is_empty())
            .map(PathBuf::from)
            .collect(),
        intermediate,
        mountpoint,
        Shift::new(args.shift, args.range)?,
    );
    spec.method = match args.method.as_str() {
        "auto" => None,
        m => Some(m.parse::<Method>()?),
    };
    spec.reshift = args.reshift;

    // Held from before the mount, so a stop request is never lost between mount and wait.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    if !args.oneshot {
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&stop), None)
            .map_err(|e| anyhow::anyhow!("blocking SIGTERM/SIGINT: {e}"))?;
    }

    let bar = progress_bar(args.json);
    let tick = |n: u64| {
        if let Some(b) = &bar {
            b.set_position(n);
        }
    };
    let report = shifted::mount_with_progress(&spec, Some(&tick))?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    // A caller that cannot be told about the mount must not be left with it.
    if let Err(e) = print_report(&report, args.json) {
        if report.mounted {
            let _ = shifted::unmount(&report.mountpoint);
        }
        anyhow::bail!("cannot print the report ({e}); unmounted again");
    }

    if args.oneshot || !report.mounted {
        return Ok(0);
    }
    let signal = stop
        .wait()
        .map_err(|e| anyhow::anyhow!("waiting for SIGTERM/SIGINT: {e}"))?;
    shifted::unmount(&report.mountpoint)?;
    if !args.json {
        let _ = writeln!(
            std::io::stdout(),
            "Unmounted {} on {signal}",
            report.mountpoint.display()
        );
    }
    Ok(0)
}

fn progress_bar(json: bool) -> Option<indicatif::ProgressBar> {
    if json || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{spinner} {pos} entries shifted ({elapsed})")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    Some(bar)
}

fn print_report(report: &MountReport, json: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(report)?)?;
        return out.flush();
    }
    let view = report.view.display();
    if report.mounted {
        writeln!(out, "Mounted {view}")?;
    } else {
        writeln!(out, "Not mounted: the shifted view is the copy at {view}")?;
    }
    let how = match (report.method, report.walked) {
        (Method::Idmap, false) => "idmapped: no file touched",
        (_, false) => "recorded: nothing walked",
        (Method::Copy, true) => "full copy",
        _ => "walked",
    };
    writeln!(
        out,
        "{} files under {view} shifted with {} ({how})",
        report.entries_shifted, report.shift
    )?;
    writeln!(out, "method {}: {}", report.method, report.reason)?;
    out.flush()
}
