#!/usr/bin/env bash
# warren run --image vs podman run --rm on the same Debian minbase tree, in one run:
# warm start (image already extracted on this host), cold start (image in the store but
# never extracted here), `exec` into a running container, and the disk 100 stopped
# containers of one image take; then a
# scheduler restart (examples/scheduler.rs) with 50 running containers: the time until
# all are adopted, and how many were restarted (none).
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

# exec into a running container: warren exec vs podman exec.
$W run -d --image debian --name bexec -- /bin/sleep 1000 >/dev/null
$P rm -f pbexec >/dev/null 2>&1 || true
$P run -d --name pbexec --network=none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
  localhost/warren-bench-debian /bin/sleep 1000 >/dev/null
hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$WORK/exec.json" \
  -n "warren exec" "$W exec bexec -- /bin/true" \
  -n "podman exec" "$P exec pbexec /bin/true"
$W rm --force bexec >/dev/null
$P rm -f pbexec >/dev/null

median() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(' '.join(str(r['median']) for r in d['results']))" "$1"; }
read -r warm podman < <(median "$WORK/warm.json")
read -r cold < <(median "$WORK/cold.json")
read -r wexec pexec < <(median "$WORK/exec.json")

# Disk: one stopped container vs 100 of the same image (store + extracted image + layers).
$W run -d --image debian --name d0 -- /bin/true >/dev/null
sleep 0.5
one=$(du -sxb "$WARREN_STATE_DIR" | cut -f1)
for i in $(seq 1 99); do $W run -d --image debian --name d$i -- /bin/true >/dev/null; done
sleep 1
hundred=$(du -sxb "$WARREN_STATE_DIR" | cut -f1)
stopped=$($W ps -a | grep -c Exited || true)
for i in $(seq 0 99); do $W rm --force d$i >/dev/null; done

# Scheduler restart: converge 50 containers, SIGKILL the scheduler, start a new one for
# one pass and read its report (adopted, started, restarted; elapsed since its start).
cargo build -q --release --example scheduler
S=$PWD/target/release/examples/scheduler
printf '[[service]]\nname = "s"\nimage = "debian"\nreplicas = 50\ncommand = ["sleep", "1000"]\n' >"$WORK/desired.toml"
$S "$WORK/desired.toml" --owner bench --interval-ms 100 >"$WORK/first.jsonl" &
first=$!
for _ in $(seq 1 600); do
  n=$(tail -1 "$WORK/first.jsonl" 2>/dev/null | python3 -c "import json,sys; t=sys.stdin.read(); print(len(json.loads(t)['pids']) if t else 0)" 2>/dev/null || echo 0)
  [ "$n" = 50 ] && break
  sleep 0.1
done
kill -9 $first; wait $first 2>/dev/null || true
$S "$WORK/desired.toml" --owner bench --iterations 1 --grace-ms 500 >"$WORK/second.jsonl"
adopt=$(python3 -c "import json,sys; p=json.loads(open(sys.argv[1]).readline()); print(len(p['adopted']), len(p['started']) + len(p['restarted']), p['elapsed_ms'])" "$WORK/second.jsonl")

python3 - "$warm" "$podman" "$cold" "$one" "$hundred" "$stopped" $adopt "$wexec" "$pexec" <<'PY'
import sys
warm, podman, cold = (float(x) * 1000 for x in sys.argv[1:4])
one, hundred, stopped = (int(x) for x in sys.argv[4:7])
adopted, restarted, adopt_ms = (int(x) for x in sys.argv[7:10])
wexec, pexec = (float(x) * 1000 for x in sys.argv[10:12])
print(f"\nwarm start:  warren {warm:.1f} ms   podman {podman:.1f} ms   ratio {warm / podman:.3f} (target <= 0.25)")
print(f"cold start:  warren {cold:.1f} ms (extract + run)   ratio to podman warm {cold / podman:.2f}")
print(f"exec:        warren {wexec:.1f} ms   podman {pexec:.1f} ms   ratio {wexec / pexec:.3f}")
print(f"disk: 1 container {one / 1e6:.1f} MB, {stopped} stopped containers {hundred / 1e6:.1f} MB, ratio {hundred / one:.3f} (target <= 1.1)")
print(f"scheduler restart: {adopted}/50 adopted in {adopt_ms} ms, {restarted} restarted (target < 500 ms, 0 restarted)")
PY
