//! `warren`: images, id ranges, and containers (OCI-runtime compatible). Argument parsing
//! and output only; each subcommand group lives in `bin/warren/` over the library.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;

#[path = "warren/docs.rs"]
mod docs;
#[path = "warren/exit.rs"]
mod exit;
#[path = "warren/help.rs"]
mod help;
#[path = "warren/image.rs"]
mod image;
#[path = "warren/network.rs"]
mod network;
#[path = "warren/oci/mod.rs"]
mod oci;
#[path = "warren/product.rs"]
mod product;
#[path = "warren/ps.rs"]
mod ps;
#[path = "warren/ranges.rs"]
mod ranges;
#[path = "warren/registry.rs"]
mod registry;
#[path = "warren/runc_args.rs"]
mod runc_args;
#[path = "warren/store.rs"]
mod store;

/// Options every subcommand sees. The OCI ones match runc/crun so OCI clients can call us.
#[derive(clap::Args, Debug, Clone)]
pub struct Global {
    /// State directory: id blocks, extracted images, containers' layers and logs, and
    /// the store (default: $WARREN_STATE_DIR, else /var/lib/warren as root,
    /// $XDG_DATA_HOME/warren rootless).
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Directory for containers' runtime state (runc's --root).
    #[arg(long, global = true)]
    pub root: Option<PathBuf>,
    /// Chunk store directory (default: STATE_DIR/store).
    #[arg(long, global = true)]
    pub store: Option<PathBuf>,
    /// Log file (OCI clients pass it).
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, global = true, default_value = "text")]
    pub log_format: String,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
    /// More logging.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Accepted for compatibility with OCI clients.
    #[arg(long, global = true, hide = true)]
    pub systemd_cgroup: bool,
    /// Accepted for compatibility with OCI clients.
    #[arg(long, global = true, hide = true)]
    pub rootless: Option<String>,
}

#[derive(Parser, Debug)]
#[command(
    name = "warren",
    version,
    about = "Rootless containers from shared, chunk-deduplicated images"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
#[command(defer = true)]
enum Command {
    /// Per-container uid/gid blocks.
    #[command(subcommand)]
    Ranges(ranges::Command),
    /// Images in the chunk store.
    #[command(subcommand)]
    Image(image::Command),
    /// Save credentials for a registry (in the containers auth.json).
    Login(registry::LoginArgs),
    /// Remove a registry's saved credentials.
    Logout(registry::LogoutArgs),
    /// The chunk store itself.
    #[command(subcommand)]
    Store(store::Command),
    /// Bridge networks: addresses, published ports, names (root).
    #[command(subcommand)]
    Network(network::Command),
    #[command(flatten)]
    Oci(oci::Command),
    #[command(flatten)]
    Product(product::Command),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (or write every page with --dir).
    Man {
        #[command(flatten)]
        args: docs::ManArgs,
    },
}

/// The top level alone: the options every subcommand sees (see [`parse`]).
#[derive(Parser)]
#[command(name = "warren")]
struct Top {
    #[command(flatten)]
    global: Global,
}

/// Parses the command line. clap builds every subcommand before it parses (each gets a
/// copy of the global options: ~0.3 ms of a container start), so a command line that
/// names a subcommand is parsed against that one alone first. What it does not take
/// (help, a mistake, no subcommand) goes through the whole tree, for clap's messages.
fn parse(args: &[OsString]) -> Cli {
    if let Some(cli) = runc_args::parse(args) {
        return cli;
    }
    let cmd = Cli::command();
    if let Some(cli) = parse_one(&cmd, args) {
        return cli;
    }
    let template = help::template(&cmd);
    let mut cmd = cmd.help_template(template);
    cmd.try_get_matches_from_mut(args)
        .and_then(|m| Cli::from_arg_matches(&m))
        .unwrap_or_else(|e| {
            // OCI clients show the runtime's last `--log` line: it must be this error.
            if e.use_stderr() {
                oci::log::parse_error(args, &e);
            }
            help::exit(args, &cmd, e)
        })
}

/// `args` parsed by the top level and the one subcommand they name, if that succeeds.
fn parse_one(all: &clap::Command, args: &[OsString]) -> Option<Cli> {
    let sub = all.find_subcommand(verb(all, args)?)?;
    let mut one = Top::command().subcommand(sub.clone());
    let matches = one.try_get_matches_from_mut(args).ok()?;
    Cli::from_arg_matches(&matches).ok()
}

/// The subcommand a command line names: its first argument that is neither a top-level
/// option of `cmd` nor the value of one.
fn verb<'a>(cmd: &clap::Command, args: &'a [OsString]) -> Option<&'a str> {
    let mut rest = args.iter().skip(1);
    while let Some(a) = rest.next() {
        let a = a.to_str()?;
        let Some(long) = a.strip_prefix("--") else {
            // A short option (-h, -V) is the whole tree's.
            return (!a.starts_with('-')).then_some(a);
        };
        if long.contains('=') {
            continue;
        }
        let option = cmd.get_arguments().find(|o| o.get_long() == Some(long))?;
        if option.get_action().takes_values() {
            rest.next();
        }
    }
    None
}

