//! `create`: the container's namespaces, id maps, cgroup and mounts, and its process
//! waiting for `start`. The steps, in order: plan everything the child needs (which
//! namespaces to make or join, the id maps, the cgroup, the rootfs [`Plan`], the
//! process), clone it ([`spawn`]), then walk it through the protocol: GO once the maps
//! are written and the cgroup joined, the create hooks, READY, ACK once the state is
//! recorded.

use super::cgroup;
use super::delete::open_new;
use super::error::Error;
use super::exe;
use super::hooks;
use super::init::{Init, Netns};
use super::namespaces::{Namespaces, check_no_mounts, clone_makes_netns};
use super::process::compile_seccomp;
use super::process::{apply_limits, process_plan, start_hooks, wait_pidfd};
use super::protocol::{Msg, tag};
use super::rootfs::{self, Plan};
use super::spawn::{console_for, expect, send, spawn};
use super::spec;
use super::state::{self, Record, State};
use super::userns;
use crate::idmap::keeper;
use oci_spec::runtime::{ContainerState, Hooks, Linux, Spec};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// How to create a container beyond its [`Spec`].
#[derive(Debug, Default)]
pub struct CreateOptions {
    /// The bundle: recorded in the state, base of relative paths in the config
    /// (default: the current directory).
    pub bundle: Option<PathBuf>,
    /// Use this rootfs instead of the config's `root.path`.
    pub rootfs: Option<PathBuf>,
    /// A unix socket path that receives the pty master (`process.terminal`).
    pub console_socket: Option<PathBuf>,
    /// An already connected console socket (library callers).
    pub console_fd: Option<OwnedFd>,
    /// Write the init pid here.
    pub pid_file: Option<PathBuf>,
    /// The workload's stdin, stdout, stderr (default: inherited).
    pub stdio: [Option<OwnedFd>; 3],
    /// Keep fds 3..3+N open in the workload (sd_listen_fds / --preserve-fds).
    pub preserve_fds: u32,
    /// Exec at once instead of waiting for [`Container::start`](super::Container::start) (`run`).
    pub start: bool,
    /// A minimal pid 1 that reaps zombies and forwards signals to the workload.
    pub init: bool,
    /// Make the root an overlay of these layers in the container's namespaces.
    pub root_overlay: Option<super::rootfs::RootOverlay>,
    /// Attach this user-mode network to the init before it goes.
    pub usermode: Option<crate::net::usermode::Usermode>,
}

/// Creates container `id` under `root` from `spec`; returns its record and the init's
/// pidfd. On error nothing is left behind.
pub(super) fn create(
    root: &Path,
    id: &str,
    spec: &Spec,
    mut opts: CreateOptions,
) -> Result<(Record, Option<OwnedFd>), Error> {
    // A new network namespace costs about what the rest of the preparation does: one
    // that clone would make is made beside, on another thread, from the start. Not for a
    // network helper to attach: the child joins it unsynchronized with the attach (see
    // `Namespaces::clone_makes_the_network`).
    let beside = opts.usermode.is_none() && spec.linux().as_ref().is_some_and(clone_makes_netns);
    let netns = match beside {
        true => Some(crate::net::netns::make_beside().map_err(Error::io("start a thread"))?),
        false => None,
    };
    spec::validate(spec).map_err(|reason| Error::Config {
        file: opts
            .bundle
            .as_ref()
            .map(|b| b.join("config.json"))
            .unwrap_or_else(|| PathBuf::from("config.json")),
        reason: reason.to_string(),
    })?;
    let bundle = match &opts.bundle {
        Some(b) => std::path::absolute(b).map_err(Error::io("bundle path"))?,
        None => std::env::current_dir().map_err(Error::io("current directory"))?,
    };
    let rootfs = opts
        .rootfs
        .clone()
        .unwrap_or_else(|| spec::rootfs_path(spec, &bundle));
    let rootfs = std::fs::canonicalize(&rootfs)
        .ok()
        .filter(|p| p.is_dir())
        .ok_or_else(|| Error::RootfsMissing(rootfs.clone()))?;
    let dir = open_new(root, id)?;
    let mut record = new_record(spec, id, bundle, rootfs);
    let mut child: Option<(i32, OwnedFd)> = None;
    match create_in(&dir, &mut record, spec, &mut opts, netns, &mut child) {
        Ok(()) => {
            drop(dir);
            Ok((record, child.map(|(_, fd)| fd)))
        }
        Err(e) => {
            if let Some((pid, pidfd)) = child {
                let _ = crate::sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            }
            if let Some(cg) = &record.cgroup {
                let _ = cg.destroy();
            }
            let _ = dir.remove();
            Err(e)
        }
    }
}

