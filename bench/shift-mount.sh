#!/bin/sh
# shift-mount: one container's shifted view of a Debian minbase tree, three ways, in one
# run: --method idmap, --method metacopy, --method copy, and the naive per-container copy
# (cp -a, then shift-own). Then idmap again on a tree 10x larger (ten hardlinked copies of
# minbase under one root: ten times the entries) to show its cost does not grow.
# Every timed run starts from an empty INTERMEDIATE (the first mount of a container);
# hyperfine's --prepare unmounts and clears the previous one, outside the timing.
# Usage: bench/shift-mount.sh [RUNS]   (as root; needs hyperfine, debootstrap if no tree)
set -eu
cd "$(dirname "$0")/.."
RUNS=${1:-5}
BASE=/var/tmp/warren-bench
TREE=$BASE/minbase
BIG=$BASE/minbase-x10
WORK=$BASE/shift-mount-work

[ "$(id -u)" = 0 ] || { echo "run as root (mounts need it)" >&2; exit 1; }
command -v hyperfine >/dev/null || { echo "apt-get install -y hyperfine" >&2; exit 1; }
if ! grep -qs '^rc=0' "$BASE/debootstrap.log" || [ ! -d "$TREE/usr" ]; then
    command -v debootstrap >/dev/null || { echo "apt-get install -y debootstrap" >&2; exit 1; }
    mkdir -p "$BASE" && rm -rf "$TREE"
    { debootstrap --variant=minbase bookworm "$TREE"; echo "rc=$?"; } >"$BASE/debootstrap.log" 2>&1
fi
if [ ! -f "$BIG/.complete" ]; then
    rm -rf "$BIG" && mkdir -p "$BIG"
    for i in 0 1 2 3 4 5 6 7 8 9; do cp -al "$TREE" "$BIG/copy$i"; done
    touch "$BIG/.complete"
fi

make -s release
SM=$PWD/$(make -s bindir)/shift-mount
SO=$PWD/$(make -s bindir)/shift-own

