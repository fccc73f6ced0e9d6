//! What a caller asks for one container: `ContainerConfig`, also read from
//! `/etc/warren/containers/NAME.toml` for `container@NAME.service`.

use oci_spec::runtime::LinuxResources;
use serde::Deserialize;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// The container's network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Network {
    /// Its own network namespace with only loopback, up.
    #[default]
    None,
    /// The host's network namespace.
    Host,
    /// Join an existing network namespace, e.g. `/run/netns/NAME` from `ip netns add`.
    Join(PathBuf),
    /// An address on a warren bridge network (`bridge` is the default network
    /// [`crate::net::DEFAULT_NETWORK`], `bridge:NAME` a named one). Root only.
    Bridge { network: String },
    /// Its own namespace, connected by pasta (rootless).
    Pasta,
    /// Its own namespace, connected by slirp4netns (rootless).
    Slirp4netns,
}

impl std::str::FromStr for Network {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "none" | "" => Ok(Network::None),
            "host" => Ok(Network::Host),
            p if p.starts_with('/') => Ok(Network::Join(PathBuf::from(p))),
            "bridge" => Ok(Network::Bridge {
                network: crate::net::DEFAULT_NETWORK.to_string(),
            }),
            "pasta" => Ok(Network::Pasta),
            "slirp4netns" => Ok(Network::Slirp4netns),
            other => match other.strip_prefix("bridge:") {
                Some(name) if crate::net::network::check_name(name).is_ok() => {
                    Ok(Network::Bridge {
                        network: name.to_string(),
                    })
                }
                _ => Err(ConfigError::Network(other.to_string())),
            },
        }
    }
}

/// A host path bind-mounted into the container.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: PathBuf,
    #[serde(default)]
    pub readonly: bool,
}

impl std::str::FromStr for BindMount {
    type Err = ConfigError;
    /// `SRC:DST[:ro]`, as `-v` takes it; both paths absolute.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let parts: Vec<&str> = s.split(':').collect();
        let (source, destination, readonly) = match parts.as_slice() {
            [src, dst] => (src, dst, false),
            [src, dst, "ro"] => (src, dst, true),
            [src, dst, "rw"] => (src, dst, false),
            _ => return Err(ConfigError::Volume(s.to_string())),
        };
        let (source, destination) = (PathBuf::from(source), PathBuf::from(destination));
        if !source.is_absolute() || !destination.is_absolute() {
            return Err(ConfigError::Volume(s.to_string()));
        }
        Ok(BindMount {
            source,
            destination,
            readonly,
        })
    }
}

