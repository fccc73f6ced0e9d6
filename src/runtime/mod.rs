//! `Runtime`: the API a scheduler links. "Run image X as container Y" in one call, by
//! name: reserve Y's id block, extract X once per host, build Y's shifted view of it,
//! generate the OCI config and create the container, directly, with no subprocess.
//!
//! Thread-safe: every method takes `&self`, and `Runtime` is `Send + Sync`. Calls block
//! (mounts, extraction, waiting), so async callers run them on a blocking pool
//! (`tokio::task::spawn_blocking`) and poll [`Handle::pidfd`] for a container's exit.
//!
//! A scheduler marks what it owns with [`ContainerConfig::labels`] (recorded, shown by
//! [`Runtime::list`]), creates under a monitor ([`Runtime::with_monitor`]: the init's
//! parent is a small process of its own, which records the exit facts however long the
//! scheduler is gone), and after a restart takes its containers back with
//! [`Runtime::attach`]. How a container ended ([`Exit`]: code, signal, OOM kill) is in
//! its state once someone collected it; a dropped [`Handle`] never leaves a zombie.
//!
//! A program that links it calls [`crate::main_hook`] first thing in `main`: rootless,
//! the work on a container's copy (extract, remove) runs in a helper that re-executes
//! the running binary ([`crate::mount::rootless`]); a program whose `main` is not its own
//! (a test harness) names a `warren` binary instead ([`Runtime::with_helper`]).

pub mod config;
pub mod fuse_view;
pub mod images;
mod network;
pub mod rootless_view;
pub mod spec;

pub use config::{BindMount, ConfigFile, ContainerConfig, Network};

use crate::container::{self, Container, CreateOptions, Exit};
use crate::idmap::alloc::{AllocError, Allocator, Pool, Reservation};
use crate::mount::rootless;
use crate::mount::shifted::{self, MountError, MountSpec};
use crate::store::oci::{ImageConfig, OciError};
use crate::store::{Store, StoreError};
use images::{ImageCache, ImageError};
use oci_spec::runtime::ContainerState;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Mutex;

/// Where a runtime keeps things; [`RuntimeOptions::detect`] gives the defaults for the
/// calling user (rootful or rootless).
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// Id reservations, extracted images, containers' writable layers.
    pub state_dir: PathBuf,
    /// The chunk store.
    pub store_dir: PathBuf,
    /// Containers' runtime state (runc's `--root`).
    pub run_dir: PathBuf,
    /// Where id blocks come from (default: the root pool, or the user's subuids).
    pub pool: Option<Pool>,
}