/// The record of a container being created.
fn new_record(spec: &Spec, id: &str, bundle: PathBuf, rootfs: PathBuf) -> Record {
    Record {
        oci_version: spec.version().clone(),
        id: id.to_owned(),
        status: ContainerState::Creating,
        pid: 0,
        pid_start: 0,
        creator: std::process::id() as i32,
        bundle,
        rootfs,
        created: state::now_rfc3339(),
        // Looked up (NSS) just before the record is first saved, while the id map
        // helpers run.
        owner: String::new(),
        annotations: spec.annotations().clone().unwrap_or_default(),
        cgroup: None,
        hooks: spec.hooks().clone(),
        process: spec.process().clone(),
        seccomp: spec.linux().as_ref().and_then(|l| l.seccomp().clone()),
        exit: None,
        network_helper: None,
    }
}

/// The steps of a create; `child` is set as soon as there is one, for the caller to
/// kill on error.
fn create_in(
    dir: &state::Dir,
    record: &mut Record,
    spec: &Spec,
    opts: &mut CreateOptions,
    making_netns: Option<crate::net::netns::Making>,
    child: &mut Option<(i32, OwnedFd)>,
) -> Result<(), Error> {
    let linux = spec.linux().clone().unwrap_or_default();
    let process = spec.process().clone().unwrap_or_default();
    let mut ns = Namespaces::of(&linux)?;
    if opts.usermode.is_some() {
        ns.clone_makes_the_network();
    }
    let maps = id_maps(&linux, ns.new_userns)?;
    let nest = maps
        .as_ref()
        .and_then(|m| m.nest(&keeper::pid_file(&crate::dirs::run_dir())));
    // Our clone children show the runtime binary as /proc/PID/exe: no container process
    // that can reach one may be able to write it (a user namespace joined by path has
    // maps we cannot see).
    if exe::init_exposed(spec, opts.start, opts.init) {
        exe::check(maps.as_ref().map(uid_ranges).as_deref())?;
    }
    let (cgroups, deferred) = make_cgroup(dir, record, spec, &linux, &ns)?;
    // The cgroup's deferred part is made by another thread from now until GO (dropped on
    // an error, it is waited for: the caller then destroys a cgroup no thread still makes).
    let mut making_cgroup = match (deferred, &record.cgroup) {
        (Some(d), Some(cg)) => {
            let cg = cg.clone();
            let thread = crate::sys::spawn_small(move || d.make(&cg));
            Some(thread.map_err(Error::io("start a thread"))?)
        }
        _ => None,
    };
    let (mut plan, chroot) = root_plan(record, spec, &linux, &ns, &cgroups)?;
    if let (Some(p), Some(o)) = (plan.as_mut(), &opts.root_overlay) {
        p.set_root_overlay(o)
            .map_err(|e| Error::config("root.path", e))?;
    }
    let setgroups = !maps.as_ref().is_some_and(|m| m.deny_setgroups);
    let mut proc_plan = process_plan(&process, setgroups)?;
    proc_plan.init = opts.init;
    let console = console_for(
        &proc_plan,
        &mut opts.console_fd,
        opts.console_socket.as_deref(),
    )?;
    let (hostname, domainname) = names(spec, ns.uts)?;
    let hooks = spec.hooks().as_ref();
    let pid_joined = ns.pid_joined;
    let mut clone_flags = ns.clone;
    let other_userns = ns.new_userns || ns.user_joined;
    let mut init = Init {
        join: ns.join,
        unshare: ns.unshare,
        early_unshare: ns.early_unshare,
        new_userns: ns.new_userns,
        nest,
        nest_flags: 0,
        netns: match ns.new_net {
            true => Netns::New,
            false => Netns::Keep,
        },
        rootfs: plan,
        chroot,
        chroot_cgroupns: ns.new_cgroupns && !ns.new_mountns,
        cgroup_wait: ns.new_cgroupns && record.cgroup.is_some(),
        cgroup_tasks: match (&making_cgroup, &record.cgroup) {
            (Some(_), Some(cg)) => c_paths(&cg.v1_tasks())?,
            _ => Vec::new(),
        },
        root_fd: None,
        process: proc_plan,
        parent: 0,
        sync: -1,
        fifo: (!opts.start).then(|| exec_fifo(dir)).transpose()?,
        seccomp: compile_seccomp(linux.seccomp().as_ref())?,
        stdio: [0, 1, 2].map(|i| opts.stdio[i].as_ref().map(|f| f.as_raw_fd())),
        console_socket: console.as_ref().map(|f| f.as_raw_fd()),
        preserve_fds: opts.preserve_fds as i32,
        hooks: has_early_hooks(hooks),
        fork_after_join: pid_joined,
        exec: false,
        start_hooks: start_hooks(hooks)?,
        start_state: None,
        keep: Vec::new(),
        hostname,
        domainname,
    };
    if let Some(making) = making_netns.filter(|_| clone_flags & libc::CLONE_NEWNET != 0) {
        let made = making.finish();
        init.netns = Netns::Made(made.map_err(Error::io("make the network namespace"))?);
        clone_flags &= !libc::CLONE_NEWNET;
    }
    // It ran while this thread waited; from here both work, on two cores if there are.
    if let Some(t) = making_cgroup.as_mut() {
        t.move_off();
    }
    if !init.start_hooks.is_empty() {
        init.start_state = Some(
            rustix::fs::memfd_create("warren-state", rustix::fs::MemfdFlags::CLOEXEC)
                .map_err(|e| Error::io("memfd_create")(e.into()))?,
        );
    }
    let (pid, pidfd, sock, entered) = spawn(&mut init, clone_flags, record.cgroup.as_ref())?;
    *child = Some((pid, pidfd));
    let born_in = entered.is_some();
    // The child holds its own copies now.
    opts.stdio = Default::default();
    drop(console);
    let talk = Talk {
        sock: &sock,
        init: &init,
        usermode: opts.usermode.as_ref(),
    };
    // Made inside the kept user namespace, the init has its maps already.
    let (pid, unwritten) = match &init.nest {
        Some(_) => (reported_init(&talk, child)?, None),
        None => (pid, maps.as_ref()),
    };
    // Recorded as soon as it is known (from here a delete after a crash finds the init),
    // while the cgroup's deferred part may still be in the making.
    if !pid_joined {
        record_pid(dir, record, pid)?;
    }
    if let Some(t) = making_cgroup {
        let panicked = |_| Error::io("make the cgroup")(std::io::Error::other("panicked"));
        t.join().map_err(panicked)??;
    }
    // Born in its cgroups, the child needs no move. This thread leaves them once GO is
    // sent, off the child's path, unless `go` starts a process first (an id map or a
    // network helper: it would be born there too).
    let mut entered = entered;
    if unwritten.is_some() || talk.usermode.is_some() {
        entered.take().map(cgroup::Entered::leave).transpose()?;
    }
    let joined = go(
        &talk,
        record,
        unwritten,
        pid_joined || born_in,
        pid,
        &process,
        other_userns,
    )? || born_in;
    entered.map(cgroup::Entered::leave).transpose()?;
    let pid = match pid_joined {
        true => {
            let pid = reported_init(&talk, child)?;
            record_pid(dir, record, pid)?;
            pid
        }
        // A network helper `go` started is recorded too, for delete to stop.
        false if record.network_helper.is_some() => {
            dir.save(record)?;
            pid
        }
        false => pid,
    };
    join(&talk, record, pid, joined)?;
    create_hooks(&talk, record, hooks)?;
    created(dir, record, &init, opts.pid_file.as_deref())?;
    release(&talk, record, hooks, opts.start)
}

