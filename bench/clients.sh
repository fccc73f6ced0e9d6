#!/bin/sh
# warren vs runc as the OCI runtime under the real clients: `podman run --rm IMAGE true`,
# `podman exec CTR true` (into a running container) and `ctr run --rm IMAGE ID true`, each
# runtime in turn (interleaved: runc, warren, runc, ...), RUNS times; medians and the
# warren/runc ratio. crun is left out: 1.8 refuses this hybrid cgroup host (ENVIRONMENT.md).
# Podman's state and containerd's root, state and socket live under $W; containerd is
# started here and stopped by pid.
# Usage: sudo RUNS=20 bench/clients.sh   (needs podman containerd runc busybox-static)
set -eu
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
for t in podman containerd ctr runc python3; do
    command -v $t >/dev/null || { echo "$t missing" >&2; exit 1; }
done
[ -x /bin/busybox ] || { echo "apt-get install busybox-static" >&2; exit 1; }
RUNS=${RUNS:-20}
[ -n "${WARREN:-}" ] || { make -s release >&2; WARREN=$PWD/$(make -s bindir)/warren; }
RUNC=$(command -v runc)
W=/var/tmp/warren-bench/clients
rm -rf $W; mkdir -p $W/rootfs/bin $W/rootfs/etc $W/rootfs/proc $W/rootfs/sys $W/rootfs/dev $W/rootfs/tmp
cp /bin/busybox $W/rootfs/bin/; for a in sh true sleep; do ln -s busybox $W/rootfs/bin/$a; done
echo 'root:x:0:0:root:/root:/bin/sh' > $W/rootfs/etc/passwd; echo 'root:x:0:' > $W/rootfs/etc/group
cat > $W/containers.conf <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "none"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF=$W/containers.conf
IMG=localhost/warren-bench:clients
podman_() { podman --root $W/podman/root --runroot $W/podman/run --tmpdir $W/podman/tmp --storage-driver vfs "$@"; }
ctr_() { ctr --address $W/containerd/sock -n warren-bench "$@"; }
CTD_PID=
# The shims keep state in /run/containerd whatever containerd's --state, podman's network
# backend makes /run/containers even with no network: removed after unless there before.
[ -e /run/containerd ] && HAD_RUN_CONTAINERD=1 || HAD_RUN_CONTAINERD=
[ -e /run/containers ] && HAD_RUN_CONTAINERS=1 || HAD_RUN_CONTAINERS=
cleanup() {
    for rt in runc warren; do podman_ rm -f -t 0 bench-$rt >/dev/null 2>&1 || true; done
    if [ -n "$CTD_PID" ]; then
        kill $CTD_PID 2>/dev/null || true
        i=0; while kill -0 $CTD_PID 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    fi
    rm -rf $W /run/containerd/runc/warren-bench
    [ -n "$HAD_RUN_CONTAINERD" ] || rm -rf /run/containerd
    [ -n "$HAD_RUN_CONTAINERS" ] || rm -rf /run/containers
}
trap cleanup EXIT INT TERM

tar -C $W/rootfs -c . | podman_ import - $IMG >/dev/null
podman_ save --format oci-archive -o $W/image.tar $IMG >/dev/null 2>&1
mkdir -p $W/containerd
containerd --root $W/containerd/root --state $W/containerd/state --address $W/containerd/sock \
    >$W/containerd/log 2>&1 &
CTD_PID=$!
i=0; while [ ! -S $W/containerd/sock ]; do
    [ $i -lt 300 ] || { echo "containerd did not start" >&2; cat $W/containerd/log >&2; exit 1; }
    sleep 0.1; i=$((i + 1))
done
ctr_ image import --base-name localhost/warren-bench $W/image.tar >/dev/null
for rt in runc warren; do
    eval "path=\$$(echo $rt | tr a-z A-Z)"
    podman_ --runtime "$path" run -d --name bench-$rt $IMG sleep 3600 >/dev/null
done

# One timed command: prints its wall time in ms (a failure aborts the benchmark).
ms() {
    s=$(date +%s%N)
    "$@" >/dev/null 2>$W/err || { echo "failed: $*" >&2; cat $W/err >&2; exit 1; }
    e=$(date +%s%N)
    echo $(( (e - s) / 1000 ))
}
: > $W/times
n=0
while [ $n -lt $RUNS ]; do
    for rt in runc warren; do
        eval "path=\$$(echo $rt | tr a-z A-Z)"
        sync
        echo "podman-run $rt $(ms podman_ --runtime "$path" run --rm $IMG true)" >> $W/times
        echo "podman-exec $rt $(ms podman_ exec bench-$rt true)" >> $W/times
        echo "ctr-run $rt $(ms ctr_ run --rm --runc-binary "$path" $IMG bench-$rt-$n true)" >> $W/times
    done
    n=$((n + 1))
done
python3 - $W/times "$RUNS" <<'PY'
import statistics, sys
t = {}
for line in open(sys.argv[1]):
    op, rt, us = line.split()
    t.setdefault(op, {}).setdefault(rt, []).append(int(us) / 1000)
print(f"{'operation':<12} {'runc ms':>8} {'warren ms':>9} {'warren/runc':>11}   (medians of {sys.argv[2]} interleaved runs)")
for op in ["podman-run", "podman-exec", "ctr-run"]:
    r, w = statistics.median(t[op]["runc"]), statistics.median(t[op]["warren"])
    print(f"{op:<12} {r:>8.1f} {w:>9.1f} {w / r:>11.2f}")
PY
