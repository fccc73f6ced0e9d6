//! The top-level help, with the product's verbs apart from runc's, and parse errors:
//! a suggestion for every mistyped subcommand, and `{"error": ..}` under `--json`.

use clap::error::{ContextKind, ContextValue, ErrorKind};
use std::ffi::OsString;

/// runc's verbs (`bin/warren/oci/`), listed under their own heading.
const OCI_VERBS: &[&str] = &[
    "create", "start", "state", "kill", "delete", "list", "pause", "resume", "update", "events",
    "features",
];

/// Verbs both sides share: `run` (a bundle, or `--image`), `exec`, `ps` (`ps ID` is runc's).
const SHARED: &[&str] = &["run", "exec", "ps"];

/// A help template whose command list is split in two groups.
pub fn template(cmd: &clap::Command) -> String {
    let mut product = String::new();
    let mut oci = String::new();
    let width = cmd
        .get_subcommands()
        .map(|s| s.get_name().len())
        .max()
        .unwrap_or(10);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name();
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        let about = about.split(['\n']).next().unwrap_or_default();
        let line = format!("  {name:<width$}  {about}\n");
        if OCI_VERBS.contains(&name) {
            oci.push_str(&line);
        } else {
            product.push_str(&line);
        }
    }
    format!(
        "{{about-with-newline}}\n{{usage-heading}} {{usage}}\n\n\
         Commands:\n{product}\n\
         OCI runtime commands (runc-compatible, for OCI clients; {}):\n{oci}\n\
         Options:\n{{options}}{{after-help}}",
        SHARED.join(", ") + " take runc's arguments too"
    )
}

/// Shows a parse error (or help) and exits: under `--json`, an error is one JSON object
/// on stdout; a mistyped subcommand gets the nearest verbs as a tip.
pub fn exit(args: &[OsString], cmd: &clap::Command, mut e: clap::Error) -> ! {
    if e.kind() == ErrorKind::InvalidSubcommand {
        suggest(args, cmd, &mut e);
    }
    if e.use_stderr() && args.iter().any(|a| a == "--json") {
        let msg = e.render().to_string();
        let first = msg
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("invalid arguments");
        let first = first.strip_prefix("error: ").unwrap_or(first);
        println!("{}", serde_json::json!({ "error": first }));
        let podman = crate::exit::podman_args(args);
        std::process::exit(if podman {
            crate::exit::FAILED
        } else {
            e.exit_code()
        });
    }
    crate::exit::parse_error(args, e)
}

/// Adds every verb within a small edit distance to clap's own suggestions (clap offers
/// only the closest by similarity: `rn` gets `ranges`, not `run`).
fn suggest(args: &[OsString], cmd: &clap::Command, e: &mut clap::Error) {
    let Some(ContextValue::String(typo)) = e.get(ContextKind::InvalidSubcommand).cloned() else {
        return;
    };
    // The command level the typo is at: follow the subcommands named before it.
    let mut level = cmd;
    for a in args.iter().skip(1).filter_map(|a| a.to_str()) {
        if a == typo {
            break;
        }
        if let Some(sub) = level.find_subcommand(a) {
            level = sub;
        }
    }
    let mut found: Vec<(usize, String)> = level
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .flat_map(|s| std::iter::once(s.get_name()).chain(s.get_visible_aliases()))
        .map(|n| (distance(&typo, n), n.to_string()))
        .filter(|(d, n)| *d <= if n.len() <= 4 { 1 } else { 2 })
        .collect();
    if let Some(ContextValue::Strings(theirs)) = e.get(ContextKind::SuggestedSubcommand) {
        found.extend(theirs.iter().map(|n| (distance(&typo, n), n.clone())));
    }
    found.sort();
    found.dedup_by(|a, b| a.1 == b.1);
    if !found.is_empty() {
        let names = found.into_iter().map(|(_, n)| n).collect();
        e.insert(
            ContextKind::SuggestedSubcommand,
            ContextValue::Strings(names),
        );
    }
}

/// Edit distance with adjacent transpositions (optimal string alignment).
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::distance;

    #[test]
    fn distances() {
        assert_eq!(distance("rn", "run"), 1);
        assert_eq!(distance("stpo", "stop"), 1);
        assert_eq!(distance("rn", "ranges"), 4);
        assert_eq!(distance("", "ps"), 2);
    }
}