/// The root as the child enters it: a mount plan in a new mount namespace, else only a
/// chroot (nothing in `spec` may then change mounts).
fn root_plan(
    record: &Record,
    spec: &Spec,
    linux: &Linux,
    ns: &Namespaces,
    cgroups: &rootfs::Cgroups,
) -> Result<(Option<Plan>, Option<CString>), Error> {
    if ns.new_mountns {
        let plan = Plan::new(
            spec,
            &record.rootfs,
            &record.bundle,
            ns.new_userns || ns.user_joined,
            cgroups,
        )
        .map_err(|e| Error::Config {
            file: record.bundle.join("config.json"),
            reason: e.to_string(),
        })?;
        return Ok((Some(plan), None));
    }
    check_no_mounts(spec, linux)?;
    let path = CString::new(record.rootfs.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::config("root.path", "contains a NUL byte"))?;
    Ok((None, Some(path)))
}

/// The container is created: its record says so, startContainer hooks get that state,
/// and the pid file names its init.
fn created(
    dir: &state::Dir,
    record: &mut Record,
    init: &Init,
    pid_file: Option<&Path>,
) -> Result<(), Error> {
    record.status = ContainerState::Created;
    dir.save(record)?;
    if let Some(fd) = &init.start_state {
        let st =
            serde_json::to_vec(&State::of(record, ContainerState::Created)).unwrap_or_default();
        rustix::io::pwrite(fd, &st, 0)
            .map_err(|e| Error::io("write the state for startContainer hooks")(e.into()))?;
    }
    if let Some(p) = pid_file {
        crate::atomic::write(p, record.pid.to_string().as_bytes())
            .map_err(Error::io(format!("write {}", p.display())))?;
    }
    Ok(())
}

