#!/bin/sh
# warren run vs crun run vs runc run: a busybox bundle running /bin/true, rootful and
# rootless, without seccomp and with the default profile (containers-common seccomp.json).
# crun 1.8 refuses hybrid cgroup hosts, so everything runs inside `unshare -m` with a
# /sys/fs/cgroup that holds only the v1 hierarchies: all three see the same host.
# Each start is timed three ways: back to back (hyperfine's usual loop), after 100 ms idle,
# and interleaved start by start with the other runtimes (bench/interleave.py).
# Usage: sudo bench/runtime.sh   (needs hyperfine crun runc busybox-static uidmap)
set -eu
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
for t in hyperfine crun runc setpriv; do command -v $t >/dev/null || { echo "$t missing" >&2; exit 1; }; done
[ -x /bin/busybox ] || { echo "apt-get install busybox-static" >&2; exit 1; }
PROFILE=/usr/share/containers/seccomp.json
[ -f $PROFILE ] || { echo "$PROFILE missing: apt-get install golang-github-containers-common" >&2; exit 1; }

make -s release >&2
WARREN=$PWD/$(make -s bindir)/warren
W=/var/tmp/warren-bench/runtime
USER_NAME=warren-test
id $USER_NAME >/dev/null 2>&1 || useradd --create-home --shell /bin/sh $USER_NAME
U=$(id -u $USER_NAME); G=$(id -g $USER_NAME)
SUB=$(awk -F: -v u=$USER_NAME '$1==u {print $2; exit}' /etc/subuid)
[ -n "$SUB" ] || { echo "$USER_NAME has no /etc/subuid range" >&2; exit 1; }

rm -rf $W; mkdir -p $W/bin; chmod 755 $W $W/bin /var/tmp/warren-bench
# Each runtime runs from a copy made now, as an install writes it. A binary's page cache
# ages on this VM (DAMON evicts it; read back in small folios, each exec and exit maps and
# unmaps its text page by page): warren's start took ~20% more kernel time from an aged
# file than from a fresh one, crun's ~6%. All three are measured alike, fresh.
for b in "$WARREN" "$(command -v crun)" "$(command -v runc)"; do cp "$b" $W/bin/; done
cp bench/interleave.py $W/bin/
WARREN=$W/bin/warren CRUN=$W/bin/crun RUNC=$W/bin/runc
mkrootfs() {
    mkdir -p $1/bin $1/etc $1/proc $1/sys $1/dev $1/tmp
    cp /bin/busybox $1/bin/; ln -s busybox $1/bin/true; ln -s busybox $1/bin/sh
    echo 'root:x:0:0:root:/root:/bin/sh' > $1/etc/passwd; echo 'root:x:0:' > $1/etc/group
}
# config.json variants: (rootful|rootless) x (none|seccomp), from `crun spec`.
python3 - "$W" "$U" "$G" "$SUB" "$PROFILE" <<'PY'
import json, os, subprocess, sys
w, uid, gid, sub, profile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
seccomp = json.load(open(profile))
def spec(rootless):
    out = subprocess.run(["crun", "spec"] + (["--rootless"] if rootless else []), cwd=w, capture_output=True)
    c = json.load(open(os.path.join(w, "config.json"))); os.remove(os.path.join(w, "config.json"))
    c["process"]["terminal"] = False
    c["process"]["args"] = ["/bin/true"]
    c["root"]["path"] = "rootfs"
    if rootless:
        # The usual rootless map (runc chowns stdio to container root: it must be us).
        c["linux"]["uidMappings"] = [{"containerID": 0, "hostID": uid, "size": 1}, {"containerID": 1, "hostID": sub, "size": 65536}]
        c["linux"]["gidMappings"] = [{"containerID": 0, "hostID": gid, "size": 1}, {"containerID": 1, "hostID": sub, "size": 65536}]
        c["linux"].pop("resources", None)
    return c
for mode in ["rootful", "rootless"]:
    for sec in ["none", "seccomp"]:
        d = os.path.join(w, f"{mode}-{sec}")
        os.makedirs(d, exist_ok=True)
        c = spec(mode == "rootless")
        if sec == "seccomp":
            # The containers-common profile, in OCI form: the rules that apply on amd64
            # with the container's bounding capabilities, includes/excludes resolved.
            caps = set(c["process"]["capabilities"]["bounding"])
            rules = []
            for x in seccomp["syscalls"]:
                inc, exc = x.get("includes") or {}, x.get("excludes") or {}
                if not set(inc.get("caps") or []) <= caps: continue
                if inc.get("arches") and "amd64" not in inc["arches"]: continue
                if set(exc.get("caps") or []) & caps: continue
                if "amd64" in (exc.get("arches") or []): continue
                r = {k: v for k, v in x.items() if k in ("names", "action", "args", "errnoRet") and v}
                rules.append(r)
            s = {"defaultAction": seccomp["defaultAction"], "defaultErrnoRet": seccomp.get("defaultErrnoRet", 1),
                 "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"], "syscalls": rules}
            c["linux"]["seccomp"] = s
        else:
            c["linux"].pop("seccomp", None)
        json.dump(c, open(os.path.join(d, "config.json"), "w"), indent=1)
