#!/usr/bin/env python3
"""The Flower anchor for the worked example (issue #16): Flower's simulation engine (Ray
backend) running the anchor config of the issue with PyTorch parties.

3 parties of 2,000 MNIST training images and 500 test images each (the split of
`pytorch_anchor.py example`), the CNN federate trains, 10 rounds of FedAvg with E=1, B=32,
SGD lr 0.05, no momentum; every party evaluates the global model on its own test images each
round. Prints the accuracy per round and the wall time. Measure the peak memory of the whole
process tree (Ray starts several processes) from outside, e.g. with `scripts/peak_tree_rss.py`
or by sampling `ps`.

Usage (after the torch install of `pytorch_anchor.py`):

    /tmp/torchvenv/bin/pip install "flwr[simulation]"      # Flower 1.42, Ray 2.55 when measured
    /tmp/torchvenv/bin/python scripts/flower_anchor.py --threads 2 --mnist ~/.cache/federate/mnist
"""

import argparse
import os
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_anchor import cnn, split_mnist  # noqa: E402  (the same model and split)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--mnist", default=os.path.expanduser("~/.cache/federate/mnist"))
    a = ap.parse_args()

    from flwr.client import ClientApp, NumPyClient
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    data = split_mnist(a.mnist)
    threads = a.threads

    def to_t(arr):
        return torch.from_numpy(arr.astype(np.float32) / 255.0).unsqueeze(1)

    class Party(NumPyClient):
        def __init__(self, k):
            torch.set_num_threads(threads)
            self.x, self.y, self.tx, self.ty = data[k]
            self.model = cnn()

        def set(self, params):
            keys = list(self.model.state_dict().keys())
            self.model.load_state_dict({k: torch.from_numpy(np.copy(v)) for k, v in zip(keys, params)})

        def get_parameters(self, config):
            return [v.detach().numpy() for v in self.model.state_dict().values()]

        def fit(self, params, config):
            self.set(params)
            opt = torch.optim.SGD(self.model.parameters(), lr=0.05)
            loss_fn = nn.CrossEntropyLoss()
            xs, ys = to_t(self.x), torch.from_numpy(self.y.astype(np.int64))
            order = torch.randperm(len(xs))
            for s in range(0, len(xs), 32):
                b = order[s:s + 32]
                opt.zero_grad(set_to_none=True)
                loss_fn(self.model(xs[b]), ys[b]).backward()
                opt.step()
            return self.get_parameters({}), len(xs), {}

        def evaluate(self, params, config):
            self.set(params)
            correct, loss, loss_fn = 0, 0.0, nn.CrossEntropyLoss(reduction="sum")
            with torch.no_grad():
                for s in range(0, len(self.tx), 32):
                    out = self.model(to_t(self.tx[s:s + 32]))
                    yy = torch.from_numpy(self.ty[s:s + 32].astype(np.int64))
                    loss += float(loss_fn(out, yy))
                    correct += int((out.argmax(1) == yy).sum())
            return loss / len(self.tx), len(self.tx), {"accuracy": correct / len(self.tx)}

    def client_fn(context: Context):
        return Party(int(context.node_config["partition-id"])).to_client()

    def weighted(metrics):
        n = sum(k for k, _ in metrics)
        return {"accuracy": sum(k * m["accuracy"] for k, m in metrics) / n}

    torch.manual_seed(42)
    init = [v.detach().numpy() for v in cnn().state_dict().values()]

    def server_fn(context: Context):
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=1.0,
            min_fit_clients=3,
            min_evaluate_clients=3,
            min_available_clients=3,
            initial_parameters=ndarrays_to_parameters(init),
            evaluate_metrics_aggregation_fn=weighted,
        )
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=a.rounds))

    start = time.perf_counter()
    run_simulation(
        server_app=ServerApp(server_fn=server_fn),
        client_app=ClientApp(client_fn=client_fn),
        num_supernodes=3,
        backend_config={"client_resources": {"num_cpus": threads, "num_gpus": 0.0}},
    )
    print(f"wall_s={time.perf_counter() - start:.1f}")


if __name__ == "__main__":
    main()