/// The id maps of a new user namespace.
fn id_maps(linux: &Linux, new_userns: bool) -> Result<Option<userns::Maps>, Error> {
    if !new_userns {
        return Ok(None);
    }
    let (maps, warning) = userns::Maps::plan(
        userns::Mapping::from_spec(linux.uid_mappings().as_deref().unwrap_or(&[])),
        userns::Mapping::from_spec(linux.gid_mappings().as_deref().unwrap_or(&[])),
    )?;
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    Ok(Some(maps))
}

/// The host uid ranges `(first, count)` of `maps`.
fn uid_ranges(maps: &userns::Maps) -> Vec<(u32, u32)> {
    maps.uid.iter().map(|r| (r.host, r.size)).collect()
}

/// Makes the container's cgroup when it needs one, before the rootfs plan that mounts
/// it (and records it at once, so that a runtime killed now leaves nothing a later
/// create or delete cannot find); returns how its `cgroup` mounts are made, and the
/// part left to make while the child is cloned (`cgroup::Deferred`: as root, when the
/// child joins its v1 cgroups itself, which it may in no user namespace of its own).
fn make_cgroup(
    dir: &state::Dir,
    record: &mut Record,
    spec: &Spec,
    linux: &Linux,
    ns: &Namespaces,
) -> Result<(rootfs::Cgroups, Option<cgroup::Deferred>), Error> {
    let cgroups_path = linux
        .cgroups_path()
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned());
    let cgroup_mount = spec
        .mounts()
        .iter()
        .flatten()
        .any(|m| matches!(m.typ().as_deref(), Some("cgroup" | "cgroup2")));
    // Each node in linux.devices is allowed too, as runc does.
    let nodes = linux.devices().as_deref().unwrap_or_default();
    let resources = cgroup::resources_for(linux.resources().as_ref(), nodes);
    let mut deferred = None;
    if cgroup::needed(
        resources.as_ref(),
        cgroups_path.as_deref(),
        ns.new_pid,
        ns.new_cgroupns || cgroup_mount,
    ) {
        let (id, resources, path) = (&record.id, resources.as_ref(), cgroups_path.as_deref());
        let (made, rest) = match crate::dirs::is_root() && !ns.new_userns && !ns.user_joined {
            true => cgroup::Cgroup::create_deferred(id, resources, path)?,
            false => (cgroup::Cgroup::create(id, resources, path)?, None),
        };
        record.cgroup = Some(made);
        dir.save(record)?;
        deferred = rest;
    }
    let cgroups = rootfs::Cgroups {
        new_ns: ns.new_cgroupns,
        view: match &record.cgroup {
            Some(cg) if cgroup_mount => cg.mount_view()?,
            _ => Default::default(),
        },
    };
    Ok((cgroups, deferred))
}

/// `paths` as C strings (for the child).
fn c_paths(paths: &[PathBuf]) -> Result<Vec<CString>, Error> {
    let c = |p: &PathBuf| CString::new(p.as_os_str().as_encoded_bytes());
    let nul = |_| Error::io("cgroup path")(std::io::Error::other("contains a NUL byte"));
    paths.iter().map(c).collect::<Result<_, _>>().map_err(nul)
}

