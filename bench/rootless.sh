#!/usr/bin/env bash
# Rootless `warren run --image` (issue 20), as an unprivileged user with subordinate ids,
# on the Debian minbase tree bench/run-image.sh uses, in one run:
#  - warm start (`run --rm -- /bin/true`, the image already extracted for the user):
#    through the setuid helper `warren-mount` (one shared tree, idmapped per container)
#    vs the copy path (no helper: a copy of the image per container) vs the fuse path
#    (no helper, fuse-overlayfs over the shared tree: the user gets an ACL on /dev/fuse
#    for that part only, removed at exit) vs rootless `podman run --rm` (native overlay,
#    --network none) vs warren's rootful start; and a --read-only container through the
#    helper (rooted on the idmapped tree itself, no overlay);
#  - file reads in the container (helper, helper --read-only, fuse) vs on the host, and
#    beside them, for the overlay's own cost, in rootless podman and rootful warren
#    containers and a second pass in one helper container;
#  - disk (`du` of the state dir, inodes counted once) of 100 stopped containers through
#    the helper vs one, and of COPIES (default 10: 100 copies of a 200 MB image do not
#    fit the shared disk) through the copy path, per container.
# Targets: rootless warm start <= 2x rootful and <= 0.25x rootless podman; 100 containers
# <= 1.1x the disk of one.
# The user (RUSER) needs 102 id blocks of 65536 (100 containers, the image block, one
# more): the default, warren-bench, is created with 128 (no home, no login) if missing.
#   bench/rootless.sh [RUNS]      (env: RUSER=warren-bench COPIES=10 BENCH=/var/tmp/warren-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-20}
RUSER=${RUSER:-warren-bench}
COPIES=${COPIES:-10}
BENCH=${BENCH:-/var/tmp/warren-bench}
MINBASE=$BENCH/minbase
WORK=$BENCH/rootless
for t in hyperfine podman debootstrap setpriv newuidmap flock fuse-overlayfs setfacl; do
  command -v $t >/dev/null || { echo "missing $t: apt-get install -y $t" >&2; exit 1; }
done
if [ "$RUSER" = warren-bench ] && ! id warren-bench >/dev/null 2>&1; then
  useradd -M -s /usr/sbin/nologin -K SUB_UID_COUNT=0 -K SUB_GID_COUNT=0 warren-bench
  # 0x18000000 + 0x800000: no other user's or test's range.
  usermod --add-subuids 402653184-411041791 --add-subgids 402653184-411041791 warren-bench
fi
for f in /etc/subuid /etc/subgid; do
  n=$(awk -F: -v u="$RUSER" '$1 == u { s += $3 } END { print s + 0 }' $f)
  [ "$n" -ge $((102 * 65536)) ] || { echo "$RUSER has $n ids in $f, needs 102 blocks of 65536" >&2; exit 1; }
done
# One benchmark at a time on this machine (BENCH_LOCK: another lock, when a stray process
# holds this one).
exec 9>"${BENCH_LOCK:-/tmp/warren-bench.lock}"
flock 9
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
[ -x "$MINBASE/bin/true" ] || debootstrap --variant=minbase bookworm "$MINBASE" >/dev/null
make -s release
R=$PWD/$(make -s bindir)
cd /  # the user may not traverse the checkout
uid=$(id -u "$RUSER")
gid=$(id -g "$RUSER")

# Old trees moved aside and deleted at the end (ext4 slows creates after a mass delete).
[ -e "$WORK" ] && mv "$WORK" "$WORK.old.$$"
mkdir -p "$WORK/helper" "$WORK/copy" "$WORK/fuse"
chmod 755 "$WORK" "$WORK/helper" "$WORK/copy" "$WORK/fuse"
# The helper path: warren with a setuid-root warren-mount next to it (as `make install`).
cp "$R/warren" "$R/warren-mount" "$WORK/helper/"
chown root:root "$WORK/helper/warren-mount"
chmod 4755 "$WORK/helper/warren-mount"
# The copy path: warren alone (and no warren-mount in the user's PATH).
cp "$R/warren" "$WORK/copy/"
# The fuse path: warren alone too; it uses fuse-overlayfs while the user may open /dev/fuse.
cp "$R/warren" "$WORK/fuse/"
fuse_on() { setfacl -m "u:$RUSER:rw" /dev/fuse; }
fuse_off() { setfacl -x "u:$RUSER" /dev/fuse 2>/dev/null || true; }
fuse_off
U=$WORK/user
install -d -o "$uid" -g "$gid" -m 755 "$U" "$U/home" "$U/out"
install -d -o "$uid" -g "$gid" -m 700 "$U/xdg"
PATH_USER=/usr/bin:/bin:/usr/sbin:/sbin
command -v warren-mount >/dev/null && case ":$PATH_USER:" in
  *":$(dirname "$(command -v warren-mount)"):"*) echo "warren-mount is in $PATH_USER: the copy path would use it" >&2; exit 1 ;;
