//! `warren`: images, id ranges, and containers (OCI-runtime compatible). Argument parsing
//! and output only; each subcommand group lives in `bin/warren/` over the library.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
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

fn main() {
    // First: this process may be the rootless helper a `warren` re-executed.
    warren::mount::rootless::dispatch();
    warren::container::monitor::dispatch();
    warren::net::dns::dispatch();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cmd = Cli::command();
    let template = help::template(&cmd);
    let mut cmd = cmd.help_template(template);
    let cli = cmd
        .try_get_matches_from_mut(&args)
        .and_then(|m| Cli::from_arg_matches(&m))
        .unwrap_or_else(|e| {
            // OCI clients show the runtime's last `--log` line: it must be this error.
            if e.use_stderr() {
                oci::log::parse_error(&args, &e);
            }
            help::exit(&args, &cmd, e)
        });
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
