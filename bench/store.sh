#!/bin/bash
# Chunk store benchmark: warren vs casync (and tar|zstd as the physical floor), in one run,
# on a Debian minbase tree and on a variant of it with python3-minimal installed.
#
#   sudo bench/store.sh            (RUNS=3 by default; needs casync zstd hyperfine debootstrap jq)
#
# Trees are cached under /var/tmp/warren-bench; every measured run starts from a fresh
# store / destination directory; the page cache is warm for every tool alike.
set -euo pipefail

RUNS=${RUNS:-3}
BENCH=${BENCH:-/var/tmp/warren-bench}
BASE=$BENCH/minbase
VARIANT=$BENCH/minbase-python3
WORK=$BENCH/store-work
cd "$(dirname "$0")/.."

for tool in casync zstd hyperfine debootstrap jq; do
    command -v $tool >/dev/null || { echo "missing $tool: apt-get install -y $tool" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "run as root (the trees hold root-owned files and devices)" >&2; exit 1; }

if [ ! -x "$BASE/bin/sh" ]; then
    echo "building $BASE (debootstrap minbase bookworm)..." >&2
    rm -rf "$BASE.tmp"
    debootstrap --variant=minbase bookworm "$BASE.tmp" >"$BENCH/debootstrap.log" 2>&1
    mv "$BASE.tmp" "$BASE"
fi
if [ ! -x "$VARIANT/usr/bin/python3" ]; then
    echo "building $VARIANT (minbase + python3-minimal)..." >&2
    rm -rf "$VARIANT.tmp"
    cp -a "$BASE" "$VARIANT.tmp"
    chroot "$VARIANT.tmp" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-minimal
    # The downloaded .debs and apt's binary caches are not the image (Debian's images drop
    # them too; the base tree from debootstrap has none either).
    chroot "$VARIANT.tmp" apt-get clean
    mv "$VARIANT.tmp" "$VARIANT"
fi

make -s release
WARREN=$PWD/$(make -s bindir)/warren
# The previous run's outputs are deleted only at the end of this one, after measuring
# (see below for why deleting slows every create for minutes: leave 5 minutes between
# runs, and know what else on the machine deletes many files).
OLD=$BENCH/store-old.$$
if [ -e "$WORK" ]; then mv "$WORK" "$OLD"; fi
mkdir -p "$WORK"
W=$WORK

# Old outputs are moved aside, not deleted, while measuring: for ~30 s after a mass
# delete, ext4's inode allocator rescans the freed inodes (recently_deleted(): 60 s, or
# 300 s while their inode table block is dirty) and every create gets slower, whichever
# tool runs next.
TRASH=$W/trash; mkdir -p $TRASH
# Each run also starts with nothing waiting for writeback (sync): no tool pays for the
# last one's writes (or a build's), and a synced warren import (syncfs) waits for its own.
aside() { echo "for d in $*; do if [ -e \$d ]; then mv \$d \$(mktemp -d -p $TRASH)/; fi; done; sync"; }

content_bytes() { find "$1" -type f -printf '%s\n' | awk '{s+=$1} END {print s}'; }
store_bytes() { find "$1" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}'; }
mean() { jq '.results[0].mean' "$1"; }
BYTES=$(content_bytes "$BASE")

TAR_FLAGS=(--xattrs --xattrs-include='*' --acls --numeric-owner)
HF=(hyperfine --runs "$RUNS" --warmup 1 --style basic)

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== import ($((BYTES / 1048576)) MiB of file content, $RUNS runs each)"
"${HF[@]}" --export-json $W/import.json \
    --prepare "$(aside $W/ws)" "$WARREN --store $W/ws image import $BASE --name base" \
    --prepare "$(aside $W/ws)" "$WARREN --store $W/ws image import --no-sync $BASE --name base" \
    --prepare "$(aside $W/cs $W/base.caidx)" "casync make --store=$W/cs $W/base.caidx $BASE" \
    --prepare "rm -f $W/base.tar.zst; sync" "tar -C $BASE -cf - ${TAR_FLAGS[*]} . | zstd -q -3 -T2 -o $W/base.tar.zst"