esac
# podman as a rootless user runs here: runc, cgroupfs, no systemd, native overlay.
cat >"$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
EOF
cat >"$WORK/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$U/home/podman-storage"
runroot = "$U/xdg/containers"
EOF
chmod 644 "$WORK/containers.conf" "$WORK/storage.conf"
as_user() {
  setpriv --reuid="$uid" --regid="$gid" --init-groups -- env -i USER="$RUSER" HOME="$U/home" \
    XDG_RUNTIME_DIR="$U/xdg" PATH="$PATH_USER" CONTAINERS_CONF="$WORK/containers.conf" \
    CONTAINERS_STORAGE_CONF="$WORK/storage.conf" "$@"
}
wr() { local v=$1; shift; as_user "$WORK/$v/warren" --state-dir "$U/state-$v" --root "$U/xdg/run-$v" "$@"; }
# On a failure midway: no stopped containers (and helper mounts) left behind.
cleanup() {
  local v i
  fuse_off
  for v in helper copy fuse; do
    [ -d "$U/state-$v/containers" ] || continue
    for i in $(seq 0 99); do wr $v rm --force "d$i" >/dev/null 2>&1 || true; done
  done
}
trap cleanup EXIT

# The image, imported by the user into each path's state dir from a tar made as root
# (owners kept); rootful warren and rootless podman import the same tar.
for v in helper copy fuse; do
  tar -C "$MINBASE" -c . | wr $v image import - --name debian >/dev/null
done
tar -C "$MINBASE" -c . | "$R/warren" image import - --state-dir "$WORK/rootful" --name debian >/dev/null
tar -C "$MINBASE" -c . | as_user podman import - localhost/warren-bench-debian >/dev/null 2>&1

# Each path must be the one it claims to be.
for v in helper copy; do
  want=helper-idmap; [ $v = copy ] && want=copy
  log=$(wr $v run --debug --rm --image debian -- /bin/true 2>&1)
  grep -q "method $want" <<<"$log" || { echo "the $v path did not use method $want: $log" >&2; exit 1; }
done
fuse_on
log=$(wr fuse run --debug --rm --image debian -- /bin/true 2>&1)
fuse_off
grep -q "method fuse-overlayfs" <<<"$log" || { echo "the fuse path did not use fuse-overlayfs: $log" >&2; exit 1; }

# Warm start: hyperfine runs as the user (no wrapper in the timed command).
RUN="run --rm --image debian -- /bin/true"
sync
as_user hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$U/out/warm.json" \
  -n "rootless warren, helper" "$WORK/helper/warren --state-dir $U/state-helper --root $U/xdg/run-helper $RUN" \
  -n "rootless warren, helper, --read-only" "$WORK/helper/warren --state-dir $U/state-helper --root $U/xdg/run-helper ${RUN/run /run --read-only }" \
  -n "rootless warren, copy" "$WORK/copy/warren --state-dir $U/state-copy --root $U/xdg/run-copy $RUN" \
  -n "rootless podman" "podman run --rm --network=none localhost/warren-bench-debian /bin/true"
sync
fuse_on
as_user hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$U/out/fuse.json" \
  -n "rootless warren, fuse-overlayfs" "$WORK/fuse/warren --state-dir $U/state-fuse --root $U/xdg/run-fuse $RUN"
fuse_off
sync
hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$WORK/rootful.json" \
  -n "rootful warren" "$R/warren --state-dir $WORK/rootful $RUN"

median() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(' '.join(str(r['median']) for r in d['results']))" "$1"; }
read -r helper helper_ro copy podman < <(median "$U/out/warm.json")
read -r rootful < <(median "$WORK/rootful.json")
read -r fuse < <(median "$U/out/fuse.json")

# File reads, warm: every file under /usr read once, timed inside the container (the
# helper path: idmapped lower, overlay on top; a --read-only container rooted on the
# idmapped lower itself; the fuse path), on the host from the shared tree the helper
# mounts, and, for the overlay's own cost, in a rootless podman container (kernel overlay
# over its storage, no idmapping) and in a rootful warren one (idmapped lower, metacopy
# overlay); alternately, medians of 7. Each container is fresh, so its overlay looks
# every file up for the first time; a second pass in the same helper container shows the
# overlay once its entries are cached.
READ='cd "$1" && s=$(date +%s%N); find usr -type f -print0 | xargs -0 cat >/dev/null 2>&1; echo $(( $(date +%s%N) - s ))'
READ2="$READ >/dev/null; $READ"
tree=$(ls -d "$U/state-helper/images/"*/rootfs | head -1)
in_reads=() ro_reads=() host_reads=() fuse_reads=() podman_reads=() rootful_reads=() again_reads=()
fuse_on
for i in $(seq 8); do
  in_reads+=("$(wr helper run --rm --image debian -- sh -c "$READ" sh /)")
  ro_reads+=("$(wr helper run --rm --read-only --image debian -- sh -c "$READ" sh /)")
  host_reads+=("$(as_user sh -c "$READ" sh "$tree")")
  fuse_reads+=("$(wr fuse run --rm --image debian -- sh -c "$READ" sh /)")
  podman_reads+=("$(as_user podman run --rm --network=none localhost/warren-bench-debian sh -c "$READ" sh /)")
  rootful_reads+=("$("$R/warren" --state-dir "$WORK/rootful" run --rm --image debian -- sh -c "$READ" sh /)")
  again_reads+=("$(wr helper run --rm --image debian -- sh -c "$READ2" sh /)")
