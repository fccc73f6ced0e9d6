#!/usr/bin/env bash
# Builds the realistic Debian image: `debootstrap --variant=minbase bookworm`, imported
# with warren (Cmd ["/bin/bash"], Env PATH). Needs root and debootstrap.
#
#   images/debian/build.sh [NAME]       (default NAME: debian)
# Environment: WARREN (default `warren`), ROOTFS (reuse or cache the tree there; default
# /var/tmp/warren-bench/minbase), MIRROR (default http://deb.debian.org/debian),
# WARREN_STORE (passed as --store when set).
set -euo pipefail
name=${1:-debian}
warren=${WARREN:-warren}
rootfs=${ROOTFS:-/var/tmp/warren-bench/minbase}
mirror=${MIRROR:-http://deb.debian.org/debian}

if [ ! -x "$rootfs/bin/bash" ]; then
	command -v debootstrap >/dev/null || { echo "apt-get install -y debootstrap" >&2; exit 1; }
	rm -rf "$rootfs.tmp"
	debootstrap --variant=minbase bookworm "$rootfs.tmp" "$mirror"
	mv "$rootfs.tmp" "$rootfs"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
cat >"$work/config.json" <<JSON
{"architecture":"$arch","os":"linux","config":{"Cmd":["/bin/bash"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"WorkingDir":"/","Labels":{"org.opencontainers.image.source":"debootstrap --variant=minbase bookworm"}},"rootfs":{"type":"layers","diff_ids":[]}}
JSON
# A directory import: the store walks the tree itself (no tarball, no copy).
store=()
[ -n "${WARREN_STORE:-}" ] && store=(--store "$WARREN_STORE")
"$warren" "${store[@]}" image import --config "$work/config.json" "$rootfs" --name "$name"
