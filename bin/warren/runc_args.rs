//! The command lines an OCI engine sends on every container operation (runc's `create`,
//! `start`, `state`, `kill`, `delete` and `run` of a bundle, after runc's global options),
//! read without clap. clap takes ~0.25 ms of a `warren run` to parse one (~80 µs warm, the
//! rest first-touch faults of its code and heap): about 5% of a container start.
//!
//! Only plain forms are taken: options first, then the positional values. Anything else
//! (another subcommand, an option not listed here, a repeated one, a value on a flag,
//! combined short options, a value that looks like an option, `--`, help) is left to
//! clap, which parses it or explains the mistake. Tests check every form taken here
//! against clap's own reading of it.

use crate::oci::{self, CreateArgs};
use crate::{Cli, Command, Global};
use std::ffi::OsString;
use std::path::PathBuf;

/// An option: its long name, its short one, whether it takes a value.
type Opt = (&'static str, Option<&'static str>, bool);

const GLOBAL: &[Opt] = &[
    ("--root", None, true),
    ("--log", None, true),
    ("--log-format", None, true),
    ("--state-dir", None, true),
    ("--store", None, true),
    ("--rootless", None, true),
    ("--debug", None, false),
    ("--json", None, false),
    ("--systemd-cgroup", None, false),
];

const CREATE: &[Opt] = &[
    ("--bundle", Some("-b"), true),
    ("--pid-file", None, true),
    ("--console-socket", None, true),
    ("--preserve-fds", None, true),
    ("--notify-socket", None, true),
    ("--no-pivot", None, false),
    ("--no-new-keyring", None, false),
    ("--init", None, false),
];

const RUN: &[Opt] = &[
    ("--detach", Some("-d"), false),
    ("--tty", Some("-t"), false),
    ("--keep", None, false),
    ("--no-subreaper", None, false),
];

/// `args` (the program name first), if they are one of the plain forms.
pub(crate) fn parse(args: &[OsString]) -> Option<Cli> {
    let words = args
        .iter()
        .skip(1)
        .map(|a| a.to_str())
        .collect::<Option<Vec<_>>>()?;
    let (given, rest) = options(&words, GLOBAL)?;
    let (&verb, rest) = rest.split_first()?;
    let global = Global {
        state_dir: given.path("--state-dir"),
        root: given.path("--root"),
        store: given.path("--store"),
        log: given.path("--log"),
        log_format: given.value("--log-format").unwrap_or("text").to_owned(),
        json: given.flag("--json"),
        debug: given.flag("--debug"),
        systemd_cgroup: given.flag("--systemd-cgroup"),
        rootless: given.value("--rootless").map(str::to_owned),
    };
    let command = match verb {
        "create" => {
            let (o, ids) = options(rest, CREATE)?;
            let [id] = positionals(ids)?;
            oci::Command::Create {
                create: create_args(&o)?,
                id,
            }
        }
        "run" => {
            let (o, ids) = options(rest, &[CREATE, RUN].concat())?;
            let [id] = positionals(ids)?;
            oci::Command::Run {
                create: create_args(&o)?,
                id: Some(id),
                image: Box::default(),
                detach: o.flag("--detach"),
                tty: o.flag("--tty"),
                keep: o.flag("--keep"),
                no_subreaper: o.flag("--no-subreaper"),
            }
        }
        "start" => {
            let [id] = positionals(rest)?;
            oci::Command::Start { id }
        }
        "state" => {
            let [id] = positionals(rest)?;
            oci::Command::State { id }
        }
        "delete" => {
            let (o, ids) = options(rest, &[("--force", Some("-f"), false)])?;
            let [id] = positionals(ids)?;
            oci::Command::Delete {
                force: o.flag("--force"),
                id,
            }
        }
        "kill" => {
            let (o, values) = options(rest, &[("--all", Some("-a"), false)])?;
            let (id, signal) = match positionals(values) {
                Some([id]) => (id, "SIGTERM".to_owned()),
                None => positionals(values).map(|[id, signal]| (id, signal))?,
            };
            oci::Command::Kill {
                all: o.flag("--all"),
                id,
                signal,
            }
        }
        _ => return None,
    };
    Some(Cli {
        global,
        command: Command::Oci(command),
    })
}

/// The options given, by long name, with their values (`None` for a flag).
struct Given<'a>(Vec<(&'static str, Option<&'a str>)>);

impl<'a> Given<'a> {
    fn value(&self, long: &str) -> Option<&'a str> {
        self.0
            .iter()
            .find(|(n, _)| *n == long)
            .and_then(|(_, v)| *v)
    }
    fn path(&self, long: &str) -> Option<PathBuf> {
        self.value(long).map(PathBuf::from)
    }
    fn flag(&self, long: &str) -> bool {
        self.0.iter().any(|(n, _)| *n == long)
    }
}

