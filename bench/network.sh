#!/usr/bin/env bash
# Networking, warren vs podman (netavark) on the same busybox image, in one run:
#  - setup + teardown per container: `run --rm ... true` on a bridge network minus the
#    same with no network (the time networking adds), warren and podman side by side;
#  - TCP throughput of a bounded transfer (dd 1000 MiB of zeros into busybox nc, a busybox
#    nc in the container receiving into /dev/null): host -> container through a published
#    port on 127.0.0.1, and container -> container over the bridge (the sender runs in the
#    first container's network namespace), for warren and podman; the host's loopback is
#    the ceiling.
# Traffic goes only to loopback and to the benchmark's own containers (10.231.250.0/24 for
# warren, 10.231.251.0/24 for podman). Takes /tmp/warren-bench.lock itself (do not wrap it
# in another flock of that file).
#   sudo bench/network.sh [RUNS]          (WARREN=PATH: a warren binary, else make release)
set -euo pipefail
if [ -z "${WARREN_BENCH_LOCKED:-}" ]; then
  export WARREN_BENCH_LOCKED=1
  exec flock -o /tmp/warren-bench.lock "$0" "$@"
fi
cd "$(dirname "$0")/.."
RUNS=${1:-20}
MIB=${MIB:-1000}
[ "$(id -u)" = 0 ] || { echo "run as root (bridges, nftables)" >&2; exit 1; }
for t in hyperfine podman nsenter python3 ss flock; do
  command -v $t >/dev/null || { echo "missing $t: apt-get install -y $t" >&2; exit 1; }
done
[ -x /bin/busybox ] || { echo "missing /bin/busybox: apt-get install -y busybox-static" >&2; exit 1; }
[ -n "${WARREN:-}" ] || { make -s release >&2; WARREN=$PWD/$(make -s bindir)/warren; }
B=/var/tmp/warren-bench/network
rm -rf $B; mkdir -p $B/rootfs/bin $B/rootfs/etc $B/rootfs/proc $B/rootfs/sys $B/rootfs/dev $B/rootfs/tmp
cp /bin/busybox $B/rootfs/bin/
for a in sh true sleep nc dd; do ln -s busybox $B/rootfs/bin/$a; done
echo 'root:x:0:0:root:/root:/bin/sh' >$B/rootfs/etc/passwd; echo 'root:x:0:' >$B/rootfs/etc/group

export WARREN_STATE_DIR=$B/state
w() { "$WARREN" --root $B/run "$@"; }
cat >$B/containers.conf <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_config_dir = "$B/podman/networks"
EOF
export CONTAINERS_CONF=$B/containers.conf
IMG=localhost/warren-bench:network
P="podman --runtime=runc --root $B/podman/root --runroot $B/podman/run --tmpdir $B/podman/tmp --storage-driver vfs"
[ -e /run/containers ] && HAD_RUN_CONTAINERS=1 || HAD_RUN_CONTAINERS=
LOOP_PID=
# The loopback receiver: a session of its own (the loop and its nc), killed as a group.
stop_loop() {
  [ -n "$LOOP_PID" ] || return 0
  kill -- -$LOOP_PID 2>/dev/null || true
  wait $LOOP_PID 2>/dev/null || true
  LOOP_PID=
}
# netavark leaves an empty chain per network in iptables' nat table: the one ours made goes.
netavark_chains() { nft list table ip nat 2>/dev/null | grep -o 'chain NETAVARK-DN-[0-9A-F]*' | cut -d' ' -f2 | sort; }
CHAINS_BEFORE=$(netavark_chains)
cleanup() {
  set +e
  stop_loop
  for c in wb-rx wb-tx; do w rm -f $c >/dev/null 2>&1; $P rm -f -t 0 p$c >/dev/null 2>&1; done
  w network rm wbench >/dev/null 2>&1
  $P network rm -f wbenchp >/dev/null 2>&1
  if command -v iptables >/dev/null; then
    for c in $(comm -13 <(echo "$CHAINS_BEFORE") <(netavark_chains)); do iptables -t nat -X "$c" 2>/dev/null; done
  fi
  umount -l $B/run/.networks/netns 2>/dev/null
  rm -rf $B
  [ -n "$HAD_RUN_CONTAINERS" ] || rm -rf /run/containers
}
trap cleanup EXIT INT TERM

tar -C $B/rootfs -c . | $P import - $IMG >/dev/null
w network create wbench --subnet 10.231.250.0/24 >/dev/null
$P network create --subnet 10.231.251.0/24 wbenchp >/dev/null
w run --rm --image busybox -- true # import the image once

WRUN="$WARREN --root $B/run run --rm --image busybox"
PRUN="$P run --rm $IMG"
hyperfine -N --warmup 3 --runs "$RUNS" --export-json $B/setup.json \
  -n "warren --net bridge" "$WRUN --net bridge:wbench -- true" \
  -n "warren --net none" "$WRUN --net none -- true" \
  -n "podman --network bridge" "$P run --rm --network wbenchp $IMG true" \
  -n "podman --network none" "$P run --rm --network none $IMG true"

