//! The clients' harness: one scratch environment per test process (an image, podman's
//! storage, containerd and dockerd with every socket, root and pidfile under it), the
//! table runner, and the comparison of warren's results with runc's.
//!
//! A step is a client command line (single quotes group words; `{name}` is the test's
//! container name, `{img}` the image), after optional prefixes:
//! `!` runc may exit non-zero (else runc must succeed, or the environment is broken),
//! `rc:` compare exit codes only, `lines:` exit code and line count, `last:` exit code and
//! each line's last word, `pty:` run under a pseudo-terminal (`script`),
//! `until=WORD:` repeat (bounded) until the output holds WORD.

use crate::common;
use crate::daemons::{Daemon, kill_naming, unmount_beneath};
use crate::steps::{bounded, parse_mode, shell_line, words};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

/// The image every test runs.
pub const IMAGE: &str = "localhost/warren-clients:test";
/// Where `podman --userns=auto` takes its ids from (the `containers` user's subids).
const AUTO_SUBIDS: (u32, u32) = (0x2000_0000, 0x10_0000);

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Client {
    Podman,
    PodmanRootless,
    Ctr,
    Docker,
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Runtime {
    Runc,
    Warren,
}

/// What one step did.
#[derive(Debug, Clone)]
struct Observed {
    step: String,
    rc: i32,
    out: String,
    err: String,
    /// What is compared: the exit code and the step's view of the output.
    key: (i32, String),
}

/// Defines one test per row: `name: ["step", ...];`.
#[macro_export]
macro_rules! ops {
    ($client:expr; $( $name:ident : [$($step:literal),* $(,)?]; )*) => {
        $(
            #[test]
            fn $name() {
                $crate::harness::check($client, stringify!($name), &[$($step),*]);
            }
        )*
    };
}

/// Runs `steps` with runc, then with warren, and asserts the same observable results.
pub fn check(client: Client, test: &str, steps: &[&str]) {
    if !common::require_root("runs podman, containerd and docker daemons as root") {
        return;
    }
    let env = env();
    // podman's storage hands its layer directory to the ids of the container last made
    // there: a test with its own id mapping runs alone.
    static STORAGE: RwLock<()> = RwLock::new(());
    let own_ids = steps
        .iter()
        .any(|s| s.contains("--userns") || s.contains("--uidmap"));
    let _storage = if own_ids {
        (
            None,
            Some(STORAGE.write().unwrap_or_else(|e| e.into_inner())),
        )
    } else {
        (
            Some(STORAGE.read().unwrap_or_else(|e| e.into_inner())),
            None,
        )
    };
    let runc = env.play(client, Runtime::Runc, test, steps);
    for (o, s) in runc.iter().zip(steps) {
        assert!(
            o.rc == 0 || s.starts_with('!'),
            "{test}: the reference run with runc failed at `{}` (rc {}): the environment, not \
             warren, is broken\nstdout: {}\nstderr: {}",
            o.step,
            o.rc,
            o.out,
            o.err
        );
    }
    let warren = env.play(client, Runtime::Warren, test, steps);
    let differs: Vec<String> = runc
        .iter()
        .zip(&warren)
        .filter(|(r, w)| r.key != w.key)
        .map(|(r, w)| {
            format!(
                "step `{}`:\n  runc:   rc {} {:?}\n  warren: rc {} {:?}\n  warren stderr: {}",
                r.step,
                r.key.0,
                r.key.1,
                w.key.0,
                w.key.1,
                w.err.trim()
            )
        })
        .collect();
    if !differs.is_empty() {
        panic!(
            "{test}: warren differs from runc under {client:?}\n{}",
            differs.join("\n")
        );
    }
}

/// The shared environment: made by the first test, torn down when the last one ends.
pub fn env() -> Arc<Env> {
    static ENV: Mutex<Weak<Env>> = Mutex::new(Weak::new());
    let mut slot = ENV.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(env) = slot.upgrade() {
        return env;
    }
    let env = Arc::new(Env::new());
    *slot = Arc::downgrade(&env);
    env
}

pub struct Env {
    dir: tempfile::TempDir,
    warren: PathBuf,
    runc: PathBuf,
    podman: Mutex<bool>,
    rootless: Mutex<bool>,
    containerd: Mutex<Option<Daemon>>,
    dockerd: Mutex<Option<Daemon>>,
    /// Host paths the daemons create that did not exist before: removed at the end.
    host_paths: Mutex<Vec<PathBuf>>,
}

impl Env {
    fn new() -> Env {
        for (tool, package) in [
            ("podman", "podman"),
            ("containerd", "containerd"),
            ("ctr", "containerd"),
            ("dockerd", "docker.io"),
            ("runc", "runc"),
            ("script", "bsdutils"),
            ("timeout", "coreutils"),
        ] {
            common::require_tool(tool, package);
        }
        assert!(
            Path::new("/usr/bin/docker").is_file(),
            "/usr/bin/docker is missing: apt-get install -y docker.io"
        );
        let dir = common::scratch("clients");
        // The rootless user walks into its part of it.
        set_mode(dir.path(), 0o755);
        let rootfs = dir.path().join("rootfs");
        crate::rootfs::busybox_rootfs(&rootfs);
        std::fs::write(
            dir.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
             netns = \"none\"\n\n[engine]\ncgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n",
        )
        .expect("write containers.conf");
        set_mode(&dir.path().join("containers.conf"), 0o644);
        Env {
            warren: common::bin("warren"),
            runc: common::require_tool("runc", "runc"),
            dir,
            podman: Mutex::new(false),
            rootless: Mutex::new(false),
            containerd: Mutex::new(None),
            dockerd: Mutex::new(None),
            host_paths: Mutex::new(Vec::new()),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn runtime(&self, rt: Runtime) -> &Path {
        match rt {
            Runtime::Runc => &self.runc,
            Runtime::Warren => &self.warren,
        }
    }

    /// Runs the steps of one test with runtime `rt`, then its client's cleanup.
    fn play(&self, client: Client, rt: Runtime, test: &str, steps: &[&str]) -> Vec<Observed> {
        let name = format!("{test}-{}", format!("{rt:?}").to_lowercase());
        let ns = self.prepare(client, &name);
        let observed = steps
            .iter()
            .map(|s| self.step(client, rt, &name, &ns, s))
            .collect();
        for c in cleanup(client) {
            let argv = self.argv(client, rt, &ns, &words(c, &name));
            let _ = bounded(&argv).output();
        }
        observed
    }

    fn step(&self, client: Client, rt: Runtime, name: &str, ns: &str, step: &str) -> Observed {
        let (mode, line) = parse_mode(step);
        let argv = self.argv(client, rt, ns, &words(line, name));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = if mode.pty {
                bounded(&["script", "-qec", &shell_line(&argv), "/dev/null"]).output()
            } else {
                bounded(&argv).stdin(Stdio::null()).output()
            }
            .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"));
            let text = String::from_utf8_lossy(&out.stdout)
                .replace('\r', "")
                .replace(name, "{name}");
            let wanted = mode
                .until
                .as_ref()
                .is_none_or(|w| text.contains(w.as_str()));
            if wanted || Instant::now() > deadline {
                let rc = out.status.code().unwrap_or(-1);
                return Observed {
                    step: line.to_owned(),
                    rc,
                    key: (rc, mode.view(&text, wanted)),
                    out: text,
                    err: String::from_utf8_lossy(&out.stderr).into_owned(),
                };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Makes what the client needs for a test; returns the containerd namespace.
    fn prepare(&self, client: Client, name: &str) -> String {
        match client {
            Client::Podman => self.podman_image(),
            Client::PodmanRootless => self.rootless_image(),
            Client::Ctr => {
                self.containerd();
                let ns = name.replace('_', "-");
                // The shim keeps each namespace's runtime state in /run/containerd/runc.
                self.host_paths
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Path::new("/run/containerd/runc").join(&ns));
                let argv = self.argv(client, Runtime::Runc, &ns, &[]);
                let archive = self.archive();
                let mut import = argv.clone();
                import.extend(
                    ["image", "import", "--base-name", "localhost/warren-clients"]
                        .map(String::from),
                );
                import.push(archive.display().to_string());
                common::ok(&mut bounded(&import));
                return ns;
            }
            Client::Docker => self.dockerd(),
        }
        String::new()
    }

    /// The client's command line for `step` (words) with runtime `rt`.
    fn argv(&self, client: Client, rt: Runtime, ns: &str, step: &[String]) -> Vec<String> {
        let rt_path = self.runtime(rt).display().to_string();
        let mut argv: Vec<String> = match client {
            Client::Podman => self.podman_argv(&rt_path),
            Client::PodmanRootless => self.rootless_argv(&rt_path),
            Client::Ctr => vec![
                "ctr".into(),
                "--address".into(),
                self.path("containerd/sock").display().to_string(),
                "-n".into(),
                ns.into(),
            ],
            Client::Docker => vec![
                "/usr/bin/docker".into(),
                "-H".into(),
                format!("unix://{}", self.path("docker/sock").display()),
            ],
        };
        let run_flag = match (client, rt) {
            (Client::Ctr, _) => Some(vec!["--runc-binary".to_owned(), rt_path]),
            (Client::Docker, Runtime::Warren) => Some(vec!["--runtime=warren".to_owned()]),
            _ => None,
        };
        match (run_flag, step.first()) {
            (Some(flag), Some(first)) if first == "run" => {
                argv.push(first.clone());
                argv.extend(flag);
                argv.extend(step[1..].iter().cloned());
            }
            _ => argv.extend(step.iter().cloned()),
        }
        argv
    }

    fn podman_argv(&self, runtime: &str) -> Vec<String> {
        let p = |rel: &str| self.path(rel).display().to_string();
        let conf = format!("CONTAINERS_CONF={}", p("containers.conf"));
        [
            "env",
            &conf,
            "podman",
            "--root",
            &p("podman/root"),
            "--runroot",
            &p("podman/run"),
            "--tmpdir",
            &p("podman/tmp"),
            "--storage-driver",
            "vfs",
            "--runtime",
            runtime,
        ]
        .map(String::from)
        .to_vec()
    }

    /// podman as the rootless test user, with its XDG_RUNTIME_DIR and storage here.
    fn rootless_argv(&self, runtime: &str) -> Vec<String> {
        let (uid, gid) = common::ensure_rootless_user();
        let p = |rel: &str| self.path(rel).display().to_string();
        [
            "setpriv",
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--init-groups",
            "--",
            "env",
            "-i",
            &format!("USER={}", common::ROOTLESS_USER),
            &format!("HOME=/home/{}", common::ROOTLESS_USER),
            &format!("XDG_RUNTIME_DIR={}", p("rootless/xdg")),
            &format!("CONTAINERS_CONF={}", p("containers.conf")),
            "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "podman",
            "--root",
            &p("rootless/root"),
            "--runroot",
            &p("rootless/run"),
            "--storage-driver",
            "vfs",
            "--runtime",
            runtime,
        ]
        .map(String::from)
        .to_vec()
    }

    /// Imports the image into rootful podman's storage (once).
    fn podman_image(&self) {
        let mut done = self.podman.lock().unwrap_or_else(|e| e.into_inner());
        if !*done {
            // `--userns=auto` takes its ids from the `containers` user's subids.
            common::set_subid_lines("containers", &[AUTO_SUBIDS]);
            // Its network backend's run dir, made even with no network.
            self.note_host_paths(&["/run/containers"]);
            import(self.podman_argv("runc"), &self.path("rootfs"));
            *done = true;
        }
    }

    /// Imports the image into the rootless user's storage (once).
    fn rootless_image(&self) {
        let mut done = self.rootless.lock().unwrap_or_else(|e| e.into_inner());
        if !*done {
            let (uid, gid) = common::ensure_rootless_user();
            let dir = self.path("rootless");
            for d in [dir.clone(), dir.join("xdg")] {
                std::fs::create_dir_all(&d).expect("create rootless dir");
                set_mode(&d, 0o700);
                std::os::unix::fs::chown(&d, Some(uid), Some(gid)).expect("chown rootless dir");
            }
            import(self.rootless_argv("runc"), &self.path("rootfs"));
            *done = true;
        }
    }

    /// The image as an OCI archive (for containerd), saved from podman once.
    fn archive(&self) -> PathBuf {
        self.podman_image();
        let archive = self.path("image.oci.tar");
        let _lock = self.podman.lock().unwrap_or_else(|e| e.into_inner());
        if !archive.exists() {
            let tmp = self.path("image.oci.tar.tmp");
            let mut argv = self.podman_argv("runc");
            argv.extend(["save", "--format", "oci-archive", "-o"].map(String::from));
            argv.push(tmp.display().to_string());
            argv.push(IMAGE.into());
            common::ok(&mut bounded(&argv));
            std::fs::rename(&tmp, &archive).expect("rename the archive");
        }
        archive
    }

    /// Starts containerd (once) with its root, state and socket here.
    fn containerd(&self) {
        let mut slot = self.containerd.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return;
        }
        self.note_host_paths(&["/run/containerd"]);
        let dir = self.path("containerd");
        std::fs::create_dir_all(&dir).expect("create containerd dir");
        std::fs::write(dir.join("config.toml"), "version = 2\n").expect("containerd config");
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(dir.join("config.toml"))
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--state")
            .arg(dir.join("state"))
            .arg("--address")
            .arg(dir.join("sock"));
        *slot = Some(Daemon::start("containerd", cmd, &dir.join("sock"), &dir));
    }

    /// Starts dockerd (once) on our containerd, with `warren` as an extra runtime, and
    /// imports the image.
    fn dockerd(&self) {
        self.containerd();
        let mut slot = self.dockerd.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return;
        }
        self.note_host_paths(&["/etc/docker/key.json", "/etc/docker", "/run/docker"]);
        let dir = self.path("docker");
        std::fs::create_dir_all(&dir).expect("create docker dir");
        let mut cmd = Command::new("dockerd");
        cmd.arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("pid"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("sock").display()))
            .arg("--containerd")
            .arg(self.path("containerd/sock"))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--config-file",
            ])
            .arg(dir.join("daemon.json"))
            .arg("--add-runtime")
            .arg(format!("warren={}", self.warren.display()));
        std::fs::write(dir.join("daemon.json"), "{}\n").expect("daemon.json");
        *slot = Some(Daemon::start("dockerd", cmd, &dir.join("sock"), &dir));
        let mut argv = self.argv(Client::Docker, Runtime::Runc, "", &[]);
        argv.extend(["import", "-", IMAGE].map(String::from));
        import_argv(argv, &self.path("rootfs"));
    }

    fn note_host_paths(&self, paths: &[&str]) {
        let mut list = self.host_paths.lock().unwrap_or_else(|e| e.into_inner());
        list.extend(
            paths
                .iter()
                .map(PathBuf::from)
                .filter(|p| std::fs::symlink_metadata(p).is_err()),
        );
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let (podman, rootless) = (
            *self.podman.get_mut().unwrap_or_else(|e| e.into_inner()),
            *self.rootless.get_mut().unwrap_or_else(|e| e.into_inner()),
        );
        if podman {
            let mut argv = self.podman_argv("runc");
            argv.extend(["rm", "-af", "-t", "0"].map(String::from));
            let _ = bounded(&argv).output();
        }
        if rootless {
            let mut argv = self.rootless_argv("runc");
            argv.extend(["rm", "-af", "-t", "0"].map(String::from));
            let _ = bounded(&argv).output();
            // Rootless podman keeps its user namespace open with a pause process.
            let pid_file = self.path("rootless/xdg/libpod/tmp/pause.pid");
            if let Some(pid) = std::fs::read_to_string(pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let docker = self
            .dockerd
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(docker);
        if let Some(containerd) = self
            .containerd
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            // Shims outlive containerd: ours name its socket on their command line.
            kill_naming(&self.path("containerd/sock"));
            drop(containerd);
        }
        unmount_beneath(self.dir.path());
        for p in self
            .host_paths
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = std::fs::remove_file(p).or_else(|_| std::fs::remove_dir_all(p));
        }
    }
}

/// What a client leaves behind after a test, removed whatever the test did.
fn cleanup(client: Client) -> &'static [&'static str] {
    match client {
        Client::Podman | Client::PodmanRootless => &["rm -f -t 0 {name}"],
        Client::Ctr => &[
            "task kill -s KILL {name}",
            "task delete -f {name}",
            "container delete {name}",
        ],
        Client::Docker => &["rm -f {name}"],
    }
}

/// `podman import` of the rootfs as the image.
fn import(mut podman: Vec<String>, rootfs: &Path) {
    podman.extend(["import", "-", IMAGE].map(String::from));
    import_argv(podman, rootfs);
}

/// Runs `argv` with a tar of `rootfs` on its stdin.
fn import_argv(argv: Vec<String>, rootfs: &Path) {
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run tar");
    let stdin = tar.stdout.take().expect("tar's stdout");
    let out = bounded(&argv)
        .stdin(stdin)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"));
    let _ = tar.wait();
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}
