"""Throughput of the population trainer against a conventional training loop, measured side by side.

Prints run-examples/s of the population trainer for P = 1, 4, 16, 64 (default 784-256-256-10 tanh MLP,
batch 64, `fa`), of a conventional loop (torchvision Dataset + DataLoader + nn.Module with the FA
autograd Function, one run at a time), their ratio, the fraction of this machine's measured float32
matmul FLOP/s that training reaches, with logging at its default intervals and with almost none.

    python benchmarks/throughput.py --data-root ../shared/data [--device cpu] [--pops 1,4,16,64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from soap.config import TrainConfig
from soap.data import load_dataset
from soap.devices import resolve_device
from soap.nn import mlp
from soap.population import train_population

SIZES = [784, 256, 256, 10]


def flops_per_example(sizes: list[int]) -> int:
    """Matmul FLOPs of one SGD example: forward, grad_W of every layer, grad_x of all but the first."""
    layer_flops = [2 * a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return 2 * sum(layer_flops) + sum(layer_flops[1:])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def population_rate(data, pop: int, examples: int, device: torch.device, logging: bool = True) -> float:
    quiet = {} if logging else {"log_every": 10**9, "eval_every": 10**9}
    config = TrainConfig.from_dict(dict(
        dataset="mnist", methods=["fa"], lrs=[0.05], seeds=list(range(pop)), device=str(device),
        epochs=examples / len(data.train_y), **quiet))
    return train_population(config, data, progress=False).meta["run_examples_per_s"]


def conventional_rate(data_root: str, examples: int, device: torch.device) -> float:
    """One run, the way most FA code trains: per-sample transforms, a DataLoader, an nn.Module."""
    import torchvision
    from torchvision import transforms

    dataset = torchvision.datasets.MNIST(data_root, train=True, download=False, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True, drop_last=True)
    model = mlp(SIZES, "fa", seed=0).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    steps, done = examples // 64, 0
    start = time.perf_counter()
    for images, labels in loader:
        images, labels = images.view(-1, 784).to(device), labels.to(device)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        done += 1
        if done == steps:
            break
    sync(device)
    return steps * 64 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--examples", type=int, default=25_600, help="training examples per run and measurement")
    parser.add_argument("--pops", default="1,4,16,64", help="population sizes to measure")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per figure (median reported)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    data = load_dataset("mnist", args.data_root, download=False)
    per_example = flops_per_example(SIZES)
    conventional = statistics.median(
        conventional_rate(args.data_root, args.examples // 4, device) for _ in range(args.repeats))
    print(f"device {device}, {torch.get_num_threads()} threads; medians of {args.repeats}. The float32 matmul "
          f"peak (2048x2048) is measured just before and just after each training measurement, and each "
          f"fraction is taken against the mean of those two, so drift in the machine's speed cancels.")
    print(f"conventional loop (DataLoader + nn.Module, fa): {conventional:,.0f} examples/s")
    print(f"{'P':>4} {'logging':>8} {'run-examples/s':>15} {'vs conventional':>16} {'of matmul peak':>15} "
          f"{'peak GFLOP/s':>13}")
    for pop in map(int, args.pops.split(",")):
        # logging on and off alternate, so drift hits both alike
        measured, peak_before = {True: [], False: []}, matmul_flops(device)
        for _ in range(args.repeats):
            for logging in (True, False):
                rate, peak_after = population_rate(data, pop, args.examples, device, logging), matmul_flops(device)
                measured[logging].append((rate, (peak_before + peak_after) / 2))
                peak_before = peak_after
        for logging, pairs in measured.items():
            rate = statistics.median(r for r, _ in pairs)
            fraction = statistics.median(r * per_example / p for r, p in pairs)
            peak = statistics.median(p for _, p in pairs)
            print(f"{pop:>4} {'default' if logging else 'off':>8} {rate:>15,.0f} {rate / conventional:>15.1f}x "
                  f"{fraction:>14.0%} {peak / 1e9:>13.1f}")
        logged, quiet = (statistics.median(r for r, _ in measured[flag]) for flag in (True, False))
        print(f"{'':>4} logging at default intervals: {1 - logged / quiet:.1%} of training time")


if __name__ == "__main__":
    main()
