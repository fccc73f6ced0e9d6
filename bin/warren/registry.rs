//! `warren image pull REF`, `warren login/logout HOST`: OCI registries.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use warren::store::registry::{self, Credentials, Platform, PullOptions, auth};
use warren::store::{Progress, Store};

use crate::Global;

// How to reach a registry (shared by pull, push and login). No doc comment: clap would
// take it as the about text of every command that flattens this.
#[derive(clap::Args, Debug, Clone)]
pub struct Access {
    /// Verify the registry's TLS certificate (`--tls-verify=false` to skip: insecure).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    pub tls_verify: bool,
    /// Trust the `*.crt` CAs in DIR for this registry (besides the system's and
    /// /etc/containers/certs.d/HOST/; `$WARREN_CERTS_D` replaces the certs.d roots).
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
    /// Credentials file (default: $REGISTRY_AUTH_FILE, else the containers/docker ones).
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
}

impl Access {
    /// The registry options these flags and `creds` ask for.
    pub(crate) fn options(&self, creds: Option<&str>) -> anyhow::Result<registry::Options> {
        let mut o = registry::Options {
            tls_verify: self.tls_verify,
            cert_dir: self.cert_dir.clone(),
            ..Default::default()
        };
        if let Some(roots) = std::env::var_os("WARREN_CERTS_D") {
            o.certs_dirs = std::env::split_paths(&roots).collect();
        }
        if let Some(conf) = std::env::var_os("CONTAINERS_REGISTRIES_CONF") {
            o.registries_conf = conf.into();
        }
        if let Some(f) = &self.authfile {
            o.auth_files = vec![f.clone()];
        }
        if let Some(c) = creds {
            o.creds = Some(Credentials::parse(c).context("--creds: expected USER:PASSWORD")?);
        }
        Ok(o)
    }
}

/// Pulls REF from its registry.
pub fn pull(
    global: &Global,
    store: &Store,
    reference: &str,
    name: Option<String>,
    platform: Option<&str>,
    creds: Option<&str>,
    access: &Access,
) -> anyhow::Result<()> {
    let opts = access.options(creds)?;
    let progress = Arc::new(Progress::default());
    let import = Arc::new(Progress::default());
    let pull = PullOptions {
        platform: platform.map(Platform::parse).transpose()?,
        name,
        progress: Some(progress.clone()),
        import: warren::store::oci::ImportOptions {
            progress: Some(import.clone()),
            ..Default::default()
        },
    };
    let report = crate::image::with_bar(global, &progress, "pulling", None, || {
        registry::pull(store, reference, &opts, &pull)
    })?;
    if global.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "Pulled {} as {} ({}): {} layers, {} downloaded; {} entries, {} new chunks ({}) added to the store",
            report.reference,
            report.name,
            report.digest,
            report.layers,
            crate::image::human(report.fetched_bytes),
            report.image.entries,
            report.image.new_chunks,
            crate::image::human(report.image.new_bytes),
        );
    }
    Ok(())
}

/// Pushes image NAME to REF.
pub fn push(
    global: &Global,
    store: &Store,
    name: &str,
    reference: &str,
    format: &str,
    creds: Option<&str>,
    access: &Access,
) -> anyhow::Result<()> {
    let opts = access.options(creds)?;
    let format = match format {
        "docker" => registry::Format::Docker,
        _ => registry::Format::Oci,
    };
    let report = registry::push(store, name, reference, format, &opts)?;
    if global.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "Pushed {} to {} ({}): {} blobs sent ({}), {} already there, {} mounted from another repository",
            report.name,
            report.reference,
            report.digest,
            report.uploaded_blobs,
            crate::image::human(report.uploaded_bytes),
            report.skipped_blobs,
            report.mounted_blobs,
        );
    }
    Ok(())
}

// `warren login HOST`: checks the credentials against the registry, then stores them.
#[derive(clap::Args, Debug)]
pub struct LoginArgs {
    /// The registry, HOST[:PORT].
    pub host: String,
    /// User name (asked on the terminal if not given).
    #[arg(long, short = 'u')]
    pub username: Option<String>,
    /// Password (prefer --password-stdin: arguments are visible to other users).
    #[arg(long, short = 'p')]
    pub password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// Store the credentials without checking them against the registry.
    #[arg(long)]
    pub no_check: bool,
    #[command(flatten)]
    pub access: Access,
}

#[derive(clap::Args, Debug)]
pub struct LogoutArgs {
    /// The registry, HOST[:PORT].
    pub host: String,
    /// Credentials file (default: $REGISTRY_AUTH_FILE, else the containers one).
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
}

fn read_line(prompt: &str) -> anyhow::Result<String> {
    if !prompt.is_empty() && std::io::stderr().is_terminal() {
        eprint!("{prompt}");
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

fn auth_file(given: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    given
        .clone()
        .or_else(auth::login_file)
        .context("no credentials file: set $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR or $HOME")
}

pub fn login(global: &Global, args: LoginArgs) -> anyhow::Result<i32> {
    let username = match args.username {
        Some(u) => u,
        None => read_line("Username: ")?,
    };
    let password = match (args.password, args.password_stdin) {
        (Some(p), false) => p,
        (None, true) => read_line("")?,
        (Some(_), true) => anyhow::bail!("--password and --password-stdin: give one"),
        (None, false) => read_line("Password: ")?,
    };
    let creds = Credentials { username, password };
    let file = auth_file(&args.access.authfile)?;
    if !args.no_check {
        let mut opts = args.access.options(None)?;
        opts.creds = Some(creds.clone());
        registry::client::check_login(&opts, &args.host)?;
    }
    let helper = auth::login(&file, &args.host, &creds)?;
    if global.json {
        println!(
            "{}",
            serde_json::json!({ "login": args.host, "file": file, "helper": helper })
        );
    } else if let Some(h) = helper {
        println!(
            "Login to {} saved by {h} (named in {})",
            args.host,
            file.display()
        );
    } else {
        println!("Login to {} saved in {}", args.host, file.display());
    }
    Ok(0)
}

pub fn logout(global: &Global, args: LogoutArgs) -> anyhow::Result<i32> {
    let file = auth_file(&args.authfile)?;
    if !auth::logout(&file, &args.host)? {
        anyhow::bail!("not logged in to {} (in {})", args.host, file.display());
    }
    if global.json {
        println!(
            "{}",
            serde_json::json!({ "logout": args.host, "file": file })
        );
    } else {
        println!("Removed the login to {} from {}", args.host, file.display());
    }
    Ok(0)
}
