#!/bin/sh
# The release binaries (`make release`: static-pie, what `make install` and the benchmarks
# use) run real containers as root and as the unprivileged test user. The cargo tests
# before this drive the ordinary test build; this checks what ships: static glibc's user
# lookups (NSS), newuidmap/newgidmap, the embedded image. Usage: release-smoke.sh BINDIR
set -eu
W=$(realpath "$1")/warren
U=warren-test
fail() { echo "release-smoke: $*" >&2; exit 1; }

for b in warren shift-own shift-mount warren-mount; do
	ldd "$(dirname "$W")/$b" 2>&1 | grep -q 'statically linked' || fail "$b is not statically linked"
done

# shift-own and shift-mount (all three methods, and --reshift) from the static build:
# they once segfaulted there on every tree (glibc's statx was a null weak symbol).
B=$(dirname "$W")
t=$(mktemp -d /var/tmp/warren-smoke.XXXXXX)
trap '"$B/shift-mount" --unmount "$t/mnt" >/dev/null 2>&1; rm -rf "$t"' EXIT
mkdir -p "$t/lower/d" "$t/mnt"
echo hi >"$t/lower/d/f"
chown -R 1000:1000 "$t/lower/d"
owner() { stat -c %u:%g "$1"; }
want() { echo "$(($1 + 1000)):$(($1 + 1000))"; }
cp -a "$t/lower" "$t/tree"
"$B/shift-own" -s 0x30000 "$t/tree" >/dev/null || fail "shift-own failed"
[ "$(owner "$t/tree/d/f")" = "$(want 0x30000)" ] || fail "shift-own: $(owner "$t/tree/d/f")"
for m in idmap metacopy copy; do
	"$B/shift-mount" --oneshot --method $m -s 0x40000 "$t/lower" "$t/im-$m" "$t/mnt" >/dev/null ||
		fail "shift-mount --method $m failed"
	[ "$(owner "$t/mnt/d/f")" = "$(want 0x40000)" ] || fail "shift-mount $m: $(owner "$t/mnt/d/f")"
	"$B/shift-mount" --unmount "$t/mnt" >/dev/null || fail "shift-mount --unmount ($m) failed"
	"$B/shift-mount" --oneshot --reshift -s 0x50000 "$t/lower" "$t/im-$m" "$t/mnt" >/dev/null ||
		fail "shift-mount --reshift ($m) failed"
	[ "$(owner "$t/mnt/d/f")" = "$(want 0x50000)" ] || fail "reshift $m: $(owner "$t/mnt/d/f")"
	"$B/shift-mount" --unmount "$t/mnt" >/dev/null || fail "shift-mount --unmount ($m) failed"
done
[ "$(owner "$t/lower/d/f")" = 1000:1000 ] || fail "shift-mount changed LOWER"
rm -rf "$t"
trap - EXIT
echo "release-smoke: static shift-own and shift-mount (idmap, metacopy, copy, --reshift) work"

out=$("$W" run --rm --image busybox -- sh -c 'id -u; cat /proc/self/uid_map')
set -- $out
[ "$1" = 0 ] && [ "$2" = 0 ] && [ "$3" != 0 ] || fail "rootful: unexpected output: $out"

id $U >/dev/null 2>&1 || fail "user $U missing (the cargo tests create it: run make test)"
grep -q "^$U:" /etc/subuid || fail "$U has no /etc/subuid range"
as_user() { runuser -u $U -- env XDG_RUNTIME_DIR=/tmp/warren-smoke-$U "$@"; }
as_user mkdir -p /tmp/warren-smoke-$U
trap 'as_user "$W" rm --force smoke >/dev/null 2>&1 || true' EXIT
as_user "$W" run -d --name smoke --image busybox -- sleep 30 >/dev/null
state=$(as_user "$W" list --json)
echo "$state" | grep -q '"owner":"'$U'"' || fail "rootless: owner not resolved: $state"
out=$(as_user "$W" run --rm --image busybox -- sh -c 'id -u; cat /proc/self/uid_map')
set -- $out
sub=$(awk -F: -v u=$U '$1 == u { print $2; exit }' /etc/subuid)
[ "$1" = 0 ] && [ "$2" = 0 ] && [ "$3" -ge "$sub" ] || fail "rootless: unexpected output: $out"
echo "release-smoke: static warren runs containers as root and as $U"
