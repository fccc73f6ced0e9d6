//! `examples/scheduler.rs` as a scheduler author relies on it: it converges, survives
//! its own SIGKILL (the next instance adopts the running containers: same pids, nothing
//! restarted, and learns how the others ended meanwhile), hands over on SIGTERM, leaves
//! a container started by hand alone, and restarts a crashing one with growing delays,
//! reporting its exit status and log. Real containers, as root.

mod common;

use common::*;
use serde_json::Value;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};
use warren::runtime::{Runtime, RuntimeOptions};

fn options(dir: &Path) -> RuntimeOptions {
    RuntimeOptions {
        state_dir: dir.join("state"),
        store_dir: dir.join("state/store"),
        run_dir: dir.join("run"),
        pool: None,
    }
}

fn example() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--example", "scheduler"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo build --example scheduler");
    assert!(status.success());
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/debug/examples/scheduler")
}

/// A running scheduler and its passes, one JSON object each.
struct Scheduler {
    child: Child,
    passes: Receiver<Value>,
}

impl Scheduler {
    fn start(dir: &Path, desired: &Path, extra: &[&str]) -> Scheduler {
        let mut child = Command::new(example_path())
            .arg(desired)
            .args(["--owner", "test", "--interval-ms", "50", "--root"])
            .arg(dir.join("run"))
            .args(extra)
            .env("WARREN_STATE_DIR", dir.join("state"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the scheduler");
        let out = child.stdout.take().expect("stdout");
        let (tx, passes) = channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line).expect("a JSON pass");
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        Scheduler { child, passes }
    }

    /// Passes until one satisfies `done` (all of them, that one last); panics after a
    /// minute (a hang, not a timing).
    fn until(&self, what: &str, mut done: impl FnMut(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let pass = self
                .passes
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("never: {what} ({e}); passes: {seen:#?}"));
            let stop = done(&pass);
            seen.push(pass);
            if stop {
                return seen;
            }
        }
    }

    fn signal(&mut self, sig: i32) -> std::process::ExitStatus {
        // SAFETY: a plain kill of our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        self.child.wait().expect("wait for the scheduler")
    }
}

fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/debug/examples/scheduler")
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} in {v}"))
        .iter()
        .map(|s| s.as_str().expect("a name").to_string())
        .collect()
}

fn pid_of(v: &Value, name: &str) -> Option<i64> {
    v["pids"][name].as_i64()
}

/// The failures reported for `name` over `passes`.
fn failures<'a>(passes: &'a [Value], name: &str) -> Vec<&'a Value> {
    passes
        .iter()
        .flat_map(|p| p["failures"].as_array().into_iter().flatten())
        .filter(|f| f["name"] == name)
        .collect()
}

#[test]
fn scheduler_adopts_after_sigkill_leaves_foreign_alone_and_backs_off() {
    if !require_root("runs containers with the library and the CLI as root") {
        return;
    }
    require_tool("busybox", "busybox-static");
    example();
    let dir = scratch("scheduler");
    let d = dir.path();
    // A container started by hand: never the scheduler's business.
    ok(Command::new(bin("warren"))
        .env("WARREN_STATE_DIR", d.join("state"))
        .arg("--root")
        .arg(d.join("run"))
        .args(["run", "-d", "--image", "busybox", "--name", "hand", "--"])
        .args(["sleep", "1000"]));
    let rt = Runtime::open(options(d)).expect("open runtime");
    let hand_pid = rt.attach("hand").expect("attach hand").pid();

    let desired = d.join("desired.toml");
    std::fs::write(
        &desired,
        "[[service]]\nname = \"web\"\nimage = \"busybox\"\nreplicas = 2\ncommand = [\"sleep\", \"1000\"]\n\n\
         [[service]]\nname = \"crash\"\nimage = \"busybox\"\ncommand = [\"sh\", \"-c\", \"echo boom; exit 3\"]\n",
    )
    .expect("write desired.toml");

    // Converge; the crashing one fails three times with growing delays.
    let mut first = Scheduler::start(d, &desired, &[]);
    let passes = first.until("web up", |p| {
        pid_of(p, "web-0").is_some() && pid_of(p, "web-1").is_some()
    });
    let pids = |p: &Value| (pid_of(p, "web-0"), pid_of(p, "web-1"));
    let before = pids(passes.last().unwrap());
    let mut all = passes;
    let mut seen = failures(&all, "crash-0").len();
    if seen < 3 {
        all.extend(first.until("crash-0 failed 3 times", |p| {
            seen += failures(std::slice::from_ref(p), "crash-0").len();
            seen >= 3
        }));
    }
    let crashes = failures(&all, "crash-0");
    assert!(crashes.len() >= 3, "{all:#?}");
    let delays: Vec<u64> = crashes
        .iter()
        .map(|f| f["delay_ms"].as_u64().unwrap())
        .collect();
    assert!(
        delays.windows(2).all(|w| w[0] < w[1]),
        "delays grow: {delays:?}"
    );
    for f in &crashes {
        assert_eq!(f["code"], 3, "{f}");
        assert_eq!(f["status"], "exit code 3", "{f}");
        assert!(strings(f, "log").contains(&"boom".to_string()), "{f}");
    }
    assert!(
        all.iter().all(|p| !p.to_string().contains("\"hand\"")),
        "{all:#?}"
    );

    // SIGKILL: the containers live on under their monitors; the next instance adopts.
    first.signal(libc::SIGKILL);
    assert_eq!(
        rt.attach("web-0").expect("web-0 lives").pid() as i64,
        before.0.unwrap()
    );
    let mut second = Scheduler::start(d, &desired, &[]);
    let passes = second.until("the first pass", |_| true);
    let pass = &passes[0];
    assert_eq!(pids(pass), before, "same pids: nothing restarted: {pass}");
    let adopted = strings(pass, "adopted");
    assert!(
        adopted.contains(&"web-0".into()) && adopted.contains(&"web-1".into()),
        "{pass}"
    );
    assert!(
        !strings(pass, "started")
            .iter()
            .any(|n| n.starts_with("web")),
        "{pass}"
    );
    // What crash-0 did while no scheduler ran was recorded by its monitor.
    let passes = second.until("crash-0 fails under the second instance", |p| {
        !failures(std::slice::from_ref(p), "crash-0").is_empty()
    });
    assert_eq!(failures(&passes, "crash-0")[0]["code"], 3, "{passes:#?}");

    // SIGTERM hands over: the scheduler ends, its containers run on.
    let status = second.signal(libc::SIGTERM);
    assert!(status.success(), "{status}");
    assert_eq!(
        rt.attach("web-1").expect("web-1 lives").pid() as i64,
        before.1.unwrap()
    );

    // One pass with --iterations stops and removes what the scheduler owns, only that.
    let mut last = Scheduler::start(d, &desired, &["--iterations", "1"]);
    let status = last.child.wait().expect("wait");
    assert!(status.success(), "{status}");
    assert!(rt.attach("web-0").is_err(), "web-0 removed");
    let hand = rt.attach("hand").expect("hand left alone");
    assert_eq!(hand.pid(), hand_pid);
    assert_eq!(hand.status(), oci_spec::runtime::ContainerState::Running);
    rt.delete("hand", true).expect("remove hand");
}
