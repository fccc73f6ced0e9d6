#!/usr/bin/env bash
# warren run --image vs podman run --rm on the same Debian minbase tree, in one run:
# warm start (image already extracted on this host), cold start (image in the store but
# never extracted here), and the disk 100 stopped containers of one image take.
#   bench/run-image.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-30}
BENCH=${BENCH:-/var/tmp/warren-bench}
MINBASE=$BENCH/minbase
WORK=$BENCH/run-image
for t in hyperfine podman runc debootstrap; do
  command -v $t >/dev/null || { echo "missing $t: apt-get install -y $t" >&2; exit 1; }
done
[ -x "$MINBASE/bin/true" ] || debootstrap --variant=minbase bookworm "$MINBASE" >/dev/null
make -s release
W=$PWD/$(make -s bindir)/warren
rm -rf "$WORK"; mkdir -p "$WORK"
export WARREN_STATE_DIR=$WORK/state
$W image import "$MINBASE" --name debian >/dev/null
# podman as users run it here: runc (crun refuses this VM's hybrid cgroups), cgroupfs.
P="podman --runtime=runc --cgroup-manager=cgroupfs --events-backend=file"
$P rmi -f localhost/warren-bench-debian >/dev/null 2>&1 || true
tar -C "$MINBASE" -c . | $P import - warren-bench-debian >/dev/null
PODMAN_RUN="$P run --rm --network=none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 localhost/warren-bench-debian /bin/true"

$W run --rm --image debian -- /bin/true  # extract once: the warm case
hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$WORK/warm.json" \
  -n "warren run (warm)" "$W run --rm --image debian -- /bin/true" \
  -n "podman run" "$PODMAN_RUN"
hyperfine --runs 5 --export-json "$WORK/cold.json" \
  --prepare "rm -rf $WORK/state/images" \
  -n "warren run (cold: extract first)" "$W run --rm --image debian -- /bin/true"

median() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(' '.join(str(r['median']) for r in d['results']))" "$1"; }
read -r warm podman < <(median "$WORK/warm.json")
read -r cold < <(median "$WORK/cold.json")

# Disk: one stopped container vs 100 of the same image (store + extracted image + layers).
$W run -d --image debian --name d0 -- /bin/true >/dev/null
sleep 0.5
one=$(du -sxb "$WARREN_STATE_DIR" | cut -f1)
for i in $(seq 1 99); do $W run -d --image debian --name d$i -- /bin/true >/dev/null; done
sleep 1
hundred=$(du -sxb "$WARREN_STATE_DIR" | cut -f1)
stopped=$($W ps | grep -c stopped || true)
for i in $(seq 0 99); do $W rm --force d$i >/dev/null; done

python3 - "$warm" "$podman" "$cold" "$one" "$hundred" "$stopped" <<'PY'
import sys
warm, podman, cold = (float(x) * 1000 for x in sys.argv[1:4])
one, hundred, stopped = (int(x) for x in sys.argv[4:7])
print(f"\nwarm start:  warren {warm:.1f} ms   podman {podman:.1f} ms   ratio {warm / podman:.3f} (target <= 0.25)")
print(f"cold start:  warren {cold:.1f} ms (extract + run)   ratio to podman warm {cold / podman:.2f}")
print(f"disk: 1 container {one / 1e6:.1f} MB, {stopped} stopped containers {hundred / 1e6:.1f} MB, ratio {hundred / one:.3f} (target <= 1.1)")
PY
