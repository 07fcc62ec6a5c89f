#!/usr/bin/env python3
"""Accuracy-versus-round plot of one or more federate runs, as a dependency-free SVG.

    python3 scripts/plot_rounds.py out.svg "FedAvg E=5"=runs/a "FedAvg E=1"=runs/b

Each run directory holds the rounds.jsonl that `federate run` writes; the y axis is the
recorded accuracy (centralised when configured), with a dashed line at 99 %.
"""
import json
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
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, series = sys.argv[1], []
    for arg in sys.argv[2:]:
        label, _, path = arg.rpartition("=")
        series.append((label, *load(path)))
    max_round = max(max(r) for _, r, _ in series)
    lo = min(min(a) for _, _, a in series)
    lo = min(lo, 98.0) // 1
    x = lambda r: PAD + (W - 2 * PAD) * (r - 1) / max(1, max_round - 1)
    y = lambda a: H - PAD - (H - 2 * PAD) * (a - lo) / (100.0 - lo)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
             f'<rect width="{W}" height="{H}" fill="white"/>',
             f'<line x1="{PAD}" y1="{H-PAD}" x2="{W-PAD}" y2="{H-PAD}" stroke="black"/>',
             f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H-PAD}" stroke="black"/>',
             f'<line x1="{PAD}" y1="{y(99):.1f}" x2="{W-PAD}" y2="{y(99):.1f}" stroke="grey" stroke-dasharray="4 4"/>',
             f'<text x="{W/2}" y="{H-10}" text-anchor="middle">round</text>',
             f'<text x="12" y="{H/2}" transform="rotate(-90 12 {H/2})" text-anchor="middle">test accuracy (%)</text>']
    step = max(1, int(100 - lo) // 10)
    for t in range(int(lo), 101, step):
        parts.append(f'<text x="{PAD-6}" y="{y(t)+4:.1f}" text-anchor="end">{t}</text>')
    for t in sorted({1, max_round} | set(range(0, max_round + 1, max(1, max_round // 8))) - {0}):
        parts.append(f'<text x="{x(t):.1f}" y="{H-PAD+16}" text-anchor="middle">{t}</text>')
    for i, (label, rounds, acc) in enumerate(series):
        c = COLOURS[i % len(COLOURS)]
        pts = " ".join(f"{x(r):.1f},{y(max(a, lo)):.1f}" for r, a in zip(rounds, acc))
        parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{pts}"/>')
        parts.append(f'<text x="{W-PAD-150}" y="{PAD+16*i+12}" fill="{c}">{label}</text>')
    parts.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(parts))


if __name__ == "__main__":
    main()
