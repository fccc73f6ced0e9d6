#!/usr/bin/env bash
# Pull to a runnable image from a registry on loopback (Debian's docker-registry over TLS,
# with a CA made here): `warren image pull` (the image is runnable once in the store) vs
# `podman pull` vs `skopeo copy` + `umoci unpack`, for Debian minbase as a one-layer gzip
# image. Each run starts from empty local storage.
# Then the registry as warren's chunk store: `warren store push` of the base and of a variant
# (minbase plus python3: bench/pull.sh's if it exists, else python3.11 copied from this
# bookworm host with its dpkg records), `warren image pull` of the base, then of the variant:
# the bytes the registry sent for the variant (its access log) vs the size of the variant's
# changed layer as docker would make it (the added and changed files, a gzip tar). Target:
# <= 0.8x. `store push` compresses the chunks it sends in segments of adjacent chunks at zstd 19:
# minutes of CPU on a debug build (WARREN=target/debug/warren is fine for the byte counts, which
# do not depend on the build, not for timings; a debug build with
# `--config 'profile.dev.package.zstd-sys.opt-level=3'` pushes several times faster).
#
#   bench/registry.sh        (as root; release build of warren)
# Environment: WARREN (default the `make release` binary), WORK (default /var/tmp/warren-bench),
# RUNS (default 3), TIMING=0 to skip the timed pulls (the variant bytes only).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${WORK:-/var/tmp/warren-bench}
runs=${RUNS:-3}
warren=${WARREN:-$(make -s bindir)/warren}
for tool in docker-registry openssl hyperfine debootstrap podman skopeo umoci python3; do
	command -v $tool >/dev/null || { echo "missing $tool: apt-get install -y $tool" >&2; exit 1; }
done
[ -x "$warren" ] || make -s release
timing=${TIMING:-1}
mkdir -p "$work"

minbase=$work/minbase
if [ ! -x "$minbase/bin/bash" ]; then
	rm -rf "$minbase.tmp"
	debootstrap --variant=minbase bookworm "$minbase.tmp" http://deb.debian.org/debian
	mv "$minbase.tmp" "$minbase"
fi

# The registry: TLS with a CA trusted only through a certs.d directory.
reg=$work/registry
rm -rf "$reg" && mkdir -p "$reg/storage"
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
host=127.0.0.1:$port
(
	cd "$reg"
	openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=bench-ca \
		-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
	openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1 2>/dev/null
	printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >ext
	openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 \
		-extfile ext 2>/dev/null
	mkdir -p "certs.d/$host" && cp ca.crt "certs.d/$host/"
)
cat >"$reg/config.yml" <<CONF
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $reg/storage}}
http: {addr: $host, tls: {certificate: $reg/server.crt, key: $reg/server.key}}
CONF
docker-registry serve "$reg/config.yml" >"$reg/registry.log" 2>&1 &
registry_pid=$!
podman_run=$(mktemp -d /tmp/wbench-XXXXXX)
trap 'kill $registry_pid 2>/dev/null; wait $registry_pid 2>/dev/null || true; rm -rf "$podman_run"' EXIT
for _ in $(seq 100); do
	python3 -c "import socket;socket.create_connection(('127.0.0.1',$port))" 2>/dev/null && break
	sleep 0.1
done
export WARREN_CERTS_D=$reg/certs.d

# The image, pushed once (warren's push: one gzip layer, an OCI manifest).
src=$work/registry-src
rm -rf "$src"
"$warren" --store "$src" image import "$minbase" --name debian:minbase >/dev/null
"$warren" --store "$src" image push debian:minbase "$host/debian:minbase"

cat >"$reg/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
export CONTAINERS_CONF=$reg/containers.conf
# A fresh podman store each time: podman pins the runroot (a new temp dir) in its database.
rm -rf "$work/registry-podman"
podman="podman --root $work/registry-podman --runroot $podman_run --storage-driver overlay"
local=$work/registry-local
if [ "$timing" = 1 ]; then
hyperfine --runs "$runs" --export-json "$work/registry.json" \
	--prepare "rm -rf $local; $podman rmi -a -f >/dev/null 2>&1 || true; sync" \
	-n "warren image pull" "$warren --store $local/store image pull $host/debian:minbase" \
	-n "podman pull" "$podman pull -q --cert-dir $reg/certs.d/$host $host/debian:minbase" \
	-n "skopeo copy + umoci unpack" \
	"mkdir -p $local && skopeo copy -q --src-cert-dir $reg/certs.d/$host docker://$host/debian:minbase oci:$local/oci:m && umoci unpack --image $local/oci:m $local/bundle"
