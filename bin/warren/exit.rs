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

/// What to type next, for errors the library states without CLI advice. The library's
/// transparent wrappers hide the inner error from `chain()`, so they are opened here.
pub fn hint(error: &anyhow::Error) -> Option<String> {
    use warren::runtime::Error as R;
    error.chain().find_map(|e| {
        if let Some(r) = e.downcast_ref::<R>() {
            return match r {
                R::Exists(name) => Some(format!(
                    "remove it first (`warren rm --force {name}`) or run with --replace"
                )),
                R::Container(c) => container_hint(c),
                R::Image(i) => image_hint(i),
                R::Store(s) => store_hint(s),
                R::Ids(a) => ids_hint(a),
                _ => None,
            };
        }
        if let Some(c) = e.downcast_ref::<warren::container::Error>() {
            return container_hint(c);
        }
        if let Some(i) = e.downcast_ref::<warren::runtime::images::ImageError>() {
            return image_hint(i);
        }
        if let Some(warren::store::remote::RemoteError::Store(s)) = e.downcast_ref() {
            return store_hint(s);
        }
        if let Some(s) = e.downcast_ref::<warren::store::StoreError>() {
            return store_hint(s);
        }
        ids_hint(e.downcast_ref()?)
    })
}

fn container_hint(e: &warren::container::Error) -> Option<String> {
    match e {
        warren::container::Error::BadState { op, .. } if op.starts_with("delete") => {
            Some("stop it first, or delete with --force".into())
        }
        _ => None,
    }
}

fn image_hint(e: &warren::runtime::images::ImageError) -> Option<String> {
    use warren::runtime::images::ImageError;
    match e {
        ImageError::Missing { name, .. } => Some(format!(
            "import it (`warren image import DIR --name {name}`, \
             `warren image import oci:DIR --name {name}`) or pull it (`warren image pull URL {name}`)"
        )),
        ImageError::Store(s) => store_hint(s),
        _ => None,
    }
}

fn store_hint(e: &warren::store::StoreError) -> Option<String> {
    use warren::store::StoreError;
    match e {
        StoreError::PrivateDestination(_) => Some(
            "push to a new directory, or to one an earlier `warren store push` published".into(),
        ),
        StoreError::ChownUnprivileged { uid, .. } => Some(format!(
            "extract with `--shift {uid} --range 1` to own every file, or inside `warren run` \
             or `unshare -r`, where the image's ids are mapped"
        )),
        _ => None,
    }
}

fn ids_hint(e: &warren::idmap::alloc::AllocError) -> Option<String> {
    use warren::idmap::alloc::AllocError;
    match e {
        AllocError::NoPool { .. } => {
            Some("as root, `warren ranges register` adds a pool line to both files".into())
        }
        AllocError::PoolOverlap { other, .. } => Some(format!(
            "give warren ids no user has (delete the `warren:` lines of /etc/subuid and \
             /etc/subgid, then run `warren ranges register`; or pick another --pool), or move \
             {}'s range",
            other.owner
        )),
        AllocError::NoRoomForPool { .. } => {
            Some("register one explicitly with `warren ranges register --start S --count N`".into())
        }
        AllocError::OutsidePool { name, .. } => Some(format!(
            "free it (`warren ranges free {name}`) and create the container again"
        )),
        _ => None,
    }
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

    #[test]
    fn hints_see_through_the_runtimes_wrappers() {
        use warren::runtime::images::ImageError;
        let missing = ImageError::Missing {
            name: "web".into(),
            store: "/s".into(),
        };
        let e = anyhow::Error::new(warren::runtime::Error::Image(missing)).context("run");
        let text = hint(&e).expect("a hint for a missing image");
        assert!(
            text.contains("`warren image import DIR --name web`"),
            "{text}"
        );
        let outside = warren::idmap::alloc::AllocError::OutsidePool {
            name: "old".into(),
            uids: warren::idmap::IdRange::new(0x20000, 0x10000).unwrap(),
            gids: warren::idmap::IdRange::new(0x20000, 0x10000).unwrap(),
            pool: "root pool".into(),
        };
        let e = anyhow::Error::new(warren::runtime::Error::Ids(outside));
        assert!(hint(&e).unwrap().contains("`warren ranges free old`"));
        let plain = anyhow::Error::new(warren::runtime::Error::NotFound("web".into()));
        assert_eq!(hint(&plain), None);
    }
}
