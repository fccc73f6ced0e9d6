//! `warren completions SHELL` and `warren man`: generated from the clap definitions, so
//! they list every subcommand and flag the binary has (`make install` installs them).

use anyhow::{Context, Result};
use clap_complete::Shell;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Write warren.1 and one warren-COMMAND.1 page per subcommand into this directory
    /// (default: warren.1 to stdout).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Prints the completion script for `shell`.
pub fn completions(mut cmd: clap::Command, shell: Shell) -> Result<i32> {
    cmd.build();
    // Into a buffer: clap_complete panics on a write error (a closed pipe).
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "warren", &mut out);
    std::io::Write::write_all(&mut std::io::stdout(), &out)?;
    Ok(0)
}

/// Prints the man page, or writes every page into `--dir`.
pub fn man(mut cmd: clap::Command, args: &ManArgs) -> Result<i32> {
    cmd.build();
    let Some(dir) = &args.dir else {
        clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
        return Ok(0);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    write_pages(&cmd, "warren", dir)?;
    Ok(0)
}

/// `NAME.1` for `cmd`, then `NAME-SUB.1` for each visible subcommand, recursively.
fn write_pages(cmd: &clap::Command, name: &str, dir: &Path) -> Result<()> {
    let path = dir.join(format!("{name}.1"));
    let mut out = Vec::new();
    // A page's name must be 'static for clap; this process ends right after.
    let page: &'static str = Box::leak(name.to_string().into_boxed_str());
    clap_mangen::Man::new(cmd.clone().name(page)).render(&mut out)?;
    std::fs::write(&path, out).with_context(|| format!("write {}", path.display()))?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}