impl RuntimeOptions {
    pub fn detect() -> Self {
        let state_dir = crate::dirs::state_dir();
        RuntimeOptions {
            store_dir: state_dir.join("store"),
            run_dir: crate::dirs::run_dir(),
            state_dir,
            pool: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container name {0:?}: use letters, digits, '.', '_' and '-' (at most 64)")]
    BadName(String),
    #[error("container {0:?} already exists")]
    Exists(String),
    #[error("no container named {0:?}")]
    NotFound(String),
    #[error("container {name}")]
    Config {
        name: String,
        source: spec::SpecError,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    ImageConfig(#[from] OciError),
    #[error(transparent)]
    Ids(#[from] AllocError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Rootless(#[from] crate::mount::rootless::RootlessError),
    #[error(transparent)]
    Container(#[from] container::Error),
    #[error(transparent)]
    Monitor(#[from] container::monitor::MonitorError),
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    #[error(transparent)]
    Usermode(#[from] crate::net::usermode::UsermodeError),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}

/// What the runtime records about one container, beside the OCI state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub image: String,
    pub ids: Option<Reservation>,
    /// The rootfs the container runs on (the shifted view).
    pub rootfs: PathBuf,
    /// How the view was made (`idmap`, `metacopy`, `copy`; rootless `helper-idmap`,
    /// `fuse-overlayfs`).
    pub method: Option<String>,
    /// Why that method (rootless: [`rootless_view`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method_reason: Option<String>,
    pub created: i64,
    /// The config's labels (a scheduler's mark on the containers it owns).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// One container as `warren ps` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Info {
    pub name: String,
    pub image: String,
    /// `creating`, `created`, `running` or `stopped`.
    pub status: String,
    pub pid: i32,
    pub ids: Option<Reservation>,
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method_reason: Option<String>,
    pub created: i64,
    pub labels: BTreeMap<String, String>,
    /// How it ended, once stopped and someone collected the status.
    pub exit: Option<Exit>,
}

/// A grip on one container: from [`Runtime::create`]/[`Runtime::run`] (the creator's),
/// or [`Runtime::attach`] (anyone's, e.g. a restarted scheduler's). Start it, wait for
/// it, poll its pidfd. Dropping it never leaves a zombie: an unwaited child is reaped in
/// the background and its exit facts recorded.
#[derive(Debug)]
pub struct Handle {
    pub name: String,
    container: Container,
}

impl Handle {
    pub fn start(&mut self) -> Result<(), Error> {
        Ok(self.container.start()?)
    }

    /// Blocks until the workload exits.
    pub fn wait(&self) -> Result<ExitStatus, Error> {
        Ok(self.container.wait()?)
    }

    /// Blocks until the workload exits; how it ended (also recorded in its state).
    /// Empty facts: nobody could collect the status (an adopted container whose creator
    /// died without a monitor).
    pub fn wait_exit(&self) -> Result<Exit, Error> {
        Ok(self.container.wait_exit()?)
    }

    /// The recorded exit facts, once it stopped.
    pub fn exit(&self) -> Result<Option<Exit>, Error> {
        Ok(self.container.exit()?)
    }

    /// The live status.
    pub fn status(&self) -> ContainerState {
        self.container.status()
    }

    /// Readable when the workload exits (poll it from async code, then call `wait`).
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.container.pidfd()
    }

    pub fn pid(&self) -> i32 {
        self.container.pid()
    }

    pub fn kill(&self, signal: i32) -> Result<(), Error> {
        Ok(self.container.kill(signal)?)
    }
}

/// Ties the store, id blocks, shifted mounts and containers together.
#[derive(Debug)]
pub struct Runtime {
    opts: RuntimeOptions,
    store: Store,
    ids: Allocator,
    images: ImageCache,
    /// Serializes create/delete of one name within this process (other processes are
    /// kept apart by the container state's own locks).
    busy: Mutex<HashMap<String, ()>>,
    /// The binary rootless work and the monitor re-execute ([`rootless`]).
    helper: PathBuf,
    /// Create containers under a monitor ([`container::monitor`]).
    monitor: bool,
}

impl Runtime {
    pub fn open(opts: RuntimeOptions) -> Result<Runtime, Error> {
        let pool = match &opts.pool {
            Some(p) => p.clone(),
            // As root: the registered `warren:` pool, refused when it overlaps a user's.
            None => Pool::for_current_user()?,
        };
        crate::dirs::open_state_dir(&opts.state_dir).map_err(io_err("create", &opts.state_dir))?;
        Ok(Runtime {
            store: Store::open(&opts.store_dir)?,
            ids: Allocator::open(&opts.state_dir, pool)?,
            images: ImageCache::new(opts.state_dir.join("images")),
            busy: Mutex::new(HashMap::new()),
            helper: PathBuf::from(rootless::SELF_EXE),
            monitor: false,
            opts,
        })
    }

    /// Runs rootless work (extracting a container's copy, removing it) in a helper
    /// started from `helper` instead of the running binary ([`rootless::SELF_EXE`],
    /// which needs [`crate::main_hook`] in `main`): for a program whose `main` is not its
    /// own, such as a test harness, name an installed `warren` binary. An absolute path,
    /// never looked up on PATH.
    pub fn with_helper(mut self, helper: PathBuf) -> Runtime {
        self.helper = helper;
        self
    }

    /// Creates each container under a monitor process ([`container::monitor`]) that is
    /// its init's parent: the exit facts are recorded even when this process is gone
    /// (a scheduler restarting adopts its containers with [`Runtime::attach`]), and this
    /// process never has a container child. Costs a process start per container.
    pub fn with_monitor(mut self, on: bool) -> Runtime {
        self.monitor = on;
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn options(&self) -> &RuntimeOptions {
        &self.opts
    }

    fn containers_dir(&self) -> PathBuf {
        self.opts.state_dir.join("containers")
    }

    /// The container's own directory: its record, writable layer, view and log.
    pub fn container_dir(&self, name: &str) -> PathBuf {
        self.containers_dir().join(name)
    }

    /// Where `warren run -d` sends a container's output.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.container_dir(name).join("log")
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.container_dir(name).join("warren.json")
    }

    pub fn record(&self, name: &str) -> Result<Record, Error> {
        let path = self.record_path(name);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(name.to_string()));
            }
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| {
            io_err("parse", &path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })
    }

    fn write_record(&self, record: &Record) -> Result<(), Error> {
        let path = self.record_path(&record.name);
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| {
            io_err("encode", &path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })?;
        crate::atomic::write(&path, &bytes).map_err(io_err("write", &path))
    }

    /// Creates container `name` from `cfg.image`; it waits for [`Handle::start`]. On error
    /// every step done so far is undone.
    pub fn create(&self, name: &str, cfg: ContainerConfig) -> Result<Handle, Error> {
        check_name(name)?;
        let _guard = NameGuard::take(&self.busy, name)?;
        let dir = self.container_dir(name);
        if dir.exists() || Container::load(&self.opts.run_dir, name).is_ok() {
            return Err(Error::Exists(name.to_string()));
        }
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        // The record comes first, so a crash at any later step leaves what `delete` needs.
        let mut record = Record {
            name: name.to_string(),
            image: cfg.image.clone(),
            ids: None,
            rootfs: dir.join("rootfs"),
            method: None,
            method_reason: None,
            created: now(),
            labels: cfg.labels.clone(),
        };
        self.write_record(&record)?;
        match self.build(&mut record, cfg) {
            Ok(container) => Ok(Handle {
                name: name.to_string(),
                container,
            }),
            Err(e) => {
                let _ = self.remove(name, true);
                Err(e)
            }
        }
    }

    fn build(&self, record: &mut Record, mut cfg: ContainerConfig) -> Result<Container, Error> {
        let name = record.name.clone();
        let ids = self.ids.alloc(&name)?;
        record.ids = Some(ids.clone());
        self.write_record(record)?;

        if images::is_default(&cfg.image) {
            self.images.ensure_default(&self.store)?;
        }
        let dir = self.container_dir(&name);
        let mut root_overlay = None;
        let view = if crate::dirs::is_root() {
            let lower = self.images.rootfs(&self.store, &cfg.image)?;
            fs::create_dir_all(&record.rootfs).map_err(io_err("create", &record.rootfs))?;
            let view = shifted::mount(&MountSpec::new(
                vec![lower],
                dir.join("layer"),
                record.rootfs.clone(),
                ids.uids.shift(),
            ))?;
            record.method = Some(view.method.name().to_string());
            view.view
        } else {
            root_overlay = self.rootless_view(&cfg.image, record, &ids, cfg.read_only)?;
            record.rootfs.clone()
        };
        record.rootfs = view.clone();
        self.write_record(record)?;

        let usermode = network::usermode(&cfg.network, &cfg.ports);
        network::prepare(self, &name, &mut cfg)?;
        let image = ImageConfig::of(&self.store, &cfg.image)?;
        // An overlay root exists only in the container: users are looked up in its lower.
        let lookup = root_overlay
            .as_ref()
            .map_or(view.clone(), |o| o.lower.clone());
        let spec =
            spec::build(&name, &cfg, &image, &ids, &lookup).map_err(|source| Error::Config {
                name: name.clone(),
                source,
            })?;
        if let Some(o) = root_overlay.as_mut() {
            self.upper_if_needed(o, record, &spec, &ids)?;
        }
        let stdio = if cfg.log {
            let log = self.log_path(&name);
            let out: OwnedFd = fs::File::create(&log)
                .map_err(io_err("create", &log))?
                .into();
            let err = out.try_clone().map_err(io_err("dup", &log))?;
            let null = Path::new("/dev/null");
            let null: OwnedFd = fs::File::open(null).map_err(io_err("open", null))?.into();
            [Some(null), Some(out), Some(err)]
        } else {
            std::mem::take(&mut cfg.stdio)
        };
        let opts = CreateOptions {
            bundle: Some(dir),
            console_fd: cfg.console.take(),
            stdio,
            init: cfg.init,
            rootfs: root_overlay.is_some().then(|| view.clone()),
            root_overlay,
            usermode,
            ..CreateOptions::default()
        };
        let container = if self.monitor {
            let root = &self.opts.run_dir;
            container::monitor::create(&self.helper, root, &name, &spec, opts)?
        } else {
            Container::create(&self.opts.run_dir, &name, &spec, opts)?
        };
        Ok(container)
    }

    /// Rootless: without privilege no mount can show one shared tree through another
    /// block, so the container gets its own copy of the image, extracted by a helper in
    /// a user namespace mapped onto the container's block (ids 0..R inside are the block).
    fn extract_rootless(&self, image: &str, dest: &Path, ids: &Reservation) -> Result<(), Error> {
        let store = &self.store;
        let request = rootless::Request::Extract {
            store: store.dir().into(),
            image: image.to_string(),
            dest: dest.into(),
        };
        rootless::in_userns(&self.helper, ids.uids.shift(), request)?;
        Ok(())
    }

    /// Creates and starts `name`.
    pub fn run(&self, name: &str, cfg: ContainerConfig) -> Result<Handle, Error> {
        let mut handle = self.create(name, cfg)?;
        if let Err(e) = handle.start() {
            let _ = self.remove(name, true);
            return Err(e);
        }
        Ok(handle)
    }

    /// Starts a container created earlier (possibly by another process).
    pub fn start(&self, name: &str) -> Result<(), Error> {
        Ok(self.load(name)?.start()?)
    }

    /// A handle on existing container `name`, whoever created it: a restarted scheduler
    /// takes its running containers back. Its pidfd is opened and checked against the
    /// recorded start time (a recycled pid is not the container); [`Handle::wait`] and
    /// [`Handle::wait_exit`] return what the init's parent (its monitor) records.
    pub fn attach(&self, name: &str) -> Result<Handle, Error> {
        check_name(name)?;
        Ok(Handle {
            name: name.to_string(),
            container: self.load(name)?,
        })
    }

    /// Sends `signal` to the container's init.
    pub fn kill(&self, name: &str, signal: i32) -> Result<(), Error> {
        Ok(self.load(name)?.kill(signal)?)
    }

    fn load(&self, name: &str) -> Result<Container, Error> {
        match Container::load(&self.opts.run_dir, name) {
            Err(container::Error::NotFound(_)) => Err(Error::NotFound(name.to_string())),
            other => Ok(other?),
        }
    }

    /// The OCI state of `name`.
    pub fn state(&self, name: &str) -> Result<container::State, Error> {
        Ok(self.load(name)?.state())
    }

    /// Removes `name`: its container (a running one only with `force`), its view, its
    /// writable layer and its id block. Works on whatever a crash left behind.
    pub fn delete(&self, name: &str, force: bool) -> Result<(), Error> {
        check_name(name)?;
        let _guard = NameGuard::take(&self.busy, name)?;
        if !self.container_dir(name).exists() && self.load(name).is_err() {
            return Err(Error::NotFound(name.to_string()));
        }
        self.remove(name, force)
    }

    fn remove(&self, name: &str, force: bool) -> Result<(), Error> {
        match Container::load(&self.opts.run_dir, name) {
            Ok(c) => c.delete(force)?,
            // No record: never created, or a create killed before it wrote one.
            Err(container::Error::NotFound(_)) if !self.opts.run_dir.join(name).is_dir() => {}
            Err(_) => container::delete_stale(&self.opts.run_dir, name, true)?,
        }
        network::detach(self, name)?;
        let dir = self.container_dir(name);
        let mountpoint = dir.join("rootfs");
        if shifted::is_mountpoint(&mountpoint)? {
            shifted::unmount(&mountpoint)?;
        }
        if !crate::dirs::is_root() {
            self.remove_rootless_view(name, &dir)?;
        }
        match crate::tree::remove_tree(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err("remove", &dir)(e));
            }
            _ => {}
        }
        match self.ids.free(name) {
            Ok(_) | Err(AllocError::NotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every container this runtime knows, with its live status.
    pub fn list(&self) -> Result<Vec<Info>, Error> {
        let states: HashMap<String, container::State> = Container::list(&self.opts.run_dir)?
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        let mut out = Vec::new();
        let dir = self.containers_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err("read", &dir)(e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(record) = self.record(&name) else {
                continue;
            };
            let state = states.get(&name);
            let stopped = state.is_some_and(|s| s.status == ContainerState::Stopped);
            let exit = if stopped {
                self.load(&name).ok().and_then(|c| c.exit().ok().flatten())
            } else {
                None
            };
            out.push(Info {
                status: state.map_or("creating".into(), |s| status_name(&s.status)),
                pid: state.map_or(0, |s| s.pid),
                name,
                image: record.image,
                ids: record.ids,
                method: record.method,
                method_reason: record.method_reason,
                created: record.created,
                labels: record.labels,
                exit,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Runs `process` inside running container `name` (`warren exec`).
    pub fn exec(
        &self,
        name: &str,
        process: &oci_spec::runtime::Process,
        opts: container::ExecOptions,
    ) -> Result<container::ExecProcess, Error> {
        Ok(self.load(name)?.exec(process, opts)?)
    }
}

fn status_name(s: &ContainerState) -> String {
    match s {
        ContainerState::Creating => "creating",
        ContainerState::Created => "created",
        ContainerState::Running => "running",
        ContainerState::Stopped => "stopped",
    }
    .to_string()
}

fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::BadName(name.to_string()))
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Marks a name busy in this process for the guard's lifetime.
struct NameGuard<'a> {
    busy: &'a Mutex<HashMap<String, ()>>,
    name: String,
}

impl<'a> NameGuard<'a> {
    fn take(busy: &'a Mutex<HashMap<String, ()>>, name: &str) -> Result<Self, Error> {
        let mut map = busy.lock().unwrap_or_else(|p| p.into_inner());
        if map.insert(name.to_string(), ()).is_some() {
            return Err(Error::Exists(name.to_string()));
        }
        Ok(NameGuard {
            busy,
            name: name.to_string(),
        })
    }
}

impl Drop for NameGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&self.name);
    }
}
