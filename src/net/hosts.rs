//! The `/etc/hosts` and `/etc/resolv.conf` a container on a network sees: written into
//! its own directory on the host and bind-mounted read-only over the image's, as runc
//! and podman do (the image is never written, and the container cannot change them).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where containers' hosts and resolv.conf files live (see
/// [`super::Networks::etc_dir`]).
pub const ETC_ROOT: &str = "/run/warren-etc";

/// The container's hosts file: loopback, then its address (and its IPv6 address, on a
/// dual-stack network) with its hostname, its name and aliases.
pub fn hosts(addr: Ipv4Addr, addr6: Option<Ipv6Addr>, names: &[String]) -> String {
    let mut names: Vec<&str> = names.iter().map(String::as_str).collect();
    names.dedup();
    let names = names.join(" ");
    let mut text = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{addr}\t{names}\n"
    );
    if let Some(addr6) = addr6 {
        text.push_str(&format!("{addr6}\t{names}\n"));
    }
    text
}

/// The resolver config: the network's name server when it has one, else the host's
/// resolvers (`host`: the host's resolv.conf) without the loopback ones a container
/// cannot reach; the host's `search` and `options` lines either way.
pub fn resolv_conf(nameserver: Option<Ipv4Addr>, host: &str) -> String {
    let own: Vec<IpAddr> = nameserver.into_iter().map(IpAddr::V4).collect();
    resolv_conf_with(&own, host)
}

/// [`resolv_conf`] with `nameservers` (none: the host's reachable ones).
pub fn resolv_conf_with(nameservers: &[IpAddr], host: &str) -> String {
    let mut out = String::new();
    let mut servers = Vec::new();
    for line in host.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("search") | Some("options") => {
                out.push_str(line.trim());
                out.push('\n');
            }
            Some("nameserver") => {
                let ip = words.next().and_then(|w| w.parse::<IpAddr>().ok());
                if let Some(ip) = ip.filter(|ip| !ip.is_loopback()) {
                    servers.push(ip);
                }
            }
            _ => {}
        }
    }
    if !nameservers.is_empty() {
        servers = nameservers.to_vec();
    }
    for s in servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    out
}

/// The host's resolv.conf: systemd-resolved's upstream list when it runs (its stub,
/// 127.0.0.53, is the host's loopback), else /etc/resolv.conf.
pub fn host_resolv_conf() -> String {
    ["/run/systemd/resolve/resolv.conf", "/etc/resolv.conf"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
}

/// Writes `hosts` and `resolv.conf` into `dir` (the container's directory), crash-safe,
/// mode 0644; returns (source, destination) pairs to bind-mount read-only.
pub fn write(
    dir: &Path,
    (addr, addr6): (Ipv4Addr, Option<Ipv6Addr>),
    names: &[String],
    nameserver: Option<Ipv4Addr>,
) -> std::io::Result<Vec<(PathBuf, PathBuf)>> {
    let files = [
        ("hosts", hosts(addr, addr6, names), "/etc/hosts"),
        (
            "resolv.conf",
            resolv_conf(nameserver, &host_resolv_conf()),
            "/etc/resolv.conf",
        ),
    ];
    // Traversable (0711), not listable: the container's root looks the files up.
    for d in [Path::new(ETC_ROOT), dir] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(d)?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711))?;
    }
    let mut out = Vec::new();
    for (name, text, dest) in files {
        let path = dir.join(name);
        crate::atomic::write_with(&path, |f| {
            use std::io::Write;
            f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
            f.write_all(text.as_bytes())
        })?;
        out.push((path, PathBuf::from(dest)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_name_the_container_and_its_aliases() {
        let names = vec!["web".to_string(), "www".to_string()];
        let text = hosts(Ipv4Addr::new(10, 231, 1, 2), None, &names);
        assert!(text.contains("127.0.0.1\tlocalhost\n"), "{text}");
        assert!(text.ends_with("10.231.1.2\tweb www\n"), "{text}");
        let six = "fd00:231::2".parse().unwrap();
        let text = hosts(Ipv4Addr::new(10, 231, 1, 2), Some(six), &names);
        assert!(
            text.ends_with("10.231.1.2\tweb www\nfd00:231::2\tweb www\n"),
            "{text}"
        );
    }

    #[test]
    fn resolvers_are_the_networks_or_the_hosts_reachable_ones() {
        let host = "# generated\nnameserver 127.0.0.53\nnameserver 192.0.2.53\n\
                    search example.org\noptions edns0\n";
        let own = resolv_conf(Some(Ipv4Addr::new(10, 231, 1, 1)), host);
        assert_eq!(
            own,
            "search example.org\noptions edns0\nnameserver 10.231.1.1\n"
        );
        let hosts = resolv_conf(None, host);
        assert!(hosts.contains("nameserver 192.0.2.53\n"), "{hosts}");
        assert!(!hosts.contains("127.0.0.53"), "{hosts}");
    }
}
