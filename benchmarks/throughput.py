"""Throughput of the population trainer against a conventional training loop, measured side by side.

Prints run-examples/s of the population trainer (default 784-256-256-10 tanh MLP, batch 64, `fa`) for
P = 1, 4, 16, 64 in two shapes:
  independent   every member has its own seed, hence its own data order (P orders);
  shared order  every member has one seed and its own lr, as in a grid job (one order, shared GEMMs);
with logging at its default intervals and with almost none; of a conventional loop (torchvision
Dataset + DataLoader + nn.Module with the FA autograd Function, one run at a time); and the fraction
of two references that training reaches:
  2048^2 peak   float32 FLOP/s of one 2048 x 2048 matmul;
  shape peak    FLOP/s of the exact GEMMs one step of that population runs (same shapes, same layer
                functions from soap.nn), timed alone: what the step would reach with no other work.
Every training measurement is bracketed by both references, measured just before and just after it,
so drift in a shared machine's speed cancels. With --profile, a breakdown of where a step's time goes.

`--architecture lenet5` measures PopulationLeNet (soap.models.lenet5's layout, relu, `fa`) at P = 1, 16,
64 the same way, against the same conventional loop of lenet5 as an nn.Module (one model at a time: P
models cost P loops); its shape peak times the step's own convolutions and GEMMs (the calls and
layouts of soap.population.conv_model) alone at the step's shapes.

On a machine other jobs share, wall time measures the neighbours as much as the code: `--threads 1
--clock cpu` times everything by the process's CPU time instead, which other processes do not inflate
(one thread, so no thread spins waiting for another), and gives per-core rates.

    python benchmarks/throughput.py --data-root ../shared/data [--device cpu] [--pops 1,4,16,64]
                                    [--repeats 3] [--profile] [--capture] [--threads N] [--clock cpu]
                                    [--architecture mlp|lenet5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F

from soap.config import OPTIMIZERS, TrainConfig
from soap.data import load_dataset
from soap.devices import resolve_device
from soap.models import lenet5, lenet_weight_shapes, mlp, pad_to_32
from soap.nn import feedback_grad_input, linear_forward, sgd_update_, weight_grad
from soap.population import train_population

SIZES = [784, 256, 256, 10]
BATCH = 64
SHAPES = ("independent", "shared order")


ARCHITECTURES = ("mlp", "lenet5")
DEFAULT_POPS = {"mlp": "1,4,16,64", "lenet5": "1,16,64"}
# Output positions of each LeNet-5 layer's kernel on a 32x32 input: 5x5 valid convolutions, 2x2 pools
# (32 -> 28, 14 -> 10, 5 -> 1), then dense layers (one position).
LENET_POSITIONS = (28 * 28, 10 * 10, 1, 1, 1)


def sgd_flops(layer_flops: list[int]) -> int:
    """FLOPs of one SGD example from each layer's forward FLOPs: forward, grad_W of every layer (as
    many), grad_x of all but the first (as many)."""
    return 2 * sum(layer_flops) + sum(layer_flops[1:])


def flops_per_example(sizes: list[int]) -> int:
    """Matmul FLOPs of one SGD example of the MLP of layer widths `sizes`."""
    return sgd_flops([2 * a * b for a, b in zip(sizes[:-1], sizes[1:])])


def lenet_flops_per_example() -> int:
    """Convolution and matmul FLOPs of one SGD example of LeNet-5: 2 x kernel size x output positions."""
    return sgd_flops([2 * int(np.prod(shape)) * n for shape, n in zip(lenet_weight_shapes(), LENET_POSITIONS)])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCK["wall"]  # set by --clock


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of fn() over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = clock()
        fn()
        sync(device)
        times.append(clock() - start)
    return statistics.median(times)


def matmul_flops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n**3 / timed(lambda: a @ b, device, repeats)


def step_gemm_flops(pop: int, shape: str, device: torch.device, repeats: int = 5) -> float:
    """FLOP/s of the GEMMs of one training step, run alone on random operands of the step's shapes.

    The same calls as the trainer's: linear_forward for each layer's forward (the first layer's input
    one batch per data order), feedback_grad_input below the first layer, sgd_update_ for each
    layer's fused weight update; biases left out, as they are not GEMM work.
    """
    groups = pop if shape == "independent" else 1
    weights = [torch.randn(pop, out, inp, device=device) * 1e-3 for inp, out in zip(SIZES[:-1], SIZES[1:])]
    inputs = [torch.randn(groups, BATCH, SIZES[0], device=device),
              *(torch.randn(pop, BATCH, width, device=device) for width in SIZES[1:-1])]
    errors = [torch.randn(pop, BATCH, out, device=device) * 1e-3 for out in SIZES[1:]]

    def step() -> None:
        for layer, (w, x, delta) in enumerate(zip(weights, inputs, errors)):
            linear_forward(x, w, None)
            if layer:
                feedback_grad_input(delta, w)
            sgd_update_(w, None, delta, x)

    return pop * BATCH * flops_per_example(SIZES) / timed(step, device, repeats)


def step_conv_flops(pop: int, shape: str, device: torch.device, repeats: int = 5) -> float:
    """FLOP/s of the convolutions and GEMMs of one PopulationLeNet step, run alone on random operands
    of the step's shapes, with the trainer's calls: the first conv as one GEMM per data order over its
    unfolded input (members side by side) and its weight gradient against those columns; the second as
    a grouped conv2d, members as groups, with conv2d_input and conv2d_weight; the third conv and the fc
    layers as stacked dense layers (linear_forward, feedback_grad_input, weight_grad). Biases, pools
    and activations left out, as they are not conv or GEMM work."""
    groups = pop if shape == "independent" else 1
    shapes = lenet_weight_shapes()
    cols = torch.randn(groups, int(np.prod(shapes[0][1:])), BATCH * LENET_POSITIONS[0], device=device)
    w1 = torch.randn(groups, pop // groups * shapes[0][0], cols.shape[1], device=device) * 1e-3
    d1 = torch.randn(groups, w1.shape[1], cols.shape[2], device=device) * 1e-3
    maps = torch.randn(BATCH, pop * shapes[1][1], 14, 14, device=device)
    w2 = torch.randn(pop * shapes[1][0], *shapes[1][1:], device=device) * 1e-3
    d2 = torch.randn(BATCH, pop * shapes[1][0], 10, 10, device=device) * 1e-3
    dense = [(int(np.prod(s[1:])), s[0]) for s in shapes[2:]]  # (in, out): 400-120, 120-84, 84-10
    weights = [torch.randn(pop, out, inp, device=device) * 1e-3 for inp, out in dense]
    inputs = [torch.randn(pop, BATCH, inp, device=device) for inp, _ in dense]
    errors = [torch.randn(pop, BATCH, out, device=device) * 1e-3 for _, out in dense]

    def step() -> None:
        torch.bmm(w1, cols)
        torch.bmm(d1, cols.mT)
        F.conv2d(maps, w2, groups=pop)
        torch.nn.grad.conv2d_input(maps.shape, w2, d2, groups=pop)
        torch.nn.grad.conv2d_weight(maps, w2.shape, d2, groups=pop)
        for w, x, delta in zip(weights, inputs, errors):
            linear_forward(x, w, None)
            feedback_grad_input(delta, w)
            weight_grad(delta, x)

    return pop * BATCH * lenet_flops_per_example() / timed(step, device, repeats)


def population_config(data, pop: int, shape: str, examples: int, device: torch.device, logging: bool,
                      optimizer: str = "sgd", architecture: str = "mlp") -> TrainConfig:
    quiet = {} if logging else {"log_every": 10**9, "eval_every": 10**9}
    members = (dict(lrs=[0.05], seeds=list(range(pop))) if shape == "independent"
               else dict(lrs=np.geomspace(0.01, 0.1, pop).tolist(), seeds=[0]))
    return TrainConfig.from_dict(dict(dataset="mnist", methods=["fa"], device=str(device), optimizer=optimizer,
                                      epochs=examples / len(data.train_y), architecture=architecture,
                                      **members, **quiet))


def population_rate(data, pop: int, shape: str, examples: int, device: torch.device, logging: bool = True,
                    capture: bool = False, optimizer: str = "sgd", architecture: str = "mlp") -> float:
    config = population_config(data, pop, shape, examples, device, logging, optimizer, architecture)
    meta = train_population(config, data, progress=False, capture=capture).meta
    return meta["run_examples_per_s"] if clock is CLOCK["wall"] else meta["run_examples_per_s"] * (
        meta["train_loop_s"] / meta["train_loop_cpu_s"])


def conventional_rate(data_root: str, examples: int, device: torch.device, architecture: str = "mlp") -> float:
    """One run, the way most FA code trains: per-sample transforms, a DataLoader, an nn.Module (the
    MLP, or lenet5 on the batch zero-padded to 32x32 as PopulationLeNet pads it)."""
    import torchvision
    from torchvision import transforms

    dataset = torchvision.datasets.MNIST(data_root, train=True, download=False, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True)
    if architecture == "mlp":
        model, prepare = mlp(SIZES, "fa", seed=0).to(device), lambda images: images.view(-1, 784)
    else:
        model, prepare = lenet5("fa", seed=0).to(device), pad_to_32
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    steps, done = examples // BATCH, 0
    start = clock()
    for images, labels in loader:
        images, labels = prepare(images.to(device)), labels.to(device)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        done += 1
        if done == steps:
            break
    sync(device)
    return steps * BATCH / (clock() - start)


# torch operator -> part of the step, for the profile
PARTS = {
    "GEMM": ("aten::bmm", "aten::baddbmm", "aten::baddbmm_", "aten::mm", "aten::addmm", "aten::addmm_"),
    "batch gather": ("aten::index_select",),
    "activation (tanh forward and backward)": ("aten::sigmoid", "aten::tanh", "aten::tanh_", "aten::tanh_backward"),
    # baddbmm copies the broadcast bias into its output before the GEMM; shared orders reshape operands
    "copies (bias into GEMM outputs, shared-order operand layout)": ("aten::copy_", "aten::clone"),
    "loss and output error": ("aten::_log_softmax", "aten::gather", "aten::exp_", "aten::scatter_add_",
                              "aten::mean", "aten::full", "aten::fill_"),
    "bias sums": ("aten::sum",),
}


def profile_breakdown(data, pop: int, shape: str, examples: int, device: torch.device) -> dict[str, float]:
    """Share of a quiet training run's operator time per part of the step (self time, all threads)."""
    from torch.profiler import ProfilerActivity, profile

    config = population_config(data, pop, shape, examples, device, logging=False)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_population(config, data, progress=False)
    shares, total = defaultdict(float), 0.0
    for event in prof.key_averages():
        if not event.key.startswith("aten::"):
            continue
        total += event.self_cpu_time_total
        part = next((name for name, ops in PARTS.items() if event.key in ops), "other elementwise and bookkeeping")
        shares[part] += event.self_cpu_time_total
    return {part: time_ / total for part, time_ in sorted(shares.items(), key=lambda kv: -kv[1])}