fn main() {
    // First: this process may be the rootless helper a `warren` re-executed.
    warren::mount::rootless::dispatch();
    warren::container::monitor::dispatch();
    warren::net::dns::dispatch();
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = parse(&args);
    if let Some(dir) = &cli.global.state_dir {
        // SAFETY: no other thread yet; the library and the helpers warren re-executes
        // read the state directory from this variable.
        unsafe { std::env::set_var("WARREN_STATE_DIR", dir) };
    }
    if matches!(&cli.command, Command::Oci(c) if c.needs_sealed_binary()) {
        // Before any thread: container processes are clones of this one, and those a
        // container can reach must not find a writable runtime binary behind
        // /proc/PID/exe. Creating a container refuses to go on (saying why) if this fails.
        if let Err(e) = warren::container::exe::reexec_sealed() {
            eprintln!(
                "warren: cannot protect the runtime binary: {}",
                warren::error_line(&e)
            );
        }
    }
    if matches!(&cli.command, Command::Oci(_)) {
        // One malloc arena: each short thread a container's start runs beside its own (a
        // network namespace, a cgroup) would otherwise map and fault in an arena of its own.
        // SAFETY: before any thread; plain integers.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    }
    let podman_codes = exit::podman_convention(&cli.command);
    let result = match cli.command {
        Command::Ranges(c) => ranges::run(&cli.global, c),
        Command::Image(c) => image::run(&cli.global, c),
        Command::Login(a) => registry::login(&cli.global, a),
        Command::Logout(a) => registry::logout(&cli.global, a),
        Command::Store(c) => store::run(&cli.global, c),
        Command::Network(c) => network::run(&cli.global, c),
        Command::Oci(c) => oci::run(&cli.global, c),
        Command::Product(c) => product::run(&cli.global, c),
        Command::Completions { shell } => docs::completions(Cli::command(), shell),
        Command::Man { args } => docs::man(Cli::command(), &args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let msg = warren::error_line(e.as_ref());
            oci::log::error(&cli.global, &msg);
            if cli.global.json {
                println!("{}", serde_json::json!({ "error": msg }));
            } else {
                eprintln!("warren: {msg}");
                if let Some(hint) = exit::hint(&e) {
                    eprintln!("hint: {hint}");
                }
            }
            std::process::exit(exit::exit_code_for(&e, podman_codes));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn args(line: &str) -> Vec<OsString> {
        line.split(' ').map(OsString::from).collect()
    }

    /// `line` as the whole tree `all` parses it.
    pub(crate) fn whole_tree(all: &clap::Command, line: &str) -> Cli {
        all.clone()
            .try_get_matches_from(args(line))
            .and_then(|m| Cli::from_arg_matches(&m))
            .unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    #[test]
    fn the_verb_follows_the_top_level_options_and_their_values() {
        let cmd = Cli::command();
        let verb_of = |line: &str| verb(&cmd, &args(line)).map(str::to_string);
        assert_eq!(
            verb_of("warren --root /r run -b b x").as_deref(),
            Some("run")
        );
        assert_eq!(verb_of("warren --root=/r --json ps").as_deref(), Some("ps"));
        assert_eq!(
            verb_of("warren --log-format json --debug create x").as_deref(),
            Some("create")
        );
        assert_eq!(verb_of("warren --help run"), None);
        assert_eq!(verb_of("warren -V"), None);
        assert_eq!(verb_of("warren --no-such run"), None);
        assert_eq!(verb_of("warren --root"), None);
    }

    /// What the one subcommand parses is what the whole tree parses; what it refuses is
    /// left to the whole tree.
    #[test]
    fn one_subcommand_parses_as_the_whole_tree_does() {
        let all = Cli::command();
        for line in [
            "warren --root /r run -b /b --pid-file /p x",
            "warren run --rm --image debian --json -- /bin/true",
            "warren --root /r --log /l --log-format json create --bundle /b --console-socket /s x",
            "warren --root /r kill x KILL",
            "warren ps --json",
            "warren --debug image list",
            "warren ranges list",
        ] {
            let a = args(line);
            let one = parse_one(&all, &a).unwrap_or_else(|| panic!("{line}: not parsed alone"));
            let whole = whole_tree(&all, line);
            assert_eq!(format!("{one:?}"), format!("{whole:?}"), "{line}");
        }
        for line in ["warren run --help", "warren rn", "warren", "warren create"] {
            assert!(parse_one(&all, &args(line)).is_none(), "{line}");
        }
    }
}
