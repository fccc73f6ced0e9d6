//! Logging the way runc does, since OCI clients read the runtime's `--log` file to show
//! why it failed: `--log-format json` gives `{"level":"error","msg":"...","time":"..."}`
//! lines, text gives `time="..." level=error msg="..."`. Lines in a log file are always
//! plain; warnings on stderr are coloured only when stderr is a terminal.

use crate::Global;
use anyhow::{Result, bail};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// One log line in runc's format, without the newline.
pub fn line(json: bool, level: &str, msg: &str) -> String {
    let time = warren::container::state::now_rfc3339();
    if json {
        // serde_json sorts the keys: level, msg, time (logrus's order too).
        serde_json::json!({"level": level, "msg": msg, "time": time}).to_string()
    } else {
        format!("time={time:?} level={level} msg={msg:?}")
    }
}

fn append(path: &Path, text: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{text}");
    }
}

/// Checks `--log-format` (runc refuses anything but text and json).
pub fn check_format(format: &str) -> Result<()> {
    if format != "text" && format != "json" {
        bail!("invalid log-format: {format} (text or json)");
    }
    Ok(())
}

/// Writes a failed command's error to `--log` (stderr gets it from `main`).
pub fn error(global: &Global, msg: &str) {
    if let Some(log) = &global.log {
        append(log, &line(global.log_format == "json", "error", msg));
    }
}

/// Writes a command-line parse error to the `--log` named in `args`, in the format they
/// ask for: clap fails before `Global` exists, and a client would otherwise show a stale
/// line of the log instead.
pub fn parse_error(args: &[OsString], err: &clap::Error) {
    let (log, format) = log_args(args);
    let Some(log) = log else { return };
    let text = err.render().to_string();
    let msg = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ");
    append(&log, &line(format.as_deref() == Some("json"), "error", msg));
}

/// `--log FILE` and `--log-format F` (or `--flag=value`) from raw arguments.
fn log_args(args: &[OsString]) -> (Option<PathBuf>, Option<String>) {
    let (mut log, mut format) = (None, None);
    let mut it = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (a.clone(), None),
        };
        let slot = match name.as_str() {
            "--log" => &mut log,
            "--log-format" => &mut format,
            _ => continue,
        };
        *slot = inline.or_else(|| it.next());
    }
    (log.map(PathBuf::from), format)
}

/// Logs warnings (debug with --debug) to `--log` in runc's format, or to stderr.
pub fn init(global: &Global) {
    let level = if global.debug {
        tracing::Level::DEBUG
    } else {
        tracing::Level::WARN
    };
    let json = global.log_format == "json";
    let builder = tracing_subscriber::fmt().with_max_level(level);
    let file = global.log.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    let _ = match file {
        Some(f) => builder
            .with_ansi(false)
            .event_format(Runc { json })
            .with_writer(std::sync::Mutex::new(f))
            .try_init(),
        None if json => builder
            .with_ansi(false)
            .event_format(Runc { json })
            .with_writer(std::io::stderr)
            .try_init(),
        None => builder
            .without_time()
            .with_ansi(nix::unistd::isatty(std::io::stderr()).unwrap_or(false))
            .with_writer(std::io::stderr)
            .try_init(),
    };
}

/// runc's (logrus's) line format for tracing events.
struct Runc {
    json: bool,
}

impl<S, N> FormatEvent<S, N> for Runc
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut msg = Message::default();
        event.record(&mut msg);
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warning",
            tracing::Level::INFO => "info",
            _ => "debug",
        };
        writeln!(w, "{}", line(self.json, level, &msg.0))
    }
}

/// The event's message with its other fields appended as ` key=value`.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, value);
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.push(field, &format!("{value:?}"));
    }
}

impl Message {
    fn push(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_args_are_found_in_both_spellings() {
        let args: Vec<OsString> = [
            "warren",
            "--log",
            "/l",
            "--log-format=json",
            "exec",
            "--bogus",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        assert_eq!(
            log_args(&args),
            (Some(PathBuf::from("/l")), Some("json".into()))
        );
        let line = line(false, "error", "a \"b\"");
        assert!(line.ends_with(r#" level=error msg="a \"b\"""#), "{line}");
    }
}
