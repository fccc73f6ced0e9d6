//! Capability sets from `process.capabilities`, as bitmasks ready for `capset(2)` and
//! `prctl(2)` between fork and exec.

use super::error::ConfigError;
use oci_spec::runtime::{Capabilities, LinuxCapabilities};
use std::str::FromStr;

/// The five sets as masks (bit N = capability N).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
    /// Highest capability the kernel knows (`/proc/sys/kernel/cap_last_cap`).
    pub last: u8,
}

fn mask(set: &Option<Capabilities>, field: &str) -> Result<u64, ConfigError> {
    let mut m = 0u64;
    for cap in set.iter().flatten() {
        // oci-spec names serialize as "CAP_..."; the caps crate knows their numbers.
        let name = serde_json::to_value(cap)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let c = caps::Capability::from_str(&name).map_err(|_| {
            ConfigError::new(
                format!("process.capabilities.{field}"),
                format!("unknown {name:?}"),
            )
        })?;
        m |= 1u64 << c.index();
    }
    Ok(m)
}

impl CapSets {
    pub fn from_spec(c: &LinuxCapabilities) -> Result<CapSets, ConfigError> {
        let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40);
        let known = if last >= 63 {
            u64::MAX
        } else {
            (1u64 << (last + 1)) - 1
        };
        Ok(CapSets {
            bounding: mask(c.bounding(), "bounding")? & known,
            effective: mask(c.effective(), "effective")? & known,
            permitted: mask(c.permitted(), "permitted")? & known,
            inheritable: mask(c.inheritable(), "inheritable")? & known,
            ambient: mask(c.ambient(), "ambient")? & known,
            last,
        })
    }

    /// Every capability (a config without `capabilities` keeps none, like runc).
    pub fn none() -> CapSets {
        CapSets {
            last: 40,
            ..Default::default()
        }
    }
}
