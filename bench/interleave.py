#!/usr/bin/env python3
"""Times commands interleaved: one start of each in turn (the order reversed every round),
RUNS rounds, so every command sees the same machine; hyperfine times one command's runs
back to back, and each runtime's start then also meets the deferred kernel work (network
namespace cleanup, cgroup offlining) its own previous starts left. Each start is spawned
directly (posix_spawn, output to /dev/null) and timed to its exit.

Usage: interleave.py RUNS OUT.json NAME=COMMAND...   (writes hyperfine-like JSON: medians)
"""
import json
import os
import shlex
import statistics
import sys
import time


def main():
    runs, out = int(sys.argv[1]), sys.argv[2]
    cmds = [a.split("=", 1) for a in sys.argv[3:]]
    null = [(os.POSIX_SPAWN_OPEN, fd, "/dev/null", os.O_RDWR, 0) for fd in (0, 1, 2)]
    times = {name: [] for name, _ in cmds}
    codes = {name: [] for name, _ in cmds}

    def once(name, argv):
        start = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=null)
        _, status = os.waitpid(pid, 0)
        times[name].append(time.perf_counter() - start)
        codes[name].append(os.waitstatus_to_exitcode(status))

    parsed = [(name, shlex.split(cmd)) for name, cmd in cmds]
    for _ in range(5):  # warmup
        for name, argv in parsed:
            once(name, argv)
    for name in times:
        times[name].clear()
        codes[name].clear()
    for i in range(runs):
        for name, argv in parsed if i % 2 == 0 else parsed[::-1]:
            once(name, argv)
    results = [
        {"command": name, "median": statistics.median(times[name]), "exit_codes": codes[name]}
        for name, _ in cmds
    ]
    with open(out, "w") as f:
        json.dump({"results": results}, f)


if __name__ == "__main__":
    main()