python3 - "$work/registry.json" <<'PY'
import json, sys
r = {x["command"]: x["mean"] for x in json.load(open(sys.argv[1]))["results"]}
w = r["warren image pull"]
for name, t in r.items():
    print(f"{name:32} {t:7.2f} s   warren/this = {w / t:.2f}")
PY
$podman rmi -a -f >/dev/null 2>&1 || true
fi

# The chunk-store artifact: a variant whose base the puller has.
variant=$work/minbase-python3
if [ ! -x "$variant/usr/bin/python3" ]; then
	variant=$work/minbase-py-host
	if [ ! -x "$variant/usr/bin/python3.11" ]; then
		rm -rf "$variant.tmp"
		cp -a "$minbase" "$variant.tmp"
		cp -a /usr/bin/python3.11 "$variant.tmp/usr/bin/"
		cp -a /usr/lib/python3.11 "$variant.tmp/usr/lib/"
		ln -s python3.11 "$variant.tmp/usr/bin/python3"
		# An install rewrites dpkg's status: a changed file, whole in a layer.
		dpkg-query -s libpython3.11-minimal python3.11-minimal >>"$variant.tmp/var/lib/dpkg/status" || true
		mv "$variant.tmp" "$variant"
	fi
fi
"$warren" --store "$src" image import "$variant" --name debian:variant >/dev/null
"$warren" --store "$src" store push "$host/warren-chunks:minbase" debian:minbase >/dev/null
"$warren" --store "$src" store push "$host/warren-chunks:variant" debian:variant >/dev/null
rm -rf "$local"
"$warren" --store "$local/store" image pull "$host/warren-chunks:minbase" >/dev/null
from=$(stat -c %s "$reg/registry.log")
"$warren" --json --store "$local/store" image pull "$host/warren-chunks:variant" >"$work/variant-pull.json"
python3 - "$minbase" "$variant" "$reg/registry.log" "$from" "$work/variant-pull.json" <<'PY'
import gzip, io, json, os, re, sys, tarfile
base, variant, log, start, report = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]

def same(a, b):
    sa, sb = os.lstat(a), os.lstat(b)
    if (sa.st_mode, sa.st_uid, sa.st_gid) != (sb.st_mode, sb.st_uid, sb.st_gid):
        return False
    if os.path.islink(a):
        return os.readlink(a) == os.readlink(b)
    if os.path.isfile(a):
        if sa.st_size != sb.st_size:
            return False
        with open(a, "rb") as fa, open(b, "rb") as fb:
            return fa.read() == fb.read()
    return True

# The changed layer: what differs from the base (no deletions here), as a gzip tar.
buf = io.BytesIO()
with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=6, mtime=0) as gz:
    with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for root, dirs, files in os.walk(variant):
            for name in sorted(dirs + files):
                p = os.path.join(root, name)
                rel = os.path.relpath(p, variant)
                q = os.path.join(base, rel)
                if not os.path.lexists(q) or not same(p, q):
                    tar.add(p, arcname=rel, recursive=False)
layer = len(buf.getvalue())
moved = requests = whole = 0
with open(log, errors="replace") as f:
    f.seek(start)
    for line in f:
        m = re.search(r'"GET /v2/warren-chunks/blobs/\S+ HTTP/[0-9.]+" (\d+) (\d+)', line)
        if m:
            moved += int(m.group(2))
            requests += 1
            # Whole blobs (200) are the indexes; ranges (206) are pack tables and chunks.
            whole += int(m.group(2)) if m.group(1) == "200" else 0
rep = json.load(open(report))
mib = lambda n: f"{n / 2**20:.2f} MiB"
print(f"variant via the chunk-store artifact (base local): {mib(moved)} in {requests} blob requests "
      f"({rep['artifact']['fetched_chunks']} of {rep['artifact']['chunks']} chunks; "
      f"index blobs {mib(whole)}, pack tables and chunks {mib(moved - whole)})")
print(f"the variant's changed layer (gzip tar of the added and changed files): {mib(layer)}")
print(f"moved / changed layer = {moved / layer:.2f} (target <= 0.8)")
PY
rm -rf "$local" "$src" "$work/registry-podman" "$reg"
