"""Throughput of each feedback rule in the population trainer, next to fa's, measured side by side.

For every rule: run-examples/s of a population of P members of that rule (seeds 0..P-1, the default
784-256-256-10 tanh MLP, batch 64, logging off), and its ratio to fa's. fa and the rule alternate
within each repeat, so drift in the machine's speed hits both alike; medians of the repeats. so_
rules make two forward-backward passes per step after their warm-up (soap_warmup steps).

    python benchmarks/rules_throughput.py --data-root ../shared/data [--device cpu] [--pop 16] [--rules usf,dfa]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from soap.config import TrainConfig
from soap.data import load_dataset
from soap.devices import resolve_device
from soap.population import train_population
from soap.rules import RULES


def rate(data, method: str, pop: int, examples: int, device: torch.device) -> float:
    config = TrainConfig.from_dict(dict(
        dataset="mnist", methods=[method], lrs=[0.05], seeds=list(range(pop)), device=str(device),
        epochs=examples / len(data.train_y), log_every=10**9, eval_every=10**9))
    return train_population(config, data, progress=False).meta["run_examples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--pop", type=int, default=16, help="members per population")
    parser.add_argument("--examples", type=int, default=6_400, help="training examples per run and measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per figure (median reported)")
    parser.add_argument("--rules", default=",".join(RULES), help="comma-separated rules to measure")
    args = parser.parse_args()
    device = resolve_device(args.device)
    data = load_dataset("mnist", args.data_root, download=False).to(device)
    rate(data, "fa", args.pop, args.examples // 4, device)  # warm-up: allocator, threads, kernels
    print(f"device {device}, {torch.get_num_threads()} threads; P = {args.pop}, {args.examples} examples per "
          f"run; medians of {args.repeats}, fa measured beside each rule")
    print(f"{'rule':>18} {'run-examples/s':>15} {'fa':>12} {'rule / fa':>10}")
    for method in args.rules.split(","):
        pairs = [(rate(data, "fa", args.pop, args.examples, device), rate(data, method, args.pop, args.examples, device))
                 for _ in range(args.repeats)]
        fa, rule = statistics.median(f for f, _ in pairs), statistics.median(r for _, r in pairs)
        ratio = statistics.median(r / f for f, r in pairs)
        print(f"{method:>18} {rule:>15,.0f} {fa:>12,.0f} {ratio:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
