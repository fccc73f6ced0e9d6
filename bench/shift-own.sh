#!/bin/sh
# shift-own vs chown -hR on a Debian minbase tree (~6.8k entries), in one run.
# Each command works on its own `cp -a` copy, reset to ids 0 before every timed run
# (shift-own -s 0 restores exactly; chown's copy is re-owned with chown -hR 0:0).
# Usage: bench/shift-own.sh [ROUNDS] [RUNS]   (as root; hyperfine, debootstrap if no tree)
set -eu
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
RUNS=${2:-10}
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

make -s release
SHIFT=$PWD/$(make -s bindir)/shift-own

rm -rf "$WORK" && mkdir -p "$WORK"
cp -a "$TREE" "$WORK/a" && cp -a "$TREE" "$WORK/b"
echo "tree: $(find "$WORK/a" | wc -l) entries, $(nproc) cores, $(uname -r)"

# hyperfine runs one command's runs, then the next's; on a shared machine the load moves
# in between. So: ROUNDS short rounds, a ratio per round, and the median of those.
for round in $(seq "$ROUNDS"); do
    hyperfine -N --style none  --warmup 2 --runs "$RUNS" --export-csv "$WORK/round$round.csv" \
        --prepare "$SHIFT -s 0 $WORK/a" \
        --prepare "$SHIFT -s 0 $WORK/a" \
        --prepare "chown -hR 0:0 $WORK/b" \
        -n "shift-own -s 0x30000" "$SHIFT -s 0x30000 $WORK/a" \
        -n "shift-own -j1 -s 0x30000" "$SHIFT -j1 -s 0x30000 $WORK/a" \
        -n "chown -hR 196608:196608" "chown -hR 196608:196608 $WORK/b" >/dev/null
done

# CSV columns: command,mean,stddev,median,user,system,min,max (seconds).
awk -F, '
function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
FNR == 1 { round++; next }
{ med[round, $1] = $4; cpu[round, $1] = $5 + $6; names[$1] = 1 }
END {
    c = "chown -hR 196608:196608"
    for (r = 1; r <= round; r++) {
        line = sprintf("round %d:", r)
        for (n in names) line = line sprintf("  %s %.1f ms (cpu %.1f)", n, med[r, n] * 1e3, cpu[r, n] * 1e3)
        print line
    }
    for (n in names) if (n != c) {
        rs = ""; cs = ""
        for (r = 1; r <= round; r++) { rs = rs sprintf(" %.2f", med[r, n] / med[r, c]); cs = cs " " cpu[r, n] / cpu[r, c] }
        printf "ratio %s / chown -hR: median of rounds %.2f (per round:%s), cpu %.2f (target <= 1.0)\n", n, median(rs), rs, median(cs)
    }
}' "$WORK"/round*.csv
rm -rf "$WORK"