done
fuse_off
reads=$(python3 -c "import statistics as s,sys; m=lambda v: s.median([int(x) for x in v.split()[1:]])/1e6; print(*map(m, sys.argv[1:]))" "${in_reads[*]}" "${host_reads[*]}" "${fuse_reads[*]}" "${ro_reads[*]}" "${podman_reads[*]}" "${rootful_reads[*]}" "${again_reads[*]}")

# Disk: the state dir (store, the user's extracted tree, containers' layers) with one
# stopped container, then with N; not the helper's mounts at CONTAINER/lower (views of
# the one shared tree: du counts a file seen through two mounts twice).
disk() { du -sb --exclude="$U/state-$1/containers/*/lower" "$U/state-$1" | cut -f1; }
stopped() {
  local v=$1 n=$2 i
  for i in $(seq 0 $((n - 1))); do wr "$v" run -d --image debian --name "d$i" -- /bin/true >/dev/null; done
  sleep 1
  [ "$(wr "$v" ps -a | grep -c Exited || true)" = "$n" ] || { echo "$v: not $n stopped containers" >&2; exit 1; }
}
remove() { local i; for i in $(seq 0 $(($2 - 1))); do wr "$1" rm --force "d$i" >/dev/null; done; }
stopped helper 1
h1=$(disk helper)
remove helper 1
stopped helper 100
h100=$(disk helper)
remove helper 100
stopped copy 1
c1=$(disk copy)
remove copy 1
stopped copy "$COPIES"
cn=$(disk copy)
remove copy "$COPIES"
image=$(du -sb "$MINBASE" | cut -f1)

echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$helper" "$helper_ro" "$copy" "$podman" "$rootful" "$fuse" "$h1" "$h100" "$c1" "$cn" "$COPIES" "$image" $reads <<'PY'
import sys
helper, helper_ro, copy, podman, rootful, fuse = (float(x) * 1000 for x in sys.argv[1:7])
h1, h100, c1, cn, copies, image = (int(x) for x in sys.argv[7:13])
read_in, read_host, read_fuse, read_ro, read_podman, read_rootful, read_again = (float(x) for x in sys.argv[13:20])
print(f"\nwarm start (median): helper {helper:.1f} ms, copy {copy:.1f} ms, rootless podman {podman:.1f} ms, rootful warren {rootful:.1f} ms")
print(f"  helper / rootful {helper / rootful:.2f} (target <= 2)   helper / podman {helper / podman:.3f} (target <= 0.25)")
print(f"  helper --read-only {helper_ro:.1f} ms: / rootful {helper_ro / rootful:.2f}   / podman {helper_ro / podman:.3f}")
print(f"  copy / rootful {copy / rootful:.2f}   copy / podman {copy / podman:.3f}")
print(f"  fuse-overlayfs {fuse:.1f} ms: / rootful {fuse / rootful:.2f}   / podman {fuse / podman:.3f}")
print(f"reads of every file under /usr, warm (median of 7): container {read_in:.1f} ms, host {read_host:.1f} ms, ratio {read_in / read_host:.3f} (target <= 1.1)")
print(f"  --read-only container (no overlay) {read_ro:.1f} ms, ratio {read_ro / read_host:.3f} (target <= 1.1)")
print(f"  fuse-overlayfs container {read_fuse:.1f} ms, ratio {read_fuse / read_host:.3f}")
print(f"  the overlay's own cost: rootless podman (kernel overlay, no idmapping) {read_podman:.1f} ms, ratio {read_podman / read_host:.3f};"
      f" rootful warren {read_rootful:.1f} ms, ratio {read_rootful / read_host:.3f}")
print(f"  a second pass in the same helper container {read_again:.1f} ms, ratio {read_again / read_host:.3f}")
print(f"disk (image tree {image / 1e6:.0f} MB): helper 1 stopped {h1 / 1e6:.1f} MB, 100 stopped {h100 / 1e6:.1f} MB, ratio {h100 / h1:.3f} (target <= 1.1)")
per = (cn - c1) / (copies - 1) if copies > 1 else 0
print(f"  copy: 1 stopped {c1 / 1e6:.1f} MB, {copies} stopped {cn / 1e6:.1f} MB ({per / 1e6:.1f} MB a container; 100 would be ~{(c1 + 99 * per) / 1e6:.0f} MB, ratio ~{(c1 + 99 * per) / c1:.1f})")
PY
rm -rf "$WORK.old."*
