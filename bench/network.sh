#!/usr/bin/env bash
# Networking, warren vs podman (netavark) on the same busybox image, in one run:
#  - setup + teardown per container: `run --rm ... true` on a bridge network minus the
#    same with no network (the time networking adds), warren and podman side by side;
#  - TCP throughput, iperf3 for 3 s (SECS) per transfer, server and client pinned to the two
#    CPUs, the median of TRIES (9), each transfer paired with one over the host's loopback
#    (the ceiling, measured at the same moment); host -> container through a published 127.0.0.1 port
#    and container -> container over one bridge, for warren (`--net bridge`) and podman
#    (`--network bridge`, netavark); rootless (as the user warren-test): host -> container
#    through a published port, warren `--net pasta` vs podman's rootless default
#    (slirp4netns, its port handler rootlesskit). The iperf3 server runs in the
#    container's network namespace (the host's iperf3 under `nsenter --net`: the same TCP
#    stack, interfaces and forwarding path as a server in the container, without putting
#    iperf3 into the image); the client of container -> container runs in the other
#    container's namespace the same way.
# Traffic goes only to loopback and to the benchmark's own containers (10.231.250.0/24 for
# warren, 10.231.251.0/24 for podman, the user-mode stacks' own subnets rootless). Takes
# /tmp/warren-bench.lock itself (do not wrap it in another flock of that file). The
# rootless part needs the user warren-test with subordinate ids (tests/network_rootless.rs
# makes it) and opens /dev/net/tun to it while it runs (mode restored after).
#   sudo bench/network.sh [RUNS]   (WARREN=PATH: a warren binary, else make release;
#                                   RUNS=0: throughput only)
set -euo pipefail
if [ -z "${WARREN_BENCH_LOCKED:-}" ]; then
  export WARREN_BENCH_LOCKED=1
  exec flock -o /tmp/warren-bench.lock "$0" "$@"
fi
cd "$(dirname "$0")/.."
RUNS=${1:-20}
SECS=${SECS:-3}
TRIES=${TRIES:-9}
RUSER=warren-test
[ "$(id -u)" = 0 ] || { echo "run as root (bridges, nftables)" >&2; exit 1; }
for t in hyperfine podman nsenter python3 ss flock iperf3 pasta slirp4netns setpriv taskset; do
  command -v $t >/dev/null || { echo "missing $t: apt-get install -y $t (pasta: passt, setpriv and taskset: util-linux)" >&2; exit 1; }