/// Everything about one container; empty fields take the image's defaults.
#[derive(Debug, Default)]
pub struct ContainerConfig {
    /// `NAME[:TAG]` in the store.
    pub image: String,
    /// The program and its arguments (default: the image's Entrypoint + Cmd).
    pub command: Vec<String>,
    /// `KEY=VALUE`, added to (and overriding) the image's Env.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// `UID[:GID]` inside the container (default: the image's User, else 0).
    pub user: Option<String>,
    pub mounts: Vec<BindMount>,
    pub network: Network,
    /// Published ports (`-p`): through the firewall on a bridge network, through the
    /// user-mode stack with pasta or slirp4netns.
    pub ports: Vec<crate::net::PortMapping>,
    /// More names the container answers to on its bridge network (an alias may be
    /// shared by several containers).
    pub aliases: Vec<String>,
    pub hostname: Option<String>,
    pub resources: Option<LinuxResources>,
    /// The built-in default seccomp profile (on unless turned off).
    pub no_seccomp: bool,
    pub read_only: bool,
    /// Run a minimal init as pid 1 that forwards signals to the workload and reaps
    /// zombies: a workload that installs no SIGTERM handler ignores SIGTERM as pid 1.
    pub init: bool,
    /// Allocate a pty for the workload (interactive `warren run -t`); its master is sent
    /// over `console`, a connected unix socket.
    pub terminal: bool,
    pub console: Option<OwnedFd>,
    /// The pty's size (rows, columns), set before the workload starts (OCI
    /// `process.consoleSize`): the caller's terminal size for `warren run -t`.
    pub console_size: Option<(u16, u16)>,
    /// The workload's stdin, stdout, stderr (default: inherited from the caller).
    pub stdio: [Option<OwnedFd>; 3],
    /// Send stdout and stderr to the container's log file (stdin from /dev/null)
    /// instead of `stdio`: for detached containers (`warren logs`).
    pub log: bool,
    /// Recorded with the container: a scheduler marks the containers it owns.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The TOML form of a container's config (`/etc/warren/containers/NAME.toml`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub image: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    #[serde(default)]
    pub mounts: Vec<BindMount>,
    /// `none`, `host`, a network namespace path, `bridge`, `bridge:NAME`, `pasta` or
    /// `slirp4netns`.
    pub network: Option<String>,
    /// Published ports, `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]` (`-p`).
    #[serde(default)]
    pub ports: Vec<crate::net::PortMapping>,
    /// More names on the bridge network.
    #[serde(default)]
    pub aliases: Vec<String>,
    pub hostname: Option<String>,
    /// Memory limit in bytes (`512`, `"512"`), or with a K/M/G suffix (`"512M"`).
    #[serde(default, deserialize_with = "int_or_string")]
    pub memory: Option<String>,
    pub pids_limit: Option<i64>,
    /// CPU limit in cores, e.g. 0.5.
    pub cpus: Option<f64>,
    #[serde(default)]
    pub no_seccomp: bool,
    #[serde(default)]
    pub read_only: bool,
    /// A minimal init as pid 1 (see [`ContainerConfig::init`]).
    #[serde(default)]
    pub init: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "network {0:?}: expected none, host, bridge, bridge:NAME, pasta, slirp4netns, or the path of a network namespace (/run/netns/NAME)"
    )]
    Network(String),
    #[error("volume {0:?}: expected SRC:DST[:ro] with absolute paths")]
    Volume(String),
    #[error("{0:?} is not a positive size (bytes, or with a K, M, G or T suffix)")]
    Size(String),
    #[error("cpus {0}: must be a positive number of cores")]
    Cpus(f64),
    #[error("resource limits: {0}")]
    Resources(String),
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// The library config this file describes; `path` names the file in errors.
    pub fn into_config(self, path: &Path) -> Result<ContainerConfig, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let network = match &self.network {
            Some(n) => n
                .parse()
                .map_err(|e| invalid(format!("field `network`: {e}")))?,
            None => Network::None,
        };
        let memory = match &self.memory {
            Some(m) => Some(parse_bytes(m).map_err(|e| invalid(format!("field `memory`: {e}")))?),
            None => None,
        };
        Ok(ContainerConfig {
            image: self.image,
            command: self.command,
            env: self.env,
            workdir: self.workdir,
            user: self.user,
            mounts: self.mounts,
            network,
            ports: self.ports,
            aliases: self.aliases,
            hostname: self.hostname,
            resources: limits(memory, self.pids_limit, self.cpus)
                .map_err(|e| invalid(e.to_string()))?,
            no_seccomp: self.no_seccomp,
            read_only: self.read_only,
            init: self.init,
            terminal: false,
            console: None,
            console_size: None,
            stdio: [None, None, None],
            log: false,
            labels: Default::default(),
        })
    }
}

/// `512M`, `2G`, `1048576`: a byte count.
pub fn parse_bytes(s: &str) -> Result<i64, ConfigError> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult: i64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(ConfigError::Size(s.to_string())),
            };
            (&t[..i], mult)
        }
        _ => (t, 1),
    };
    num.trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| ConfigError::Size(s.to_string()))
}

/// OCI resources for the simple limits the CLI and config files offer; `None` when no
/// limit is asked for, so a host without delegated cgroups still runs the container.
pub fn limits(
    memory: Option<i64>,
    pids: Option<i64>,
    cpus: Option<f64>,
) -> Result<Option<LinuxResources>, ConfigError> {
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
    };
    if memory.is_none() && pids.is_none() && cpus.is_none() {
        return Ok(None);
    }
    let mut b = LinuxResourcesBuilder::default();
    if let Some(m) = memory {
        b = b.memory(
            LinuxMemoryBuilder::default()
                .limit(m)
                .build()
                .map_err(|e| ConfigError::Resources(e.to_string()))?,
        );
    }
    if let Some(p) = pids {
        b = b.pids(
            LinuxPidsBuilder::default()
                .limit(p)
                .build()
                .map_err(|e| ConfigError::Resources(e.to_string()))?,
        );
    }
    if let Some(c) = cpus {
        if c.is_nan() || c <= 0.0 {
            return Err(ConfigError::Cpus(c));
        }
        let period: u64 = 100_000;
        b = b.cpu(
            LinuxCpuBuilder::default()
                .period(period)
                .quota((c * period as f64) as i64)
                .build()
                .map_err(|e| ConfigError::Resources(e.to_string()))?,
        );
    }
    b.build()
        .map(Some)
        .map_err(|e| ConfigError::Resources(e.to_string()))
}

