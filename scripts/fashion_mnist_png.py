#!/usr/bin/env python3
"""Writes Fashion-MNIST (or MNIST) as PNG image folders, torchvision's ImageFolder layout:

    OUT/train/<class>/<index>.png   OUT/test/<class>/<index>.png

from the verified IDX files in federate's cache (fill it with `federate data fetch
fashion-mnist`). Standard library only: the PNGs are 8-bit grey, written with zlib, so their
pixels are exactly the IDX file's. Class folders are named after the dataset's classes; the
example config lists them in label order (`[data.images] classes`), so labels match the IDX
ones.

    python3 scripts/fashion_mnist_png.py OUT [--dataset fashion-mnist] [--limit-train N] [--limit-test N]
"""

import argparse
import gzip
import os
import struct
import zlib
from pathlib import Path

CLASSES = {
    "fashion-mnist": ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"],
    "mnist": [str(d) for d in range(10)],
}


def read_idx(path):
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    zero, kind, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or kind != 0x08:
        raise SystemExit(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    return shape, data[4 + 4 * dims:]


def png(path, width, height, pixels):
    rows = b"".join(b"\x00" + pixels[r * width:(r + 1) * width] for r in range(height))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    head = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(rows, 6))
                     + chunk(b"IEND", b""))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--dataset", default="fashion-mnist", choices=sorted(CLASSES))
    ap.add_argument("--cache", default=os.environ.get("FEDERATE_CACHE_DIR")
                    or str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "federate"))
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--limit-test", type=int, default=None)
    a = ap.parse_args()
    src = Path(a.cache) / a.dataset
    names = CLASSES[a.dataset]
    for split, prefix, limit in [("train", "train", a.limit_train), ("test", "t10k", a.limit_test)]:
        (n, h, w), pixels = read_idx(src / f"{prefix}-images-idx3-ubyte")
        (m,), labels = read_idx(src / f"{prefix}-labels-idx1-ubyte")
        assert n == m, "images and labels differ in count"
        n = min(n, limit) if limit is not None else n
        for c in names:
            (Path(a.out) / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            png(Path(a.out) / split / names[labels[i]] / f"{i:05d}.png", w, h, pixels[i * h * w:(i + 1) * h * w])
        print(f"{split}: {n} images in {Path(a.out) / split}")


if __name__ == "__main__":
    main()