echo "== extract"
"${HF[@]}" --export-json $W/extract.json \
    --prepare "$(aside $W/out)" "$WARREN --store $W/ws image extract base $W/out" \
    --prepare "$(aside $W/out)" "$WARREN --store $W/ws image extract --no-sync base $W/out" \
    --prepare "$(aside $W/out)" "casync extract --store=$W/cs $W/base.caidx $W/out" \
    --prepare "$(aside $W/out) && mkdir $W/out" "zstd -dc $W/base.tar.zst | tar -C $W/out -xf - ${TAR_FLAGS[*]}"
rm -rf $W/out $TRASH

echo "== stores: base, then the variant added to the same store"
WS_BASE=$(store_bytes $W/ws)
CS_BASE=$(( $(store_bytes $W/cs) + $(stat -c %s $W/base.caidx) ))
TAR_BASE=$(stat -c %s $W/base.tar.zst)
$WARREN --store $W/ws image import "$VARIANT" --name variant >/dev/null
casync make --store=$W/cs $W/variant.caidx "$VARIANT" >/dev/null
WS_ADD=$(( $(store_bytes $W/ws) - WS_BASE ))
CS_ADD=$(( $(store_bytes $W/cs) + $(stat -c %s $W/base.caidx) + $(stat -c %s $W/variant.caidx) - CS_BASE ))
$WARREN --store $W/ws store stats

jq -n \
    --argjson bytes "$BYTES" \
    --slurpfile imp $W/import.json --slurpfile ext $W/extract.json \
    --argjson wsb "$WS_BASE" --argjson csb "$CS_BASE" --argjson tarb "$TAR_BASE" \
    --argjson wsa "$WS_ADD" --argjson csa "$CS_ADD" \
    --arg load "before: $LOAD_BEFORE   after: $(cut -d' ' -f1-3 /proc/loadavg)" -r '
  def mbs(t): ($bytes / 1048576 / t * 10 | round / 10);
  def r(x): (x * 100 | round / 100);
  def r3(x): (x * 1000 | round / 1000);
  def cpu(x): ((x.user + x.system) * 100 | round / 100);
  ($imp[0].results | map(.mean)) as [$wi, $win, $ci, $ti] |
  ($ext[0].results | map(.mean)) as [$we, $wen, $ce, $te] |
  "",
  "import   warren \(mbs($wi)) MB/s (synced)  \(mbs($win)) MB/s (--no-sync)   casync \(mbs($ci)) MB/s   tar|zstd -3 -T2 \(mbs($ti)) MB/s",
  "         warren/casync throughput: \(r($ci / $wi))x (synced), \(r($ci / $win))x (--no-sync) (target >= 3)",
  "extract  warren \(mbs($we)) MB/s (synced)  \(mbs($wen)) MB/s (--no-sync)   casync \(mbs($ce)) MB/s   zstd -dc|tar -x \(mbs($te)) MB/s",
  "         warren/casync throughput: \(r($ce / $we))x (synced), \(r($ce / $wen))x (--no-sync) (target >= 2)",
  "         warren/tar throughput:    \(r($te / $we))x (synced), \(r($te / $wen))x (--no-sync) (target >= 1)",
  "cpu      (user+sys s) import warren \(cpu($imp[0].results[0])) (synced) \(cpu($imp[0].results[1])) (--no-sync)   casync \(cpu($imp[0].results[2]))   tar|zstd \(cpu($imp[0].results[3]))",
  "         extract warren \(cpu($ext[0].results[0])) (synced) \(cpu($ext[0].results[1])) (--no-sync)   casync \(cpu($ext[0].results[2]))   zstd|tar \(cpu($ext[0].results[3]))",
  "load     \($load)",
  "store    base: warren \($wsb / 1048576 * 10 | round / 10) MiB   casync \($csb / 1048576 * 10 | round / 10) MiB   tar.zst \($tarb / 1048576 * 10 | round / 10) MiB   (warren/casync \(r3($wsb / $csb)), target <= 1)",
  "         variant adds: warren \($wsa / 1048576 * 10 | round / 10) MiB   casync \($csa / 1048576 * 10 | round / 10) MiB   (warren/casync \(r3($wsa / $csa)), target <= 0.8)"'
rm -rf "$OLD"