/// The options of `known` at the start of `words` (`--long VALUE`, `--long=VALUE`,
/// `-s VALUE`, `--flag`, `-f`) and the words after them; `None` on any other option-like
/// word or a repeated option.
fn options<'w, 'a>(words: &'w [&'a str], known: &[Opt]) -> Option<(Given<'a>, &'w [&'a str])> {
    let mut given = Given(Vec::new());
    let mut at = 0;
    while let Some(word) = words.get(at).copied().filter(|w| w.starts_with('-')) {
        at += 1;
        let (name, inline) = match word.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v)),
            _ => (word, None),
        };
        let &(long, _, takes_value) = known
            .iter()
            .find(|(long, short, _)| *long == name || *short == Some(name))?;
        if given.flag(long) {
            return None;
        }
        let value = match (takes_value, inline) {
            (false, None) => None,
            (false, Some(_)) => return None,
            (true, Some(v)) => Some(v),
            (true, None) => {
                at += 1;
                Some(*words.get(at - 1)?)
            }
        };
        if value.is_some_and(|v| !plain(v)) {
            return None;
        }
        given.0.push((long, value));
    }
    Some((given, &words[at..]))
}

/// Exactly `N` positional values.
fn positionals<const N: usize>(words: &[&str]) -> Option<[String; N]> {
    if words.len() != N || !words.iter().all(|w| plain(w)) {
        return None;
    }
    Some(std::array::from_fn(|i| words[i].to_owned()))
}

/// A value clap takes as one: not empty, not option-like.
fn plain(value: &str) -> bool {
    !value.is_empty() && !value.starts_with('-')
}

fn create_args(o: &Given) -> Option<CreateArgs> {
    Some(CreateArgs {
        bundle: o.path("--bundle").unwrap_or_else(|| PathBuf::from(".")),
        pid_file: o.path("--pid-file"),
        console_socket: o.path("--console-socket"),
        preserve_fds: match o.value("--preserve-fds") {
            Some(n) => n.parse().ok()?,
            None => 0,
        },
        no_pivot: o.flag("--no-pivot"),
        no_new_keyring: o.flag("--no-new-keyring"),
        notify_socket: o.path("--notify-socket"),
        init: o.flag("--init"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{args, whole_tree};
    use clap::CommandFactory;

    /// Every form read here reads as clap reads it, field for field.
    #[test]
    fn what_is_read_here_is_what_clap_reads() {
        let all = Cli::command();
        for line in [
            "warren --root /r run -b /b x",
            "warren --root=/r --log /l --log-format json run --bundle=/b --pid-file /p -d x",
            "warren run --detach --tty --keep --no-subreaper --init --preserve-fds 3 x",
            "warren --root /r --log /l --log-format json --systemd-cgroup create --bundle /b --console-socket /s --pid-file /p x",
            "warren create --no-pivot --no-new-keyring --notify-socket /n -b . x",
            "warren --debug --json --state-dir /s --store /t --rootless true state x",
            "warren --root /r start x",
            "warren --root /r kill x",
            "warren --root /r kill --all x KILL",
            "warren --root /r kill -a x 9",
            "warren --root /r delete x",
            "warren --root /r delete --force x",
            "warren --root /r delete -f x",
            "warren --log-format=text state x",
        ] {
            let fast = parse(&args(line)).unwrap_or_else(|| panic!("{line}: not read here"));
            let clap = whole_tree(&all, line);
            assert_eq!(format!("{fast:?}"), format!("{clap:?}"), "{line}");
        }
    }

    /// What is not a plain form is left to clap, which reads it or says what is wrong.
    #[test]
    fn anything_else_is_left_to_clap() {
        for line in [
            "warren",
            "warren --root /r",
            "warren --help",
            "warren run --help",
            "warren -V",
            "warren list",
            "warren exec x ls",
            "warren run --rm --image debian",
            "warren run -b /b",
            "warren run -b /b x y",
            "warren run -b /b x -- true",
            "warren run x --detach",
            "warren run -dt x",
            "warren run -b",
            "warren run -b= x",
            "warren run --bundle= x",
            "warren run -b -x x",
            "warren run --detach=true x",
            "warren run --preserve-fds many x",
            "warren run -b /a -b /b x",
            "warren --root /a --root /b state x",
            "warren state --root /r x",
            "warren --no-such state x",
            "warren state",
            "warren state -x",
            "warren state x y",
            "warren kill x KILL extra",
            "warren delete --force --force x",
            "warren delete x --force",
        ] {
            assert!(parse(&args(line)).is_none(), "{line}");
        }
    }
}
