#!/usr/bin/env python3
"""Accuracy-versus-round plot of one or more federate runs, as a dependency-free SVG.

    python3 scripts/plot_rounds.py [--log-x] [--y-min=N] out.svg "FedAvg E=5"=runs/a "FedAvg E=1"=runs/b

Each run directory holds the rounds.jsonl that `federate run` writes; the y axis is the
recorded accuracy (centralised when configured), with a dashed line at 99 %. `--log-x` puts
rounds on a log scale (for runs of 20 and 1,000 rounds in one plot); `--y-min` clips the
y axis from below (lower accuracies are drawn at the bottom edge).
"""
import json
import math
import sys

W, H, PAD = 640, 400, 50
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def load(run_dir):
    rounds, acc = [], []
    with open(f"{run_dir}/rounds.jsonl") as f:
        for line in f:
            r = json.loads(line)
            if r.get("accuracy") is not None:
                rounds.append(r["round"])
                acc.append(100.0 * r["accuracy"])
    return rounds, acc


def main():
    flags = [a for a in sys.argv[1:] if a.startswith("--")]
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) < 2 or any(f != "--log-x" and not f.startswith("--y-min=") for f in flags):
        sys.exit(__doc__)
    log_x = "--log-x" in flags
    y_min = next((float(f.split("=", 1)[1]) for f in flags if f.startswith("--y-min=")), None)
    out, series = args[0], []
    for arg in args[1:]:
        label, _, path = arg.rpartition("=")
        series.append((label, *load(path)))
    max_round = max(max(r) for _, r, _ in series)
    lo = min(min(a) for _, _, a in series)
    lo = min(lo, 98.0) // 1 if y_min is None else y_min
    if log_x:
        x = lambda r: PAD + (W - 2 * PAD) * math.log(r) / max(1e-9, math.log(max_round))
    else:
        x = lambda r: PAD + (W - 2 * PAD) * (r - 1) / max(1, max_round - 1)
    y = lambda a: H - PAD - (H - 2 * PAD) * (a - lo) / (100.0 - lo)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
             f'<rect width="{W}" height="{H}" fill="white"/>',
             f'<line x1="{PAD}" y1="{H-PAD}" x2="{W-PAD}" y2="{H-PAD}" stroke="black"/>',
             f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H-PAD}" stroke="black"/>',
             f'<line x1="{PAD}" y1="{y(99):.1f}" x2="{W-PAD}" y2="{y(99):.1f}" stroke="grey" stroke-dasharray="4 4"/>',
             f'<text x="{W/2}" y="{H-10}" text-anchor="middle">round{" (log scale)" if log_x else ""}</text>',
             f'<text x="12" y="{H/2}" transform="rotate(-90 12 {H/2})" text-anchor="middle">test accuracy (%)</text>']
    step = max(1, int(100 - lo) // 10)
    for t in range(int(lo), 101, step):
        parts.append(f'<text x="{PAD-6}" y="{y(t)+4:.1f}" text-anchor="end">{t}</text>')
    if log_x:
        ticks = {t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if t <= max_round} | {max_round}
    else:
        ticks = {1, max_round} | set(range(0, max_round + 1, max(1, max_round // 8))) - {0}
    ticks = {t for t in ticks if t == max_round or x(max_round) - x(t) > 25}
    for t in sorted(ticks):
        parts.append(f'<text x="{x(t):.1f}" y="{H-PAD+16}" text-anchor="middle">{t}</text>')
    for i, (label, rounds, acc) in enumerate(series):
        c = COLOURS[i % len(COLOURS)]
        pts = " ".join(f"{x(r):.1f},{y(max(a, lo)):.1f}" for r, a in zip(rounds, acc))
        parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{pts}"/>')
        # The legend sits in the lower right, below the curves that have climbed by then.
        parts.append(f'<text x="{W-PAD-170}" y="{H-PAD-16*(len(series)-i)+4}" fill="{c}">{label}</text>')
    parts.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(parts))


if __name__ == "__main__":
    main()