done
id -u $RUSER >/dev/null 2>&1 && grep -q "^$RUSER:" /etc/subuid && grep -q "^$RUSER:" /etc/subgid || {
  echo "the rootless part needs the user $RUSER with subordinate ids: cargo test --test network_rootless makes it" >&2
  exit 1
}
[ -x /bin/busybox ] || { echo "missing /bin/busybox: apt-get install -y busybox-static" >&2; exit 1; }
[ -n "${WARREN:-}" ] || { make -s release >&2; WARREN=$PWD/$(make -s bindir)/warren; }
B=/var/tmp/warren-bench/network
rm -rf $B; mkdir -p $B/rootfs/bin $B/rootfs/etc $B/rootfs/proc $B/rootfs/sys $B/rootfs/dev $B/rootfs/tmp
cp /bin/busybox $B/rootfs/bin/
for a in sh true sleep; do ln -s busybox $B/rootfs/bin/$a; done
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
# Rootless: warren and podman as $RUSER, everything of theirs under $R.
R=$B/rootless
as_user() {
  setpriv --reuid=$RUSER --regid=$RUSER --init-groups -- env -i USER=$RUSER HOME=$R/home \
    XDG_RUNTIME_DIR=$R/xdg PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
    WARREN_STATE_DIR=$R/state CONTAINERS_CONF=$R/containers.conf "$@"
}
rw() { as_user "$WARREN" "$@"; }
RP="podman --runtime=runc --root $R/podman/root --runroot $R/podman/run --tmpdir $R/podman/tmp --storage-driver vfs"
rp() { as_user $RP "$@"; }
TUN_MODE=$(stat -c %a /dev/net/tun)
[ -e /run/containers ] && HAD_RUN_CONTAINERS=1 || HAD_RUN_CONTAINERS=
SERVER_PID=
# netavark leaves an empty chain per network in iptables' nat table: the one ours made goes.
netavark_chains() { nft list table ip nat 2>/dev/null | grep -o 'chain NETAVARK-DN-[0-9A-F]*' | cut -d' ' -f2 | sort; }
CHAINS_BEFORE=$(netavark_chains)
cleanup() {
  set +e
  [ -z "$SERVER_PID" ] || { kill $SERVER_PID 2>/dev/null; wait $SERVER_PID 2>/dev/null; }
  for c in wb-rx wb-tx; do w rm -f $c >/dev/null 2>&1; $P rm -f -t 0 p$c >/dev/null 2>&1; done
  if [ -d $R/xdg ]; then
    rw rm -f wr-rx >/dev/null 2>&1
    rp rm -f -t 0 pr-rx >/dev/null 2>&1
    # Rootless podman's pause process (it holds podman's user namespace): ours has our
    # XDG_RUNTIME_DIR.
    for p in $(pgrep -u $RUSER -x catatonit); do
      grep -qzx "XDG_RUNTIME_DIR=$R/xdg" /proc/$p/environ 2>/dev/null && kill $p
    done
  fi
  chmod "$TUN_MODE" /dev/net/tun
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

if [ "$RUNS" -gt 0 ]; then
WRUN="$WARREN --root $B/run run --rm --image busybox"
hyperfine -N --warmup 3 --runs "$RUNS" --export-json $B/setup.json \
  -n "warren --net bridge" "$WRUN --net bridge:wbench -- true" \
  -n "warren --net none" "$WRUN --net none -- true" \
  -n "podman --network bridge" "$P run --rm --network wbenchp $IMG true" \
  -n "podman --network none" "$P run --rm --network none $IMG true"
fi

# Throughput: iperf3, a server per transfer (`-1`) in the namespace NS names (nsenter's
# arguments: --net=PATH, or -t PID --net), both ends bounded in time.
# listening NS PORT: waits (bounded) until something listens on PORT in NS.
listening() {
  for _ in $(seq 100); do
    nsenter $1 ss -Hltn "sport = :$2" 2>/dev/null | grep -q . && return 0
    sleep 0.1
  done
  echo "nothing listens on $2 in $1" >&2; exit 1
}
# one SERVER_NS PORT CLIENT_NS ADDR CLIENT_PORT: one transfer of SECS seconds to a fresh
# server, server on CPU 0 and client on CPU 1 (unpinned, the 2 vCPUs' scheduling alone
# moved a single stream between 11 and 22 Gbit/s); prints the Gbit/s received.
one() {
  timeout $((SECS + 30)) taskset -c 0 nsenter $1 iperf3 -s -1 -p $2 >/dev/null 2>&1 &
  SERVER_PID=$!
  listening "$1" $2
  timeout $((SECS + 20)) taskset -c 1 nsenter $3 iperf3 -c $4 -p $5 -t "$SECS" -J |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9)'
  wait $SERVER_PID || true
  SERVER_PID=
}
# gbps ARGS (as `one`): TRIES transfers, each right after one over the host's loopback (the
# ceiling, measured at the same moment: this machine's throughput drifts by minutes);
# prints "PATH/LOOPBACK" pairs.
gbps() {
  local out=
  for _ in $(seq "$TRIES"); do
    lo=$(one $HOST 19500 $HOST 127.0.0.1 19500)
    out="$out $(one "$@")/$lo"
  done
  echo $out
}
HOST=--net=/proc/$$/ns/net

w run -d --image busybox --name wb-rx --net bridge:wbench -p 127.0.0.1:19501:5201 -- sleep 600 >/dev/null
w run -d --image busybox --name wb-tx --net bridge:wbench -- sleep 600 >/dev/null
WRX=--net=$B/run/.networks/netns/wb-rx
WTX=--net=$B/run/.networks/netns/wb-tx
wrx=$(w network inspect wbench | python3 -c "import json,sys; print([c['addr'] for c in json.load(sys.stdin)['containers'] if c['container'] == 'wb-rx'][0])")
w_pub=$(gbps $WRX 5201 $HOST 127.0.0.1 19501)
w_c2c=$(gbps $WRX 5201 $WTX $wrx 5201)

