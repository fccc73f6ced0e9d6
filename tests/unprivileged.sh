#!/bin/sh
# Runs the library's unit tests as an unprivileged user: map planning, cgroup settings,
# rootfs planning and the rest must not need root. Builds nothing: give it the lib test
# binary (`cargo test --lib --no-run` prints its path) and, optionally, test filters.
# Run as root: it copies the binary where the user can read it and runs it as
# $WARREN_TEST_USER (default warren-test, created without subordinate ids if missing) with
# WARREN_TEST_UNPRIVILEGED=1, so a unit test that needs root is skipped saying why.
set -eu
if [ $# -lt 1 ] || [ ! -x "$1" ]; then
	echo "usage: $0 TARGET/debug/deps/warren-HASH [TEST_FILTER...]" >&2
	exit 2
fi
bin=$1
shift
user=${WARREN_TEST_USER:-warren-test}
if [ "$(id -u)" -ne 0 ]; then
	echo "$0: run as root (it switches to $user)" >&2
	exit 2
fi
if ! id -u "$user" >/dev/null 2>&1; then
	useradd --create-home --shell /bin/sh -K SUB_UID_COUNT=0 -K SUB_GID_COUNT=0 "$user" ||
		id -u "$user" >/dev/null
fi
uid=$(id -u "$user")
gid=$(id -g "$user")
dir=$(mktemp -d /tmp/warren-unprivileged.XXXXXX)
trap 'rm -rf "$dir"' EXIT INT TERM
cp "$bin" "$dir/lib-tests"
chown -R "$uid:$gid" "$dir"
cd "$dir"
# A clean environment: nothing of root's (HOME, XDG dirs, RUST_LOG) leaks into the run.
setpriv --reuid="$uid" --regid="$gid" --init-groups -- \
	env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME="$dir" TMPDIR="$dir" \
	USER="$user" WARREN_TEST_UNPRIVILEGED=1 ./lib-tests --test-threads=2 "$@"