# Throughput. A receiver container loops `nc -l -e dd of=/dev/null` (a plain `nc -l`
# would hang up at its own stdin's end, /dev/null); each transfer is timed on the host,
# from dd's start to the sending nc's exit (after its last byte is written). busybox nc
# copies in small reads: the figures are nc's, the same tool on every path.
RECV='while true; do nc -l -p 5000 -e dd of=/dev/null bs=64k; done'
SEND="dd if=/dev/zero bs=1M count=$MIB 2>/dev/null | busybox nc"
# secs CMD: the best of 3 transfers, in seconds.
secs() {
  python3 - "$1" <<'PY'
import subprocess, sys, time
best = None
for _ in range(3):
    time.sleep(0.3)
    t = time.monotonic()
    subprocess.run(["sh", "-c", sys.argv[1]], check=True, timeout=120)
    d = time.monotonic() - t
    best = d if best is None else min(best, d)
print(best)
PY
}
# Waits (bounded) until something listens on PORT in the network namespace NS.
listening() {
  for _ in $(seq 100); do
    nsenter --net="$1" ss -Hltn "sport = :$2" 2>/dev/null | grep -q . && return 0
    sleep 0.1
  done
  echo "nothing listens on $2 in $1" >&2; exit 1
}

setsid busybox sh -c "while true; do busybox nc -l -p 19500 -e busybox dd of=/dev/null bs=64k 2>/dev/null; done" &
LOOP_PID=$!
listening /proc/self/ns/net 19500
loop=$(secs "$SEND 127.0.0.1 19500")
stop_loop

w run -d --image busybox --name wb-rx --net bridge:wbench -p 127.0.0.1:19501:5000 -- sh -c "$RECV" >/dev/null
w run -d --image busybox --name wb-tx --net bridge:wbench -- sleep 600 >/dev/null
WRX_NS=$B/run/.networks/netns/wb-rx
WTX_NS=$B/run/.networks/netns/wb-tx
listening $WRX_NS 5000
wrx=$(w network inspect wbench | python3 -c "import json,sys; print([c['addr'] for c in json.load(sys.stdin)['containers'] if c['container'] == 'wb-rx'][0])")
w_pub=$(secs "$SEND 127.0.0.1 19501")
w_c2c=$(secs "nsenter --net=$WTX_NS sh -c '$SEND $wrx 5000'")

$P run -d --name pwb-rx --network wbenchp -p 127.0.0.1:19502:5000 $IMG sh -c "$RECV" >/dev/null
$P run -d --name pwb-tx --network wbenchp $IMG sleep 600 >/dev/null
PRX_NS=$($P inspect -f '{{.NetworkSettings.SandboxKey}}' pwb-rx)
PTX_NS=$($P inspect -f '{{.NetworkSettings.SandboxKey}}' pwb-tx)
listening "$PRX_NS" 5000
prx=$($P inspect -f '{{.NetworkSettings.Networks.wbenchp.IPAddress}}' pwb-rx)
p_pub=$(secs "$SEND 127.0.0.1 19502")
p_c2c=$(secs "nsenter --net=$PTX_NS sh -c '$SEND $prx 5000'")

python3 - $B/setup.json "$MIB" "$loop" "$w_pub" "$w_c2c" "$p_pub" "$p_c2c" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import json, sys
res = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
med = lambda n: res[n]["median"] * 1000
wb, wn = med("warren --net bridge"), med("warren --net none")
pb, pn = med("podman --network bridge"), med("podman --network none")
mib = int(sys.argv[2])
loop, w_pub, w_c2c, p_pub, p_c2c = (mib / float(x) for x in sys.argv[3:8])
print(f"\nload average before the transfers: {sys.argv[8]}")
print(f"run --rm true, median: warren bridge {wb:.1f} ms, none {wn:.1f} ms: networking adds {wb - wn:.1f} ms")
print(f"                       podman bridge {pb:.1f} ms, none {pn:.1f} ms: networking adds {pb - pn:.1f} ms")
print(f"added time, warren / podman: {(wb - wn) / (pb - pn):.3f} (target <= 0.25)")
print(f"TCP, {mib} MiB, best of 3 (MiB/s): loopback {loop:.0f}")
print(f"  host -> container (published 127.0.0.1 port): warren {w_pub:.0f} ({w_pub / loop:.2f}x loopback), podman {p_pub:.0f} ({p_pub / loop:.2f}x); warren/podman {w_pub / p_pub:.2f}")
print(f"  container -> container (bridge):              warren {w_c2c:.0f} ({w_c2c / loop:.2f}x loopback), podman {p_c2c:.0f} ({p_c2c / loop:.2f}x); warren/podman {w_c2c / p_c2c:.2f}")
print("  (target: bridge >= 0.9x loopback)")
PY
