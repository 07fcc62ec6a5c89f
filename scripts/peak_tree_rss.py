#!/usr/bin/env python3
"""Runs a command and reports the peak of the summed resident memory of its whole process
tree (Ray, for one, starts many processes; `/usr/bin/time -v` sees only the first), sampled
from /proc every 0.2 s, and the wall time. Linux only, standard library only.

    python3 scripts/peak_tree_rss.py -- /tmp/torchvenv/bin/python scripts/flower_anchor.py
"""

import os
import subprocess
import sys
import time


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children(p))
    return out


def main():
    args = sys.argv[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        raise SystemExit(__doc__)
    start = time.perf_counter()
    proc = subprocess.Popen(args)
    peak = 0
    while proc.poll() is None:
        # Ray's processes may outlive their parent's links briefly; the session's group
        # would be wider, the tree is what this command started.
        peak = max(peak, sum(rss_kb(p) for p in tree(proc.pid)))
        time.sleep(0.2)
    wall = time.perf_counter() - start
    print(f"peak_tree_rss_mb={peak / 1024:.0f} wall_s={wall:.1f} exit={proc.returncode}", file=sys.stderr)
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
