//! What the bridge network tests share: a state directory whose containers, networks,
//! links and namespace pins are found and removed, and one HTTP request by busybox nc.
#![allow(dead_code)]

use super::common::{ok, require_root, require_tool, run, scratch, warren};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A test's warren state directory, on bridge networks. Dropped, it removes whatever the
/// test left (a failed test's leftovers; a passing test has none).
pub struct NetEnv {
    pub dir: tempfile::TempDir,
}

impl NetEnv {
    /// None when the suite runs unprivileged on purpose (see `require_root`).
    pub fn new(name: &str) -> Option<NetEnv> {
        if !require_root("bridge networks need root (netlink, network namespaces)") {
            return None;
        }
        require_tool("busybox", "busybox-static");
        require_tool("ip", "iproute2");
        Some(NetEnv { dir: scratch(name) })
    }

    pub fn warren(&self) -> Command {
        warren(self.dir.path())
    }

    pub fn ok(&self, args: &[&str]) -> String {
        ok(self.warren().args(args))
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The links this state directory made (warren marks them with its path).
    pub fn links(&self) -> Vec<String> {
        let tag = format!("warren:{}", self.state().join("networks").display());
        let out = ok(Command::new("ip").args(["-j", "-d", "link", "show"]));
        let links: serde_json::Value = serde_json::from_str(&out).expect("ip -j link");
        links
            .as_array()
            .expect("a list of links")
            .iter()
            .filter(|l| l["ifalias"].as_str() == Some(tag.as_str()))
            .filter_map(|l| l["ifname"].as_str().map(String::from))
            .collect()
    }

    /// The namespace pins left in the run directory.
    pub fn pins(&self) -> Vec<String> {
        warren::net::netns::pins(&self.dir.path().join("run/.networks/netns"))
    }

    pub fn inspect(&self, network: &str) -> serde_json::Value {
        let out = self.ok(&["network", "inspect", network]);
        serde_json::from_str(&out).expect("inspect prints JSON")
    }

    /// Field `field` (`addr`, `addr6`) of `container`'s endpoint on `network`.
    pub fn endpoint(&self, network: &str, container: &str, field: &str) -> String {
        let v = self.inspect(network);
        v["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .find(|e| e["container"] == container)
            .and_then(|e| e[field].as_str())
            .unwrap_or_else(|| panic!("{container} has no {field} on {network}: {v}"))
            .to_string()
    }

    /// Removes every container and the `networks`, then checks that no link or
    /// namespace pin is left.
    pub fn teardown(&self, networks: &[&str]) {
        let names = self.ok(&["ps", "-q"]);
        for name in names.lines().filter(|l| !l.is_empty()) {
            self.ok(&["rm", "-f", name]);
        }
        for n in networks {
            self.ok(&["network", "rm", n]);
        }
        assert_eq!(self.links(), Vec::<String>::new(), "links left behind");
        assert_eq!(self.pins(), Vec::<String>::new(), "namespaces left behind");
    }

    /// Removes every container, network and link of this state directory, errors
    /// ignored.
    pub fn remove_all(&self) {
        let _ = run(self.warren().args(["rm", "-f", "--ignore"]).args(
            String::from_utf8_lossy(&run(self.warren().args(["ps", "-q"])).stdout)
                .lines()
                .collect::<Vec<_>>(),
        ));
        let _ = run(self.warren().args(["network", "prune"]));
        let nets = run(self.warren().args(["network", "ls", "-q"]));
        for n in String::from_utf8_lossy(&nets.stdout).lines() {
            let _ = run(self.warren().args(["network", "rm", n]));
        }
        for link in self.links() {
            let _ = run(Command::new("ip").args(["link", "del", &link]));
        }
        // The pins' directory is a mount of its own (shared, as /run/netns is).
        let pins = self.dir.path().join("run/.networks/netns");
        let _ = nix::mount::umount2(&pins, nix::mount::MntFlags::MNT_DETACH);
    }
}

impl Drop for NetEnv {
    fn drop(&mut self) {
        self.remove_all();
    }
}

/// One HTTP request for `/cgi-bin/who` from NS (or the host) by busybox nc (2 s to
/// connect, 5 s in all): the answer's last line ("NAME CLIENT_ADDRESS", the address
/// without brackets, an IPv4 client of an IPv6 socket without `::ffff:`), or None.
pub fn fetch(ns: Option<&str>, addr: &str, port: u16) -> Option<String> {
    use std::io::Write;
    let mut cmd = Command::new("timeout");
    cmd.arg("5");
    if let Some(ns) = ns {
        cmd.args(["ip", "netns", "exec", ns]);
    }
    cmd.args(["busybox", "nc", "-w", "2", addr, &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(b"GET /cgi-bin/who HTTP/1.0\r\n\r\n");
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.starts_with("HTTP/1.1 200") {
        return None;
    }
    let body = text
        .lines()
        .last()?
        .replace("[::ffff:", "")
        .replace(['[', ']'], "");
    Some(body.trim().to_string())
}