$P run -d --name pwb-rx --network wbenchp -p 127.0.0.1:19502:5201 $IMG sleep 600 >/dev/null
$P run -d --name pwb-tx --network wbenchp $IMG sleep 600 >/dev/null
PRX=--net=$($P inspect -f '{{.NetworkSettings.SandboxKey}}' pwb-rx)
PTX=--net=$($P inspect -f '{{.NetworkSettings.SandboxKey}}' pwb-tx)
prx=$($P inspect -f '{{.NetworkSettings.Networks.wbenchp.IPAddress}}' pwb-rx)
p_pub=$(gbps $PRX 5201 $HOST 127.0.0.1 19502)
p_c2c=$(gbps $PRX 5201 $PTX $prx 5201)

# Rootless. The helpers open /dev/net/tun as the user (0666 on a host with udev).
mkdir -p $R/home $R/xdg
chmod 700 $R/xdg
chown -R $RUSER: $R
chmod 666 /dev/net/tun
sed '/^\[network\]/,$d' $B/containers.conf >$R/containers.conf
tar -C $B/rootfs -c . | rp import - $IMG >/dev/null
rw run -d --image busybox --name wr-rx --net pasta -p 127.0.0.1:19503:5201 -- sleep 600 >/dev/null
rp run -d --name pr-rx -p 127.0.0.1:19504:5201 $IMG sleep 600 >/dev/null
wpid=$(rw state wr-rx | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
ppid=$(rp inspect -f '{{.State.Pid}}' pr-rx)
rootless_net=$(rp inspect -f '{{.HostConfig.NetworkMode}}' pr-rx)
r_w=$(gbps "-t $wpid --net" 5201 $HOST 127.0.0.1 19503)
r_p=$(gbps "-t $ppid --net" 5201 $HOST 127.0.0.1 19504)

[ "$RUNS" -gt 0 ] || echo '{"results": []}' >$B/setup.json
python3 - $B/setup.json "$SECS" "$TRIES" "$(cut -d' ' -f1-3 /proc/loadavg)" "$rootless_net" \
  "$w_pub" "$w_c2c" "$p_pub" "$p_c2c" "$r_w" "$r_p" <<'PY'
import json, statistics, sys
res = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
secs, tries, load, rootless_net = sys.argv[2:6]
pairs = [[tuple(map(float, p.split("/"))) for p in a.split()] for a in sys.argv[6:12]]
# Per path: the median transfer, and the median of each transfer over its own loopback;
# warren/podman compares those (each against the loopback of its own moment).
med = [statistics.median(x for x, _ in ps) for ps in pairs]
rel = [statistics.median(x / lo for x, lo in ps) for ps in pairs]
loop = statistics.median(lo for ps in pairs for _, lo in ps)
w_pub, w_c2c, p_pub, p_c2c, r_w, r_p = med
print(f"\nload average at the end: {load}")
if res:
    med = lambda n: res[n]["median"] * 1000
    wb, wn = med("warren --net bridge"), med("warren --net none")
    pb, pn = med("podman --network bridge"), med("podman --network none")
    print(f"run --rm true, median: warren bridge {wb:.1f} ms, none {wn:.1f} ms: networking adds {wb - wn:.1f} ms")
    print(f"                       podman bridge {pb:.1f} ms, none {pn:.1f} ms: networking adds {pb - pn:.1f} ms")
    print(f"added time, warren / podman: {(wb - wn) / (pb - pn):.3f} (target <= 0.25)")
print(f"TCP, iperf3 -t {secs}, server and client pinned to CPUs 0 and 1, median of {tries} (Gbit/s); each transfer paired with one over loopback (median {loop:.2f}); x loopback = median of the pairs' ratios")
print(f"  host -> container (published 127.0.0.1 port): warren {w_pub:.2f} ({rel[0]:.2f}x loopback), podman {p_pub:.2f} ({rel[2]:.2f}x); warren/podman {rel[0] / rel[2]:.2f}")
print(f"  container -> container (bridge):              warren {w_c2c:.2f} ({rel[1]:.2f}x loopback), podman {p_c2c:.2f} ({rel[3]:.2f}x); warren/podman {rel[1] / rel[3]:.2f}")
print("  (target: bridge >= 0.9x loopback)")
print(f"  rootless, host -> container (published 127.0.0.1 port): warren --net pasta {r_w:.2f} ({rel[4]:.2f}x loopback),")
print(f"    podman's default ({rootless_net}) {r_p:.2f} ({rel[5]:.2f}x); warren/podman {rel[4] / rel[5]:.2f} (target >= 1)")
PY
