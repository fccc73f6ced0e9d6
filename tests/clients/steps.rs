//! A table step: its prefixes, its words, and the bounded command that runs it.

use crate::harness::IMAGE;
use std::process::Command;

/// Every client command is bounded: `timeout` kills it after this long.
const COMMAND_SECS: &str = "90";

/// A step's prefixes.
#[derive(Default)]
pub struct Mode {
    pub rc_only: bool,
    pub lines: bool,
    pub last: bool,
    pub pty: bool,
    pub until: Option<String>,
}

impl Mode {
    /// The part of the output that is compared.
    pub fn view(&self, out: &str, wanted: bool) -> String {
        let out = out.trim();
        if self.until.is_some() {
            return format!("found: {wanted}");
        }
        if self.rc_only {
            return String::new();
        }
        if self.lines {
            return format!("{} lines", out.lines().count());
        }
        if self.last {
            let last: Vec<&str> = out
                .lines()
                .filter_map(|l| l.split_whitespace().last())
                .collect();
            return last.join("\n");
        }
        out.to_owned()
    }
}

pub fn parse_mode(step: &str) -> (Mode, &str) {
    let mut mode = Mode::default();
    let mut rest = step.trim_start_matches('!');
    loop {
        if let Some(r) = rest.strip_prefix("rc:") {
            mode.rc_only = true;
            rest = r;
        } else if let Some(r) = rest.strip_prefix("lines:") {
            mode.lines = true;
            rest = r;
        } else if let Some(r) = rest.strip_prefix("last:") {
            mode.last = true;
            rest = r;
        } else if let Some(r) = rest.strip_prefix("pty:") {
            mode.pty = true;
            rest = r;
        } else if let Some(r) = rest.strip_prefix("until=") {
            let (word, r) = r.split_once(':').expect("until=WORD:");
            mode.until = Some(word.to_owned());
            rest = r;
        } else {
            return (mode, rest);
        }
    }
}

/// Splits a step into words (single quotes group), with `{name}` and `{img}` filled in.
pub fn words(line: &str, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut any) = (false, false);
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out.iter()
        .map(|w| w.replace("{name}", name).replace("{img}", IMAGE))
        .collect()
}

/// `argv` as one `sh -c` line.
pub fn shell_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `argv` under `timeout`, so that no client command can hang the suite.
pub fn bounded<S: AsRef<str>>(argv: &[S]) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "5", COMMAND_SECS]);
    cmd.args(argv.iter().map(|a| a.as_ref()));
    cmd
}
