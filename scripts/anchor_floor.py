#!/usr/bin/env python3
"""Issue #16's anchor against its arithmetic floor, measured in one go on this machine.

For each binary given (e.g. an old and a new build, alternated), each repetition measures
the GEMM peak (`federate bench train`'s `gemm_peak_gflops`), runs the anchor

    federate run --quiet --set train.epochs=1 --set train.momentum=0 --set evaluation.baseline=false

under `/usr/bin/time`, measures the peak again, and prints the wall, the peak RSS, the floor
and their ratio. The floor is 60,000 training examples × 72.4 MFLOP plus 15,000 evaluated ×
24.5 MFLOP (the direct method's arithmetic, as in BENCHMARKS.md) at the mean of the two
peaks. On a shared VM the speed moves by tens of percent within minutes, so the ratio is
only meaningful with the peak measured around the run, never against a peak from another
time. Linux, standard library only.

    python3 scripts/anchor_floor.py --reps 2 ./target/release/federate /tmp/old/federate
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

ANCHOR = ["run", "--quiet", "--set", "train.epochs=1", "--set", "train.momentum=0", "--set",
          "evaluation.baseline=false"]
FLOOR_GFLOP = (60_000 * 72.4 + 15_000 * 24.5) / 1e3


def gemm_peak(binary):
    out = subprocess.run([binary, "bench", "train", "--batches", "10", "--seconds", "0.3"],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"gemm_peak_gflops=([0-9.]+)", out)
    if not m:
        sys.exit(f"{binary} bench train printed no gemm_peak_gflops")
    return float(m.group(1))


def anchor(binary):
    with tempfile.NamedTemporaryFile("r") as t:
        out = subprocess.run(["/usr/bin/time", "-o", t.name, "-f", "%e %M", binary, *ANCHOR],
                             capture_output=True, text=True, check=True).stdout
        wall, kb = t.read().split()[-2:]
    acc = re.findall(r"accuracy ([0-9.]+) %", out)
    return float(wall), int(kb) // 1024, acc[-1] if acc else "?"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("binaries", nargs="+", help="federate binaries, alternated")
    p.add_argument("--reps", type=int, default=2, help="repetitions of the alternation")
    args = p.parse_args()
    for b in args.binaries:
        if not os.access(b, os.X_OK):
            sys.exit(f"{b}: not an executable (build with `cargo build --release`)")
    for _ in range(args.reps):
        for b in args.binaries:
            before = gemm_peak(b)
            wall, mb, acc = anchor(b)
            after = gemm_peak(b)
            floor = FLOOR_GFLOP / ((before + after) / 2)
            print(f"{b}: wall {wall:.2f} s, peak RSS {mb} MB, accuracy {acc} %, "
                  f"GEMM peak {before:.0f}/{after:.0f} GFLOP/s, floor {floor:.2f} s, "
                  f"wall/floor {wall / floor:.3f}", flush=True)


if __name__ == "__main__":
    main()
