#!/usr/bin/env python3
"""The PyTorch anchor for `federate bench train` and the worked example (issue #16).

Two measurements of the same CNN federate trains (McMahan et al. 2017: conv 5x5x32 'same',
ReLU, max-pool 2, conv 5x5x64 'same', ReLU, max-pool 2, linear 3136->512, ReLU, linear
512->10; 1,663,370 parameters), on CPU with a fixed thread count:

  train    training samples/s at each batch size (plain SGD steps on fixed random inputs,
           as `federate bench train` measures), for `--seconds` each;
  example  the anchor config of the issue as a plain PyTorch loop: 3 parties of 2,000 MNIST
           training images, 10 rounds of FedAvg with E=1, B=32, SGD lr 0.05, no momentum,
           each party evaluated on its own 500 test images; prints the wall time, the final
           accuracy and the peak RSS (ru_maxrss).

Usage (PyPI's default torch wheel runs on CPU; it pulls ~5 GB of CUDA libraries):

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch numpy
    /tmp/torchvenv/bin/python scripts/pytorch_anchor.py train --threads 2
    /tmp/torchvenv/bin/python scripts/pytorch_anchor.py example --threads 2 \
        --mnist ~/.cache/federate/mnist

Run it next to `federate bench train --threads 2` on the same machine, one after the other:
only the ratio between the two is comparable across machines.
"""

import argparse
import gzip
import os
import resource
import struct
import time

import numpy as np
import torch
from torch import nn


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3136, 512),
        nn.ReLU(),
        nn.Linear(512, 10),
    )


def bench_train(batches, seconds):
    torch.manual_seed(0)
    model = cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} params="
          f"{sum(p.numel() for p in model.parameters())}")
    for b in batches:
        x = torch.rand(b, 1, 28, 28)
        y = torch.randint(0, 10, (b,))

        def step():
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()

        for _ in range(5):
            step()
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            step()
            steps += 1
        dt = time.perf_counter() - start
        print(f"batch={b} samples_per_s={steps * b / dt:.0f} ms_per_step={dt / steps * 1e3:.2f}")


def read_idx(path):
    for p in (path, path + ".gz"):
        if os.path.exists(p):
            raw = open(p, "rb").read()
            if p.endswith(".gz"):
                raw = gzip.decompress(raw)
            break
    else:
        raise SystemExit(f"{path}: not found (run `federate data fetch mnist` first)")
    dims = raw[3]
    shape = struct.unpack(">" + "I" * dims, raw[4:4 + 4 * dims])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def split_mnist(mnist, parties=3, train_per=2000, test_per=500):
    """Each party's (train images, labels, test images, labels): disjoint random draws of
    MNIST's training and test sets (seed 42), the sizes of the worked example."""
    x = read_idx(os.path.join(mnist, "train-images-idx3-ubyte"))
    y = read_idx(os.path.join(mnist, "train-labels-idx1-ubyte"))
    tx = read_idx(os.path.join(mnist, "t10k-images-idx3-ubyte"))
    ty = read_idx(os.path.join(mnist, "t10k-labels-idx1-ubyte"))
    rng = np.random.default_rng(42)
    tr, te = rng.permutation(len(x)), rng.permutation(len(tx))
    data = []
    for k in range(parties):
        i = tr[k * train_per:(k + 1) * train_per]
        j = te[k * test_per:(k + 1) * test_per]
        data.append((x[i], y[i], tx[j], ty[j]))
    return data


def example(mnist, rounds, parties, train_per, test_per):
    torch.manual_seed(42)
    data = split_mnist(mnist, parties, train_per, test_per)
    to_t = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)
    glob = cnn()
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for r in range(1, rounds + 1):
        states, counts = [], []
        for (px, py, _, _) in data:
            local = cnn()
            local.load_state_dict(glob.state_dict())
            opt = torch.optim.SGD(local.parameters(), lr=0.05)
            order = torch.randperm(len(px))
            xs, ys = to_t(px), torch.from_numpy(py.astype(np.int64))
            for s in range(0, len(px), 32):
                b = order[s:s + 32]
                opt.zero_grad(set_to_none=True)
                loss_fn(local(xs[b]), ys[b]).backward()
                opt.step()
            states.append(local.state_dict())
            counts.append(len(px))
        n = sum(counts)
        glob.load_state_dict({k: sum(st[k] * (c / n) for st, c in zip(states, counts)) for k in states[0]})
        correct = total = 0
        with torch.no_grad():
            for (_, _, qx, qy) in data:
                for s in range(0, len(qx), 32):
                    pred = glob(to_t(qx[s:s + 32])).argmax(1).numpy()
                    correct += int((pred == qy[s:s + 32]).sum())
                    total += len(pred)
        print(f"round {r}/{rounds} accuracy {correct / total * 100:.2f} % "
              f"({time.perf_counter() - start:.1f} s)")
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"wall_s={wall:.1f} accuracy={correct / total:.4f} peak_rss_mb={peak:.0f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["train", "example"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="10,32,64")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--mnist", default=os.path.expanduser("~/.cache/federate/mnist"))
    ap.add_argument("--rounds", type=int, default=10)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.what == "train":
        bench_train([int(b) for b in a.batches.split(",")], a.seconds)
    else:
        example(a.mnist, a.rounds, 3, 2000, 500)


if __name__ == "__main__":
    main()
