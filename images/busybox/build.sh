#!/usr/bin/env bash
# Builds the busybox image (Debian's busybox-static, applet symlinks, /etc/passwd, /etc/group,
# /tmp, /root; Cmd ["/bin/sh"], Env PATH) as a one-layer OCI image layout and imports it
# with warren. The same tree is built from Rust by warren::store::busybox::busybox_tree.
#
#   images/busybox/build.sh [NAME]      (default NAME: busybox)
# Environment: WARREN (warren binary, default `warren` on PATH), BUSYBOX (/bin/busybox),
# OUT (keep the layout there instead of a temporary directory), WARREN_STORE (passed as
# --store when set).
set -euo pipefail
name=${1:-busybox}
warren=${WARREN:-warren}
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || { echo "$busybox missing: apt-get install -y busybox-static" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
layout=${OUT:-$work/layout}

mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,dev,proc,sys,run,var/tmp,tmp,root}
chmod 1777 "$root/tmp" "$root/var/tmp"
chmod 700 "$root/root"
install -m 755 "$busybox" "$root/bin/busybox"
"$busybox" --list-full | while read -r applet; do
	[ -n "$applet" ] && [ "$applet" != bin/busybox ] || continue
	mkdir -p "$root/$(dirname "$applet")"
	[ -e "$root/$applet" ] || [ -L "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
chmod 644 "$root/etc/passwd" "$root/etc/group"

# One uncompressed layer, owned by root, sorted for a reproducible digest.
mkdir -p "$layout/blobs/sha256"
tar --sort=name --numeric-owner --owner=0 --group=0 --mtime=@0 -C "$root" -cf "$work/layer.tar" .
put() { # put FILE -> prints "DIGEST SIZE" after storing FILE as a blob
	local d; d=$(sha256sum "$1" | cut -d' ' -f1)
	mv "$1" "$layout/blobs/sha256/$d"
	echo "$d $(stat -c %s "$layout/blobs/sha256/$d")"
}
read -r layer layer_size < <(put "$work/layer.tar")
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
cat >"$work/config.json" <<JSON
{"architecture":"$arch","os":"linux","config":{"Cmd":["/bin/sh"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:$layer"]}}
JSON
read -r config config_size < <(put "$work/config.json")
cat >"$work/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config","size":$config_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:$layer","size":$layer_size}]}
JSON
read -r manifest manifest_size < <(put "$work/manifest.json")
cat >"$layout/index.json" <<JSON
{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest","size":$manifest_size,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}
JSON
echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"

store=()
[ -n "${WARREN_STORE:-}" ] && store=(--store "$WARREN_STORE")
"$warren" "${store[@]}" image import "oci:$layout:latest" --name "$name"