def measure_populations(args, data, device: torch.device, conventional: float) -> None:
    """The table of population rates against `conventional` and both references, per P and shape."""
    lenet = args.architecture == "lenet5"
    per_example = lenet_flops_per_example() if lenet else flops_per_example(SIZES)
    shape_flops = step_conv_flops if lenet else step_gemm_flops
    header = (f"{'shape':>12} {'P':>4} {'logging':>8} {'run-examples/s':>15} {'vs conv.':>9} {'of 2048² peak':>14} "
              f"{'of shape peak':>14} {'2048² GFLOP/s':>14} {'shape GFLOP/s':>14}")
    print(header)
    quiet_rates = {}
    for pop in map(int, args.pops.split(",")):
        shapes = SHAPES[:1] if pop == 1 else SHAPES  # one member: one data order either way
        # shapes and logging on/off alternate within a repeat, so drift hits all alike
        measured = defaultdict(list)
        references = {shape: (matmul_flops(device), shape_flops(pop, shape, device)) for shape in shapes}
        for _ in range(args.repeats):
            for shape in shapes:
                for logging in (True, False):
                    rate = population_rate(data, pop, shape, args.examples, device, logging, args.capture,
                                           architecture=args.architecture)
                    after = matmul_flops(device), shape_flops(pop, shape, device)
                    peak, shape_peak = ((b + a) / 2 for b, a in zip(references[shape], after))
                    measured[shape, logging].append((rate, peak, shape_peak))
                    references[shape] = after
        for (shape, logging), triples in measured.items():
            rate = statistics.median(r for r, _, _ in triples)
            of_peak = statistics.median(r * per_example / p for r, p, _ in triples)
            of_shape = statistics.median(r * per_example / s for r, _, s in triples)
            peak = statistics.median(p for _, p, _ in triples)
            shape_peak = statistics.median(s for _, _, s in triples)
            print(f"{shape:>12} {pop:>4} {'default' if logging else 'off':>8} {rate:>15,.0f} "
                  f"{rate / conventional:>8.1f}x {of_peak:>14.0%} {of_shape:>14.0%} {peak / 1e9:>14.1f} "
                  f"{shape_peak / 1e9:>14.1f}")
        for shape in shapes:
            logged, quiet = (statistics.median(r for r, _, _ in measured[shape, flag]) for flag in (True, False))
            quiet_rates[shape, pop] = [r for r, _, _ in measured[shape, False]]
            print(f"{'':>17} {shape}: logging at default intervals costs {1 - logged / quiet:.1%} of training time")
        if len(shapes) == 2:
            ratios = [s / i for s, i in zip(quiet_rates["shared order", pop], quiet_rates["independent", pop])]
            print(f"{'':>17} shared order / independent, paired by repeat: median {statistics.median(ratios):.2f}x "
                  f"(range {min(ratios):.2f}-{max(ratios):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--architecture", choices=ARCHITECTURES, default="mlp", help="the network trained")
    parser.add_argument("--examples", type=int, default=25_600, help="training examples per run and measurement")
    parser.add_argument("--pops", help="population sizes to measure (default: mlp 1,4,16,64; lenet5 1,16,64)")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per figure (median reported)")
    parser.add_argument("--profile", action="store_true", help="also break a P = 16 step down by operator (mlp)")
    parser.add_argument("--optimizers", action="store_true",
                        help="also each optimizer's cost against sgd's (P = 16, independent, no logging)")
    parser.add_argument("--capture", action="store_true", help="replay steps from a CUDA graph (CUDA only)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--clock", choices=sorted(CLOCK), default="wall",
                        help="time by wall clock, or by this process's CPU time (steadier on a shared machine)")
    args = parser.parse_args()
    if args.profile and args.architecture != "mlp":
        parser.error("--profile breaks down the MLP's step (its operators are the MLP's); use --architecture mlp")
    args.pops = args.pops or DEFAULT_POPS[args.architecture]
    global clock
    clock = CLOCK[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = load_dataset("mnist", args.data_root, download=False)
    conventional = statistics.median(conventional_rate(args.data_root, args.examples // 4, device, args.architecture)
                                     for _ in range(args.repeats))
    print(f"device {device}, {torch.get_num_threads()} threads, {args.clock} clock, capture {args.capture}; medians of "
          f"{args.repeats}. Both references are measured just before and just after each training "
          f"measurement, and each fraction is taken against the mean of the two.")
    network = "nn.Module" if args.architecture == "mlp" else "lenet5 nn.Module, one model at a time"
    print(f"conventional loop (DataLoader + {network}, fa): {conventional:,.0f} examples/s")
    measure_populations(args, data, device, conventional)
    if args.optimizers:
        print("\noptimizers, P = 16, independent, no logging (each repeat runs every optimizer in turn):")
        rates = defaultdict(list)
        for _ in range(args.repeats):
            for optimizer in OPTIMIZERS:
                rates[optimizer].append(population_rate(data, 16, "independent", args.examples, device, False,
                                                        args.capture, optimizer, args.architecture))
        for optimizer, measured in rates.items():
            ratios = [r / s for r, s in zip(measured, rates["sgd"])]
            print(f"  {optimizer:>9} {statistics.median(measured):>10,.0f} run-examples/s, "
                  f"{statistics.median(ratios):.2f}x sgd's (paired by repeat)")
    if args.profile:
        for shape in SHAPES:
            print(f"\nwhere the time of a quiet P = 16 run goes, {shape} (operator self time):")
            for part, share in profile_breakdown(data, 16, shape, args.examples, device).items():
                print(f"  {share:>6.1%}  {part}")


if __name__ == "__main__":
    main()
