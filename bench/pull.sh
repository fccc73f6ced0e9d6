#!/usr/bin/env bash
# Pull of the python3-minimal variant of Debian from a store served by nginx on loopback,
# when the base image is already local: warren fetches only the chunks the variant adds.
# Side by side, in the same run: downloading the variant as a zstd tarball from the same
# server (what shipping whole images costs).
#
#   bench/pull.sh            (as root; release build of warren)
# Environment: WARREN (default the `make release` binary), WORK (default /var/tmp/warren-bench),
# RUNS (default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${WORK:-/var/tmp/warren-bench}
runs=${RUNS:-5}
warren=${WARREN:-$(make -s bindir)/warren}
for tool in nginx hyperfine debootstrap curl zstd; do
	command -v $tool >/dev/null || { echo "missing $tool: apt-get install -y $tool (nginx-light for nginx)" >&2; exit 1; }
done
[ -x "$warren" ] || make -s release
mkdir -p "$work"

minbase=$work/minbase
if [ ! -x "$minbase/bin/bash" ]; then
	rm -rf "$minbase.tmp"
	debootstrap --variant=minbase bookworm "$minbase.tmp" http://deb.debian.org/debian
	mv "$minbase.tmp" "$minbase"
fi
variant=$work/minbase-python3
if [ ! -x "$variant/usr/bin/python3" ]; then
	rm -rf "$variant.tmp"
	cp -a "$minbase" "$variant.tmp"
	cp /etc/resolv.conf "$variant.tmp/etc/resolv.conf"
	chroot "$variant.tmp" apt-get update -qq
	DEBIAN_FRONTEND=noninteractive chroot "$variant.tmp" apt-get install -y -qq python3-minimal
	mv "$variant.tmp" "$variant"
fi

# The served store: both images, as static files (any store directory is servable as is).
served=$work/pull-served
rm -rf "$served"
"$warren" --store "$served" image import "$minbase" --name debian:minbase >/dev/null
added=$("$warren" --json --store "$served" image import "$variant" --name debian:python3)
tar --numeric-owner -C "$variant" -cf - . | zstd -q -T0 -3 >"$served/python3.tar.zst"

port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
ng=$work/pull-nginx
rm -rf "$ng" && mkdir -p "$ng"
cat >"$ng/nginx.conf" <<CONF
daemon off; master_process off; user root; pid $ng/nginx.pid; error_log $ng/error.log;
events { worker_connections 256; }
http {
  access_log $ng/access.log;
  client_body_temp_path $ng/tmp; proxy_temp_path $ng/tmp; fastcgi_temp_path $ng/tmp;
  uwsgi_temp_path $ng/tmp; scgi_temp_path $ng/tmp;
  default_type application/octet-stream;
  server { listen 127.0.0.1:$port; root $served; }
}
CONF
nginx -p "$ng" -c "$ng/nginx.conf" &
nginx_pid=$!
trap 'kill $nginx_pid 2>/dev/null; wait $nginx_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.05; done
url=http://127.0.0.1:$port

# The local store with the base image only (the starting point of every timed pull).
base=$work/pull-local-base
rm -rf "$base"
"$warren" --store "$base" image pull "$url" debian:minbase >/dev/null
local=$work/pull-local
rm -rf "$local" && cp -a "$base" "$local"
report=$("$warren" --json --store "$local" image pull "$url" debian:python3)

hyperfine --runs "$runs" --export-json "$work/pull.json" \
	--prepare "rm -rf $local && cp -a $base $local && sync" \
	-n "warren image pull (base local)" "$warren --store $local image pull $url debian:python3" \
	-n "curl variant .tar.zst" "curl -s -o /dev/null $url/python3.tar.zst"

python3 - "$work/pull.json" "$report" "$served" "$added" <<'PY'
import json, os, sys
r = {x["command"]: x["mean"] for x in json.load(open(sys.argv[1]))["results"]}
rep = json.loads(sys.argv[2])
tarball = os.path.getsize(os.path.join(sys.argv[3], "python3.tar.zst"))
w, c = r["warren image pull (base local)"], r["curl variant .tar.zst"]
mib = lambda b: f"{b / 2**20:.1f} MiB"
print(f"variant: {rep['chunks']} chunks; pulled {rep['fetched_chunks']} ({mib(rep['fetched_bytes'])} transferred, index included)")
added = json.loads(sys.argv[4])
print(f"the store adds for the variant (over the base): {added['new_chunks']} chunks, {mib(added['new_bytes'])}")
print(f"whole variant as .tar.zst: {mib(tarball)}: warren transfers {rep['fetched_bytes'] / tarball:.1%} of it")
print(f"time: warren pull {w:.2f}s, curl tarball {c:.2f}s (ratio {w / c:.2f})")
PY