PY
for d in $W/rootful-*; do mkrootfs $d/rootfs; done
for d in $W/rootless-*; do mkrootfs $d/rootfs; chown -R -h $U:$G $d/rootfs; done
# State under /run, where runtimes keep it by default (a tmpfs is mounted there below).
S=/run/warren-bench; rm -rf $S; mkdir -p $S/root $S/user; chown $U:$G $S/user

# Inside a private mount namespace: /sys/fs/cgroup with the v1 hierarchies only.
cat > $W/inner.sh <<INNER
set -eu
mount --make-rprivate /
# Runtime state on a tmpfs, as /run is on a usual host (here it is ext4, where warren's
# crash-safe state writes would pay ~8 ms of fsync that crun and runc skip).
mount -t tmpfs -o mode=755 tmpfs $S; mkdir -p $S/root $S/user; chown $U:$G $S/user
umount /sys/fs/cgroup/unified 2>/dev/null || true
AS_USER="setpriv --reuid=$U --regid=$G --init-groups --"
for mode in rootful rootless; do
  for sec in none seccomp; do
    B=$W/\$mode-\$sec
    # Rootless, hyperfine itself runs as the user: a setpriv per start (~2.6 ms here, its
    # --init-groups reads the group database) would add the same to every runtime's time.
    if [ \$mode = rootful ]; then H=""; R=$S/root; else H="\$AS_USER"; R=$S/user; fi
    echo "== \$mode, seccomp: \$sec"
    # -i: runc as the rootless user fails a run now and then; failures are counted below.
    \$H hyperfine -N -i --warmup 10 --runs 200 --export-json \$R/\$mode-\$sec.json \\
      -n warren "$WARREN --root \$R/warren run -b \$B bench-w" \\
      -n crun "$CRUN --root \$R/crun run -b \$B bench-c" \\
      -n runc "$RUNC --root \$R/runc run -b \$B bench-r"
    # The same start after 100 ms idle, as a user or a scheduler starts one container:
    # back to back, a runtime that moves its init by cgroup.procs (crun, runc) finds the
    # kernel's cgroup threadgroup lock still in its fast mode from its own previous run;
    # after a pause it waits for an RCU grace period first (see src/container/cgroup/born.rs).
    \$H hyperfine -N -i --warmup 3 --runs 100 --prepare "sleep 0.1" --export-json \$R/\$mode-\$sec.idle.json \\
      -n warren "$WARREN --root \$R/warren run -b \$B bench-w" \\
      -n crun "$CRUN --root \$R/crun run -b \$B bench-c" \\
      -n runc "$RUNC --root \$R/runc run -b \$B bench-r"
    # The three interleaved, start by start (bench/interleave.py): each sees the same machine.
    \$H /usr/bin/python3 $W/bin/interleave.py 200 \$R/\$mode-\$sec.inter.json \\
      warren="$WARREN --root \$R/warren run -b \$B bench-w" \\
      crun="$CRUN --root \$R/crun run -b \$B bench-c" \\
      runc="$RUNC --root \$R/runc run -b \$B bench-r"
    cp \$R/\$mode-\$sec.json \$R/\$mode-\$sec.idle.json \$R/\$mode-\$sec.inter.json $W/
  done
done
INNER
XDG_RUNTIME_DIR=$S/user unshare -m sh $W/inner.sh
python3 - $W <<'PY'
import json, sys, glob, os
w = sys.argv[1]
for kind, pattern in (("back to back", "*-none.json *-seccomp.json"), ("after 100 ms idle", "*.idle.json"), ("interleaved", "*.inter.json")):
  print(f"\n{kind}:")
  print(f"{'mode':<20} {'warren ms':>10} {'crun ms':>10} {'runc ms':>10} {'warren/crun':>12} {'warren/runc':>12}  failed runs")
  for f in sorted(sum((glob.glob(os.path.join(w, p)) for p in pattern.split()), [])):
    results = json.load(open(f))["results"]
    r = {x["command"]: x["median"] * 1000 for x in results}
    failed = {x["command"]: sum(1 for c in x.get("exit_codes", []) if c != 0) for x in results}
    name = os.path.basename(f)[:-5]
    bad = ", ".join(f"{k} {n}" for k, n in failed.items() if n) or "none"
    print(f"{name:<20} {r['warren']:>10.2f} {r['crun']:>10.2f} {r['runc']:>10.2f} {r['warren']/r['crun']:>12.2f} {r['warren']/r['runc']:>12.2f}  {bad}")
PY