/// A TOML integer or string, as a string (`memory = 512` and `memory = "512M"`).
fn int_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum IntOrString {
        Int(i64),
        Str(String),
    }
    Ok(Some(match IntOrString::deserialize(d)? {
        IntOrString::Int(n) => n.to_string(),
        IntOrString::Str(s) => s,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_volumes_networks_and_sizes() {
        let v: BindMount = "/srv/data:/data:ro".parse().unwrap();
        assert!(v.readonly && v.destination == Path::new("/data"));
        assert!("data:/data".parse::<BindMount>().is_err());
        assert_eq!("host".parse::<Network>().unwrap(), Network::Host);
        assert_eq!(
            "bridge".parse::<Network>().unwrap(),
            Network::Bridge {
                network: "warren".into()
            }
        );
        assert_eq!(
            "bridge:web".parse::<Network>().unwrap(),
            Network::Bridge {
                network: "web".into()
            }
        );
        assert_eq!("pasta".parse::<Network>().unwrap(), Network::Pasta);
        assert_eq!(
            "slirp4netns".parse::<Network>().unwrap(),
            Network::Slirp4netns
        );
        for bad in ["bridge:", "bridge:a/b", "wifi"] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
        assert_eq!(parse_bytes("512M").unwrap(), 512 << 20);
        assert!(parse_bytes("12X").is_err());
        assert!(parse_bytes("-1").is_err());
    }

    #[test]
    fn config_file_errors_name_the_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.toml");
        std::fs::write(&path, "image = \"busybox\"\nnetwork = \"wifi\"\n").unwrap();
        let err = ConfigFile::load(&path)
            .unwrap()
            .into_config(&path)
            .unwrap_err();
        assert!(err.to_string().contains("web.toml") && err.to_string().contains("network"));
        std::fs::write(&path, "image = \"busybox\"\ninit = true\n").unwrap();
        let cfg = ConfigFile::load(&path).unwrap().into_config(&path).unwrap();
        assert!(cfg.init, "init = true asks for the minimal init");
        std::fs::write(&path, "image = \"busybox\"\ncolour = 1\n").unwrap();
        let err = ConfigFile::load(&path).unwrap_err().to_string();
        assert!(err.contains("web.toml") && err.contains("colour"), "{err}");
    }

    #[test]
    fn memory_is_bytes_as_an_integer_or_a_string() {
        for (text, want) in [("512", 512), ("\"512\"", 512), ("\"512m\"", 512 << 20)] {
            let file: ConfigFile =
                toml::from_str(&format!("image = \"b\"\nmemory = {text}")).unwrap();
            assert_eq!(parse_bytes(file.memory.as_deref().unwrap()).unwrap(), want);
        }
    }

    #[test]
    fn network_ports_and_aliases_parse_from_toml() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.toml");
        std::fs::write(
            &path,
            "image = \"busybox\"\nnetwork = \"bridge:web\"\n\
             ports = [\"8080:80\", \"127.0.0.1:5353:53/udp\"]\naliases = [\"www\", \"api\"]\n",
        )
        .unwrap();
        let cfg = ConfigFile::load(&path).unwrap().into_config(&path).unwrap();
        assert_eq!(
            cfg.network,
            Network::Bridge {
                network: "web".into()
            }
        );
        let ports: Vec<String> = cfg.ports.iter().map(|p| p.to_string()).collect();
        assert_eq!(ports, ["8080:80/tcp", "127.0.0.1:5353:53/udp"]);
        assert_eq!(cfg.aliases, ["www", "api"]);
        // A bad port names the file, the field and the value.
        std::fs::write(&path, "image = \"busybox\"\nports = [\"80\"]\n").unwrap();
        let err = ConfigFile::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("web.toml") && err.contains("ports") && err.contains("\"80\""),
            "{err}"
        );
    }
}
