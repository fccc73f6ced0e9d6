#!/bin/sh
# shift-own vs chown -hR on a Debian minbase tree (~6.8k entries), in one run.
# Each command works on its own `cp -a` copy, reset to ids 0 before every timed run
# (shift-own -s 0 restores exactly; chown's copy is re-owned with chown -hR 0:0).
# Usage: bench/shift-own.sh [RUNS]   (as root; needs hyperfine, debootstrap if no tree)
set -eu
cd "$(dirname "$0")/.."
RUNS=${1:-30}
BASE=/var/tmp/warren-bench
TREE=$BASE/minbase
WORK=$BASE/shift-own-work

[ "$(id -u)" = 0 ] || { echo "run as root (chown needs it)" >&2; exit 1; }
command -v hyperfine >/dev/null || { echo "apt-get install -y hyperfine" >&2; exit 1; }
if ! grep -qs '^rc=0' "$BASE/debootstrap.log" || [ ! -d "$TREE/usr" ]; then
    command -v debootstrap >/dev/null || { echo "apt-get install -y debootstrap" >&2; exit 1; }
    mkdir -p "$BASE" && rm -rf "$TREE"
    { debootstrap --variant=minbase bookworm "$TREE"; echo "rc=$?"; } >"$BASE/debootstrap.log" 2>&1
fi

cargo build --release --quiet --bin shift-own
SHIFT=$PWD/target/release/shift-own

rm -rf "$WORK" && mkdir -p "$WORK"
cp -a "$TREE" "$WORK/a" && cp -a "$TREE" "$WORK/b"
echo "tree: $(find "$WORK/a" | wc -l) entries, $(nproc) cores, $(uname -r)"

hyperfine -N --warmup 3 --runs "$RUNS" --export-csv "$WORK/result.csv" \
    --prepare "$SHIFT -s 0 $WORK/a" \
    --prepare "$SHIFT -s 0 $WORK/a" \
    --prepare "chown -hR 0:0 $WORK/b" \
    -n "shift-own -s 0x30000" "$SHIFT -s 0x30000 $WORK/a" \
    -n "shift-own -j1 -s 0x30000" "$SHIFT -j1 -s 0x30000 $WORK/a" \
    -n "chown -hR 196608:196608" "chown -hR 196608:196608 $WORK/b"

# CSV columns: command,mean,stddev,median,user,system,min,max (seconds).
awk -F, 'NR > 1 {
    name[NR] = $1; mean[$1] = $2; median[$1] = $4; cpu[$1] = $5 + $6
    printf "%-26s mean %6.1f ms  median %6.1f ms  min %6.1f ms  cpu %6.1f ms\n", \
        $1, $2 * 1e3, $4 * 1e3, $7 * 1e3, ($5 + $6) * 1e3
}
END {
    c = "chown -hR 196608:196608"
    for (i in name) if (name[i] != c)
        printf "ratio %s / chown -hR: mean %.2f, median %.2f, cpu %.2f (target <= 1.0)\n", \
            name[i], mean[name[i]] / mean[c], median[name[i]] / median[c], cpu[name[i]] / cpu[c]
}' "$WORK/result.csv"
rm -rf "$WORK"