/// The exec fifo `start` opens, writable by the container's root: `O_PATH` fds of it
/// and of the host's /proc (to reopen it through after pivot_root).
fn exec_fifo(dir: &state::Dir) -> Result<(OwnedFd, OwnedFd), Error> {
    let path = dir.file(state::FIFO);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o622))
        .map_err(|e| Error::io(format!("mkfifo {}", path.display()))(e.into()))?;
    // Writable by the container's root whatever the umask and id mapping.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o622))
        .map_err(Error::io(format!("chmod {}", path.display())))?;
    let o = |p: &Path, f| {
        nix::fcntl::open(
            p,
            f | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| Error::io(format!("open {}", p.display()))(e.into()))
    };
    Ok((
        o(&path, nix::fcntl::OFlag::O_PATH)?,
        o(
            Path::new("/proc"),
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY,
        )?,
    ))
}

/// The host and domain names to set (both need a uts namespace; a domain name without
/// one is ignored).
fn names(spec: &Spec, uts: bool) -> Result<(Option<CString>, Option<CString>), Error> {
    let hostname = match spec.hostname() {
        Some(h) if !h.is_empty() => {
            if !uts {
                return Err(Error::config("hostname", "needs a uts namespace"));
            }
            Some(
                CString::new(h.as_str())
                    .map_err(|_| Error::config("hostname", "contains a NUL byte"))?,
            )
        }
        _ => None,
    };
    let domainname = match spec.domainname() {
        Some(h) if !h.is_empty() && uts => Some(
            CString::new(h.as_str())
                .map_err(|_| Error::config("domainname", "contains a NUL byte"))?,
        ),
        _ => None,
    };
    Ok((hostname, domainname))
}

/// Hooks the child pauses for before pivot_root.
fn has_early_hooks(hooks: Option<&Hooks>) -> bool {
    hooks.is_some_and(|h| {
        h.create_runtime().as_ref().is_some_and(|v| !v.is_empty())
            || h.create_container().as_ref().is_some_and(|v| !v.is_empty())
            || {
                #[allow(deprecated)]
                h.prestart().as_ref().is_some_and(|v| !v.is_empty())
            }
    })
}

/// The parent's end of the sync socket and what the child was given (to describe its
/// failures).
struct Talk<'a> {
    sock: &'a OwnedFd,
    init: &'a Init,
    usermode: Option<&'a crate::net::usermode::Usermode>,
}

impl Talk<'_> {
    fn plan(&self) -> Option<&Plan> {
        self.init.rootfs.as_ref()
    }
    fn expect(&self, during: &'static str) -> Result<Option<Msg>, Error> {
        expect(self.sock, self.plan(), self.init, during)
    }
}

/// Until GO the child can do nothing but exit (and dies with us), and a directory
/// without a record is reclaimed as stale: the record is needed before GO only to name
/// a cgroup (saved by [`make_cgroup`]), else it is written while the child mounts and we
/// would wait anyway. Writes the id maps, moves the child into its cgroup when it makes
/// a cgroup namespace (returns whether it did), sets its limits and sends GO.
fn go(
    talk: &Talk,
    record: &mut Record,
    maps: Option<&userns::Maps>,
    pid_joined: bool,
    pid: i32,
    process: &oci_spec::runtime::Process,
    other_userns: bool,
) -> Result<bool, Error> {
    let writing = match maps {
        Some(m) => Some(m.start(pid)?),
        None => None,
    };
    // With the id map helpers running anyway, the cgroup join (an RCU grace period on
    // v1) overlaps them; else it overlaps the child's mounts after GO (see `join`).
    let joined = maps.is_some() && !pid_joined;
    if joined {
        if let Some(cg) = &record.cgroup {
            cg.add_pid(pid)?;
        }
    }
    if let Some(w) = writing {
        w.finish()?;
    }
    if let Some(u) = talk.usermode {
        let failed =
            |e| Error::io("attach the network")(std::io::Error::other(crate::error_line(&e)));
        let helper = crate::net::usermode::attach(u.tool, pid, &u.ports).map_err(failed)?;
        record.network_helper = state::HostProcess::of(helper.pid);
    }
    // Before GO the child runs nothing and still has our credentials (see apply_limits);
    // a forked init inherits what is set here.
    apply_limits(pid, process, other_userns)?;
    send(talk.sock, tag::GO)?;
    Ok(joined)
}

