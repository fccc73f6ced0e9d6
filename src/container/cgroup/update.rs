//! Changing a running container's limits (`runc update`): the same table and writes as
//! create, for the fields given (zero and empty ones are unset and left as they are), and
//! the applied resources recorded, merged with the earlier ones.

use oci_spec::runtime::LinuxResources;
use serde_json::Value;

use super::resources::{Setting, settings};
use super::{Cgroup, CgroupError, Version, v2};

impl Cgroup {
    /// Applies `resources` to the live cgroup and records them. Device rules are not
    /// changed (as with `runc update`).
    pub fn update(&mut self, resources: &LinuxResources) -> Result<(), CgroupError> {
        let Some(version) = self.version else {
            return Err(CgroupError::Unsupported {
                controller: "update".into(),
                message: "the container runs without a cgroup".into(),
            });
        };
        let mut given = resources.clone();
        given.set_devices(None);
        let mut planned = settings(Some(&given), version)?;
        match version {
            Version::V1 => self.order_memsw(&mut planned),
            // Create enabled only the controllers its limits needed: enable the new ones
            // down the path (idempotent; the directories exist).
            Version::V2 => {
                if let Some(below) = self
                    .dirs
                    .first()
                    .and_then(|d| d.strip_prefix(&self.root).ok())
                {
                    v2::make_path(&self.root, below, &planned)?;
                }
            }
        }
        self.apply(&planned)?;
        self.resources = Some(merged(self.resources.as_ref(), &given));
        Ok(())
    }

    /// The applied resources (create's, merged with every update).
    pub fn resources(&self) -> Option<&LinuxResources> {
        self.resources.as_ref()
    }

    /// v1 refuses a memory limit above memory+swap and a memory+swap below the memory
    /// limit: raising both needs memsw first, lowering both the limit first.
    fn order_memsw(&self, planned: &mut [Setting]) {
        let find = |f: &str| planned.iter().position(|s| s.file == f);
        let (Some(limit), Some(memsw)) = (
            find("memory.limit_in_bytes"),
            find("memory.memsw.limit_in_bytes"),
        ) else {
            return;
        };
        let current = self
            .dir_with("memory.memsw.limit_in_bytes")
            .and_then(|d| std::fs::read_to_string(d.join("memory.memsw.limit_in_bytes")).ok())
            .and_then(|t| t.trim().parse::<i64>().ok());
        let new: i64 = planned[memsw].value.parse().unwrap_or(-1);
        let raising = new < 0 || current.is_some_and(|c| new > c);
        if raising && memsw > limit {
            planned.swap(limit, memsw);
        }
    }
}

/// `new` over `old`, field by field: a null or zero field of `new` keeps the old value.
fn merged(old: Option<&LinuxResources>, new: &LinuxResources) -> LinuxResources {
    let mut base = old
        .and_then(|o| serde_json::to_value(o).ok())
        .unwrap_or(Value::Null);
    if let Ok(update) = serde_json::to_value(new) {
        merge(&mut base, update);
    }
    serde_json::from_value(base).unwrap_or_else(|_| new.clone())
}

fn merge(base: &mut Value, update: Value) {
    if base.is_null() && update.is_object() {
        *base = Value::Object(Default::default());
    }
    match (base, update) {
        (Value::Object(b), Value::Object(u)) => {
            for (k, v) in u {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (_, Value::Null) => {}
        (_, Value::Number(n)) if n.as_f64() == Some(0.0) => {}
        (b, u) => *b = u,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn an_update_keeps_what_it_does_not_set() {
        let old = serde_json::from_value(json!({
            "memory": {"limit": 1000, "swap": 2000},
            "pids": {"limit": 10},
            "devices": [{"allow": false, "access": "rwm"}]
        }))
        .expect("old");
        let new = serde_json::from_value(json!({
            "memory": {"limit": 500, "swap": 0},
            "cpu": {"shares": 0, "quota": 20000}
        }))
        .expect("new");
        let m = serde_json::to_value(super::merged(Some(&old), &new)).expect("json");
        assert_eq!(m["memory"]["limit"], 500);
        assert_eq!(m["memory"]["swap"], 2000);
        assert_eq!(m["pids"]["limit"], 10);
        assert_eq!(m["cpu"]["quota"], 20000);
        assert!(m["cpu"]["shares"].is_null());
        assert_eq!(m["devices"][0]["access"], "rwm");
    }
}
