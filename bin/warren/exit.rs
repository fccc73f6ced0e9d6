//! Exit codes of `warren run --image` and the product commands, podman's convention:
//! 125 warren itself failed (before the workload ran), 126 the command cannot be
//! executed, 127 the command was not found; otherwise the workload's own code (128+N for
//! a signal). A unit's `RestartPreventExitStatus=125 126 127` then tells a broken
//! config from a workload that crashed. The OCI commands keep runc's 1.

use crate::Command;

/// warren failed before the workload ran.
pub const FAILED: i32 = 125;

/// True when `command` follows podman's exit codes rather than runc's.
pub fn podman_convention(command: &Command) -> bool {
    match command {
        Command::Product(_) => true,
        Command::Oci(crate::oci::Command::Run { image, .. }) => {
            image.image.is_some() || image.config.is_some()
        }
        _ => false,
    }
}

/// Exits for arguments clap refused: clap's own code (2 for a usage error), but 125
/// for the podman-convention commands.
pub fn parse_error(args: &[std::ffi::OsString], e: clap::Error) -> ! {
    if e.use_stderr() && podman_args(args) {
        let _ = e.print();
        std::process::exit(FAILED);
    }
    e.exit()
}

/// True when arguments clap refused are for `run --image` or `--config` (the unit's
/// form): a bad flag there is warren's failure (125), not clap's usage error (2).
pub fn podman_args(args: &[std::ffi::OsString]) -> bool {
    let mut flags = args
        .iter()
        .filter_map(|a| a.to_str())
        .take_while(|a| *a != "--");
    flags.any(|a| {
        ["--image", "--config"]
            .iter()
            .any(|f| a == *f || a.strip_prefix(f).is_some_and(|r| r.starts_with('=')))
    })
}

/// The exit code for `error`: 126/127 for a command that cannot run, else 125 under
/// podman's convention (`podman`) and runc's 1 otherwise.
pub fn exit_code_for(error: &anyhow::Error, podman: bool) -> i32 {
    let other = if podman { FAILED } else { 1 };
    error.chain().find_map(exec_code).unwrap_or(other)
}

/// 126/127 for a workload that could not be executed, from the container layer's error
/// (directly, or inside the runtime's transparent wrapper).
fn exec_code(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let container = match e.downcast_ref::<warren::runtime::Error>() {
        Some(warren::runtime::Error::Container(c)) => c,
        Some(_) => return None,
        None => e.downcast_ref::<warren::container::Error>()?,
    };
    container.exec_exit_code()
}

/// What to type next, for errors the library states without CLI advice.
pub fn hint(error: &anyhow::Error) -> Option<String> {
    error.chain().find_map(|e| {
        let container = match e.downcast_ref::<warren::runtime::Error>() {
            Some(warren::runtime::Error::Exists(name)) => {
                return Some(format!(
                    "remove it first (`warren rm --force {name}`) or run with --replace"
                ));
            }
            Some(warren::runtime::Error::Container(c)) => c,
            Some(_) => return None,
            None => e.downcast_ref::<warren::container::Error>()?,
        };
        match container {
            warren::container::Error::BadState { op, .. } if op.starts_with("delete") => {
                Some("stop it first, or delete with --force".into())
            }
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warren_failures_are_125() {
        let missing = warren::runtime::Error::NotFound("web".into());
        assert_eq!(exit_code_for(&anyhow::Error::new(missing), true), FAILED);
        let wrapped = anyhow::anyhow!("bad flag").context("run");
        assert_eq!(exit_code_for(&wrapped, true), FAILED);
        assert_eq!(exit_code_for(&wrapped, false), 1, "runc's code");
    }
}
