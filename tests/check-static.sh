#!/bin/sh
# Usage: tests/check-static.sh BINDIR
# Fails when a static release binary in BINDIR can call a weak undefined symbol.
#
# Why: in the LTO'd static-pie build a glibc function that Rust's std declares weak
# (statx, copy_file_range, gettid, ...) is left undefined, i.e. at address 0, unless
# something else pulls it in; std tests it for NULL first, but a plain `libc::statx(...)`
# in our code jumps to 0 and segfaults (shift-own did, on every tree). Two checks:
#  1. every weak undefined symbol is on the allow-list below (names whose users test them
#     for NULL: crt/glibc internals, zstd's trace hooks, std's weak wrappers);
#  2. (x86-64) no Rust code outside std calls through the zero GOT slot of such a symbol
#     (or calls address 0 directly): each call site is located with addr2line.
# Needs binutils (nm, readelf, objdump, addr2line).
set -eu

dir=${1:?usage: $0 BINDIR}
bins=${CHECK_STATIC_BINS:-"warren shift-own shift-mount warren-mount"}

# Weak undefined symbols that are fine, because whoever references them checks for NULL.
allowed() {
	case $1 in
	__gmon_start__ | _ITM_deregisterTMCloneTable | _ITM_registerTMCloneTable | __cxa_finalize) ;;
	_nl_current_LC_*_used) ;;          # glibc locale internals
	__pthread_key_create) ;;           # libgcc's "is libpthread linked" probe
	ZSTD_trace_*) ;;                   # zstd's optional trace hooks
	__cxa_thread_atexit_impl) ;;       # std: thread-local destructors
	# std's `weak!`/`syscall!` wrappers: raw syscall or fallback when NULL. Allowed only
	# if check 2 finds no caller outside std.
	statx | gettid | copy_file_range | pidfd_getpid | pidfd_spawnp) ;;
	posix_spawn_file_actions_addchdir | posix_spawn_file_actions_addchdir_np) ;;
	*) return 1 ;;
	esac
}

for tool in nm readelf objdump addr2line; do
	command -v $tool >/dev/null || {
		echo "check-static: $tool not found: apt-get install binutils" >&2
		exit 2
	}
done

fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for name in $bins; do
	bin=$dir/$name
	[ -f "$bin" ] || { echo "check-static: $bin: no such binary" >&2; exit 2; }
	weak=$(nm "$bin" | awk 'NF == 2 && $1 == "w" { print $2 }')

	# 1. The allow-list.
	for sym in $weak; do
		if ! allowed "$sym"; then
			echo "check-static: $bin: weak undefined symbol '$sym' (address 0 in a static binary): call it through libc::syscall, or add it to the allow-list in $0 if every user tests it for NULL" >&2
			fail=1
		fi
	done

	# 2. Call sites through zero GOT slots (weak undefined, no relocation) or to address 0.
	if ! readelf -h "$bin" | grep -q 'X86-64'; then
		echo "check-static: $bin: not x86-64, call-site check not run (symbol check only)" >&2
		continue
	fi
	readelf -r -W "$bin" | awk '$1 ~ /^[0-9a-f]+$/ && length($1) == 16 { sub(/^0+/, "", $1); print $1 }' \
		>"$tmp/relocs"
	# `readelf -x .got`: "  0xADDR w0 w1 w2 w3  ascii", two 8-byte slots a line.
	readelf -x .got "$bin" | awk '$1 ~ /^0x/ {
			for (i = 0; i < 2; i++)
				if ($(2 + 2 * i) == "00000000" && $(3 + 2 * i) == "00000000") print $1, 8 * i
		}' | while read -r line off; do printf '%x\n' $((line + off)); done >"$tmp/zero"
	grep -vxF -f "$tmp/relocs" "$tmp/zero" >"$tmp/slots" || true
	objdump -d --no-show-raw-insn "$bin" | awk -v slots="$tmp/slots" '
		BEGIN { while ((getline s < slots) > 0) zero[s] = 1 }
		/^Disassembly of section/ { text = ($4 == ".text:") }
		!text { next }
		/(call|jmp)[ \t]+\*0x[0-9a-f]+\(%rip\)/ {
			n = split($0, f, "# ")
			split(f[n], t, " ")
			if (t[1] in zero) { sub(":", "", $1); print $1, t[1] }
			next
		}
		/(call|jmp)[ \t]+0 </ { sub(":", "", $1); print $1, "0" }' >"$tmp/sites"
	[ -s "$tmp/sites" ] || continue
	# The innermost (inlined) frame of each site: "ADDR SLOT FILE:LINE FUNCTION".
	cut -d' ' -f1 "$tmp/sites" | addr2line -a -f -i -C -e "$bin" | awk -v sites="$tmp/sites" '
		BEGIN { while ((getline l < sites) > 0) { split(l, p, " "); slot[p[1]] = p[2] } }
		/^0x[0-9a-f]+$/ { addr = substr($0, 3); sub(/^0+/, "", addr); first = 1; next }
		first { fn = $0; getline; print addr, slot[addr], $0, fn; first = 0 }' >"$tmp/frames"
	# Name each slot after the std wrapper that uses it (`...::try_statx::statx` -> statx).
	awk '$3 ~ /\/library\/std\// { n = split($NF, p, "::"); print $2, p[n] }' "$tmp/frames" |
		sort -u >"$tmp/names"
	while read -r addr s file func; do
		case $file in
		*/library/std/*) continue ;;   # std tests the symbol for NULL first
		*.rs:[0-9]*) ;;                 # our code or a Rust dependency: a crash
		*) continue ;;                  # glibc/crt/zstd C code, which tests its weak hooks
		esac
		sym=$(awk -v s="$s" '$1 == s { print $2 }' "$tmp/names" | head -n 1)
		echo "check-static: $bin: $func ($file, at 0x$addr) calls the weak undefined symbol ${sym:-at GOT slot 0x$s} (address 0 in this static binary): call it through libc::syscall" >&2
		fail=1
	done <"$tmp/frames"
done

[ $fail -eq 0 ] && echo "check-static: no call to a weak undefined symbol in $bins"
exit $fail