cleanup() {
    for m in "$WORK"/mnt-*; do
        [ -d "$m" ] && "$SM" --unmount "$m" >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
cleanup
# Let the inodes a previous run freed age past ext4's "recently deleted" window (below).
sync && sleep 4
mkdir -p "$WORK"
for m in idmap metacopy copy big inproc; do mkdir -p "$WORK/mnt-$m"; done
# Every timed run mounts a fresh INTERMEDIATE (the first mount of a new container) and
# nothing is deleted until the end: on this ext4 (no journal), inodes freed seconds ago are
# skipped one by one when allocating, so `rm -rf` of the last run's 6.8k inodes right
# before the next run makes every inode allocation a long scan (quadratic), and that
# pathology, not the method, would be measured. --prepare unmounts the last view and
# syncs, so no run pays for the previous one's write-back.
reset() { echo "$SM --unmount $WORK/mnt-$1 >/dev/null 2>&1 || true; sync"; }
fresh() { echo "d=\$(mktemp -d $WORK/$1.XXXXXX)"; }
mnt() { echo "$SM --oneshot -s 0x30000 --method $1 $2 \$d $WORK/mnt-$3 >/dev/null"; }

echo "tree: $(find "$TREE" | wc -l) entries, $(du -sh "$TREE" | cut -f1); big tree: $(find "$BIG" | wc -l) entries; $(nproc) cores, $(uname -r)"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"

# "+sync": the same, until the new files are on disk (sync -f: syncfs of the filesystem).
hyperfine --warmup 1 --runs "$RUNS" --export-json "$WORK/result.json" \
    --prepare "$(reset idmap)" \
    --prepare "$(reset big)" \
    --prepare "$(reset metacopy)" \
    --prepare "$(reset copy)" \
    --prepare "sync" \
    --prepare "$(reset metacopy)" \
    --prepare "sync" \
    -n "idmap" "$(fresh im); $(mnt idmap "$TREE" idmap)" \
    -n "idmap-x10" "$(fresh im); $(mnt idmap "$BIG" big)" \
    -n "metacopy" "$(fresh im); $(mnt metacopy "$TREE" metacopy)" \
    -n "copy" "$(fresh im); $(mnt copy "$TREE" copy)" \
    -n "naive" "$(fresh naive); cp -a $TREE \$d/t && $SO -s 0x30000 \$d/t >/dev/null" \
    -n "metacopy+sync" "$(fresh im); $(mnt metacopy "$TREE" metacopy) && sync -f \$d" \
    -n "naive+sync" "$(fresh naive); cp -a $TREE \$d/t && $SO -s 0x30000 \$d/t >/dev/null && sync -f \$d"

# On a shared, noisy host the load drifts between hyperfine's blocks of runs; pairs of
# runs back to back (order alternating) give a steadier metacopy/naive ratio.
pairs() {
    for i in 1 2 3 4 5 6; do
        for what in $( [ $((i % 2)) = 0 ] && echo "naive metacopy" || echo "metacopy naive"); do
            sync
            d=$(mktemp -d "$WORK/pair.XXXXXX")
            t0=$(date +%s%N)
            if [ $what = metacopy ]; then
                "$SM" --oneshot -s 0x30000 --method metacopy "$TREE" "$d" "$WORK/mnt-pair" >/dev/null
            else
                cp -a "$TREE" "$d/t" && "$SO" -s 0x30000 "$d/t" >/dev/null
            fi
            t1=$(date +%s%N)
            [ $what = metacopy ] && "$SM" --unmount "$WORK/mnt-pair" >/dev/null
            printf '%s %s ' $what $(( (t1 - t0) / 1000 ))
        done
        echo
    done | python3 -c '
import sys, statistics as s
rs = []
for line in sys.stdin:
    f = line.split(); t = {f[0]: int(f[1]), f[2]: int(f[3])}
    rs.append(t["metacopy"] / t["naive"])
shown = " ".join("%.2f" % r for r in rs)
print(f"paired metacopy/naive ratios: {shown}; median {s.median(rs):.2f}")'
}
mkdir -p "$WORK/mnt-pair"
paired=$(pairs)

# idmap's own time, from its report (no process start-up): 10 fresh mounts per tree.
inproc() {
    for i in 1 2 3 4 5 6 7 8 9 10; do
        sh -c "$(reset inproc)"
        "$SM" --oneshot --json -s 0x30000 --method idmap "$1" "$(mktemp -d "$WORK/inproc.XXXXXX")" "$WORK/mnt-inproc"
    done | python3 -c 'import json,sys,statistics as s; v=sorted(json.loads(l)["elapsed_us"]/1000 for l in sys.stdin); print(f"median {s.median(v):.2f} ms, min {v[0]:.2f} ms, max {v[-1]:.2f} ms")'
    sh -c "$(reset inproc)"
}
inproc_small=$(inproc "$TREE")
inproc_big=$(inproc "$BIG")

# One more mount per method into a known INTERMEDIATE: what does it cost on disk?
for m in idmap metacopy copy; do
    sh -c "$(reset $m)"
    "$SM" --oneshot -s 0x30000 --method $m "$TREE" "$WORK/im-$m" "$WORK/mnt-$m" >/dev/null
done
tree_kb=$(du -sk "$TREE" | cut -f1)
meta_kb=$(du -sk "$WORK/im-metacopy/upper" | cut -f1)
idmap_kb=$(du -sk "$WORK/im-idmap/upper" | cut -f1)
copy_kb=$(du -sk "$WORK/im-copy/copy" | cut -f1)
# A remount of an INTERMEDIATE already set up: no walk.
"$SM" --unmount "$WORK/mnt-metacopy" >/dev/null
remount=$("$SM" --oneshot -s 0x30000 "$TREE" "$WORK/im-metacopy" "$WORK/mnt-metacopy" | tail -2 | head -1)

python3 - "$WORK/result.json" "$tree_kb" "$meta_kb" "$idmap_kb" "$copy_kb" "$remount" "$inproc_small" "$inproc_big" "$paired" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
tree, meta, idm, copy = (int(x) for x in sys.argv[2:6])
ms = lambda n: (f"mean {r[n]['mean']*1000:.1f} ms ± {r[n]['stddev']*1000:.1f}, median {r[n]['median']*1000:.1f}, "
                f"min {r[n]['min']*1000:.1f}, cpu (user+sys) {(r[n]['user']+r[n]['system'])*1000:.1f} ms")
for n in ["idmap", "idmap-x10", "metacopy", "copy", "naive", "metacopy+sync", "naive+sync"]:
    print(f"{n:13} {ms(n)}")
print(f"idmap: {r['idmap']['mean']*1000:.1f} ms, 10x tree: {r['idmap-x10']['mean']*1000:.1f} ms "
      f"(ratio {r['idmap-x10']['mean']/r['idmap']['mean']:.2f}; target < 10 ms on both)")
print(f"idmap in-process (report.elapsed_us): minbase {sys.argv[7]}; x10 {sys.argv[8]}")
cpu = lambda n: r[n]['user'] + r[n]['system']
print(f"metacopy / naive: mean {r['metacopy']['mean']/r['naive']['mean']:.3f}, "
      f"median {r['metacopy']['median']/r['naive']['median']:.3f}, cpu {cpu('metacopy')/cpu('naive'):.3f} (target <= 0.5)")
print(sys.argv[9])
print(f"metacopy+sync / naive+sync: mean {r['metacopy+sync']['mean']/r['naive+sync']['mean']:.3f}, "
      f"median {r['metacopy+sync']['median']/r['naive+sync']['median']:.3f}")
print(f"idmap / naive: {r['idmap']['mean']/r['naive']['mean']:.4f}")
print(f"copy / naive: {r['copy']['mean']/r['naive']['mean']:.2f}")
print(f"disk: tree {tree} KiB; metacopy upper {meta} KiB = {100*meta/tree:.1f}% (target < 15%); "
      f"idmap upper {idm} KiB = {100*idm/tree:.2f}%; copy {copy} KiB = {100*copy/tree:.0f}%")
print(f"remount of the metacopy INTERMEDIATE: {sys.argv[6]}")
PY
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