/// While the child sets up its mounts (it runs nothing of the workload before ACK):
/// joins the init to its cgroup unless [`go`] did (on v1 that waits for an RCU grace
/// period, milliseconds worth overlapping), then tells a child that waits for it to
/// make its cgroup namespace (rooted there, so it must be in it first).
fn join(talk: &Talk, record: &Record, pid: i32, joined: bool) -> Result<(), Error> {
    let Some(cg) = &record.cgroup else {
        return Ok(());
    };
    if !joined {
        cg.add_pid(pid)?;
    }
    if talk.init.cgroup_wait {
        if let Err(e) = send(talk.sock, tag::CGROUP) {
            // The child failed meanwhile: its report is waiting.
            talk.expect("create")?;
            return Err(e);
        }
    }
    Ok(())
}

/// The child made the init (our child too, by CLONE_PARENT: in a joined pid namespace,
/// or inside the kept user namespace), which goes on with the setup; it reports its pid
/// and exits. Returns the init's pid; `child` becomes the init.
fn reported_init(talk: &Talk, child: &mut Option<(i32, OwnedFd)>) -> Result<i32, Error> {
    let init_pid = match talk.expect("create")? {
        Some(m) if m.tag == tag::PID => m.a,
        _ => return Err(Error::InitDied("create")),
    };
    let init_fd = crate::sys::pidfd_open(init_pid).map_err(Error::io("pidfd_open"))?;
    if let Some((_, mid)) = child.replace((init_pid, init_fd)) {
        let _ = wait_pidfd(mid.as_fd());
    }
    Ok(init_pid)
}

/// Records the init's pid, its start time and the owner.
fn record_pid(dir: &state::Dir, record: &mut Record, pid: i32) -> Result<(), Error> {
    let (start, _) = state::proc_start(pid).ok_or(Error::InitDied("create"))?;
    record.pid = pid;
    record.pid_start = start;
    dir.save(record)
}

/// Runs the prestart, createRuntime and createContainer hooks when the child asks,
/// until it is READY.
fn create_hooks(talk: &Talk, record: &Record, hooks: Option<&Hooks>) -> Result<(), Error> {
    loop {
        match talk.expect("create")? {
            Some(m) if m.tag == tag::HOOKS => {
                let st = serde_json::to_vec(&State::of(record, ContainerState::Creating))
                    .unwrap_or_default();
                if let Some(h) = hooks {
                    #[allow(deprecated)]
                    hooks::run_all("prestart", h.prestart().as_ref(), &st)?;
                    hooks::run_all("createRuntime", h.create_runtime().as_ref(), &st)?;
                    hooks::run_all("createContainer", h.create_container().as_ref(), &st)?;
                }
                send(talk.sock, tag::HOOKS_DONE)?;
            }
            Some(m) if m.tag == tag::READY => return Ok(()),
            _ => return Err(Error::InitDied("create")),
        }
    }
}

/// ACK: the state is recorded. Without `start` the child then detaches and waits on
/// the exec fifo; with it, waits for the exec and runs the poststart hooks.
fn release(talk: &Talk, record: &Record, hooks: Option<&Hooks>, start: bool) -> Result<(), Error> {
    if let Err(e) = send(talk.sock, tag::ACK) {
        // The child sets its identity while we record: a failure there is waiting.
        talk.expect("create")?;
        return Err(e);
    }
    if !start {
        return match talk.expect("create")? {
            Some(m) if m.tag == tag::DETACHED => Ok(()),
            _ => Err(Error::InitDied("create")),
        };
    }
    // EOF: the exec happened (the socket is close-on-exec); a message: it failed.
    if let Some(m) = talk.expect("exec")? {
        return Err(Error::Init {
            what: format!("unexpected message {}", m.tag),
            errno: nix::errno::Errno::EPROTO,
        });
    }
    if let Some(h) = hooks {
        let st =
            serde_json::to_vec(&State::of(record, ContainerState::Running)).unwrap_or_default();
        hooks::run_warn("poststart", h.poststart().as_ref(), &st);
    }
    Ok(())
}
