//! What the image importers and exporters share about OCI image configs: this machine's
//! architecture name and the config given to images that come without one. Below both
//! `oci` and `busybox`, so neither imports the other.

/// The PATH every image built here defaults to.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The GOARCH name of this machine (what OCI configs and platforms use).
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// A config for images that come without one: this platform, `Env PATH`, `Cmd /bin/sh`.
pub fn minimal_config() -> Vec<u8> {
    let config = serde_json::json!({
        "architecture": go_arch(),
        "os": "linux",
        "config": { "Env": [DEFAULT_PATH], "Cmd": ["/bin/sh"] },
        "rootfs": { "type": "layers", "diff_ids": [] },
    });
    serde_json::to_vec_pretty(&config).unwrap_or_default()
}
