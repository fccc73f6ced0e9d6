#!/bin/sh
# The release binaries (`make release`: static-pie, what `make install` and the benchmarks
# use) run real containers as root and as the unprivileged test user. The cargo tests
# before this drive the ordinary test build; this checks what ships: static glibc's user
# lookups (NSS), newuidmap/newgidmap, the embedded image. Usage: release-smoke.sh BINDIR
set -eu
W=$(realpath "$1")/warren
U=warren-test
fail() { echo "release-smoke: $*" >&2; exit 1; }

ldd "$W" 2>&1 | grep -q 'statically linked' || fail "$W is not statically linked"

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
