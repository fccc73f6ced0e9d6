#!/usr/bin/env bash
# Import of a several-layer OCI image layout of Debian (bookworm minbase) into warren's
# store, against `umoci unpack` of the same layout, in the same run (hyperfine).
#
#   bench/oci-import.sh            (as root; release build of warren)
# Environment: WARREN (default the `make release` binary, built if missing), WORK (default
# /var/tmp/warren-bench), RUNS (default 5).
#
# The layout is built once with umoci from the minbase tree and cached in $WORK/debian-oci:
# layer 1 = /usr, layer 2 = the rest, layer 3 = deletions (docs, man pages, apt lists:
# whiteouts) and changed files, layer 4 = hardlinks and new files.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${WORK:-/var/tmp/warren-bench}
runs=${RUNS:-5}
warren=${WARREN:-$(make -s bindir)/warren}
for tool in umoci hyperfine debootstrap; do
	command -v $tool >/dev/null || { echo "missing $tool: apt-get install -y $tool" >&2; exit 1; }
done
[ -x "$warren" ] || make -s release
mkdir -p "$work"

minbase=$work/minbase
if [ ! -x "$minbase/bin/bash" ]; then
	rm -rf "$minbase.tmp"
	debootstrap --variant=minbase bookworm "$minbase.tmp" http://deb.debian.org/debian
	mv "$minbase.tmp" "$minbase"
fi

layout=$work/debian-oci
if [ ! -f "$layout/index.json" ]; then
	rm -rf "$layout" "$work/debian-oci-bundle"
	bundle=$work/debian-oci-bundle
	umoci init --layout "$layout"
	umoci new --image "$layout:debian"
	umoci unpack --image "$layout:debian" "$bundle"
	cp -a "$minbase/usr" "$bundle/rootfs/"
	umoci repack --image "$layout:debian" "$bundle"
	cp -a "$minbase/." "$bundle/rootfs/"
	umoci repack --image "$layout:debian" "$bundle"
	rm -rf "$bundle"/rootfs/usr/share/{doc,man,info} "$bundle"/rootfs/var/lib/apt/lists/*
	echo "bench" >"$bundle/rootfs/etc/hostname"
	chmod 0700 "$bundle/rootfs/root"
	umoci repack --image "$layout:debian" "$bundle"
	mkdir -p "$bundle/rootfs/opt/links"
	for f in "$bundle"/rootfs/usr/bin/*; do
		[ -f "$f" ] && [ ! -L "$f" ] && ln "$f" "$bundle/rootfs/opt/links/$(basename "$f")"
	done
	head -c 20000000 /dev/urandom >"$bundle/rootfs/opt/blob"
	umoci repack --image "$layout:debian" "$bundle"
	rm -rf "$bundle"
fi
echo "layout: $layout ($(du -sh "$layout" | cut -f1), $(ls "$layout/blobs/sha256" | wc -l) blobs)"

store=$work/oci-bench-store
unpacked=$work/oci-bench-umoci
hyperfine --runs "$runs" --export-json "$work/oci-import.json" \
	--prepare "rm -rf $store $unpacked; sync" \
	-n "warren image import oci:" "$warren --store $store image import oci:$layout:debian --name debian" \
	-n "umoci unpack" "umoci unpack --image $layout:debian $unpacked"
rm -rf "$store" "$unpacked"

python3 - "$work/oci-import.json" <<'PY' 2>/dev/null || jq -r '.results[] | "\(.command): \(.mean)s"' "$work/oci-import.json"
import json, sys
r = {x["command"]: x["mean"] for x in json.load(open(sys.argv[1]))["results"]}
w, u = r["warren image import oci:"], r["umoci unpack"]
print(f"warren import {w:.2f}s, umoci unpack {u:.2f}s: warren takes {w/u:.2f}x umoci's time ({u/w:.2f}x faster)")
PY
