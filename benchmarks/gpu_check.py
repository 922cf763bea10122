"""The GPU path checked on one GPU in one command, as a JSON report (issue 21).

    python benchmarks/gpu_check.py --out gpu_check.json [--budget-s 480]

Sections (each a key of the report):
  versions            soap, torch, CUDA and cuDNN versions, the device, the precision flags
  rules_cuda_vs_cpu   every rule trained on CUDA against the same run on the CPU (tolerance stated)
  mixed_vs_alone      a population of every rule against each member trained alone, on the device
  captured            captured against uncaptured training for every optimizer: Adam's step replayed
                      many times must train as stepped each time (bitwise on one device)
  repeat              the same config trained twice: bitwise equal, or the measured spread
  syncs               host-device syncs inside the loop's steps (torch.cuda.set_sync_debug_mode), and
                      over the whole loop with its log points
  launches            kernel launches, graph launches and copies per step (torch.profiler)
  throughput          run-examples/s and achieved TFLOP/s at P = 40, 256, 1024, 4096, shared and
                      independent orders, captured and not, with the device's fp32 and TF32 matmul peak
                      measured in the same run, and the peak memory per member
  lease               two leases on the device's UUID serialise
  population_tests    tests/test_population_*.py run on the device (SOAP_TEST_DEVICE, tests/helpers.py)

With no CUDA device the CPU-runnable sections run at small sizes (the CPU stands in for the device) and
every other section reads {"status": "unmeasured: no CUDA device"}; tests/test_gpu_check.py runs it so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from soap.config import OPTIMIZERS, TrainConfig
from soap.data import synthetic_dataset
from soap.devices import device_record
from soap.tables import write_text
from soap.gpu_lease import LeaseError, gpu_lease
from soap.population import loop, records, train_population
from soap.rules import RULES, get_rule

from throughput import flops_per_example

REPO = Path(__file__).resolve().parents[1]
UNMEASURED = {"status": "unmeasured: no CUDA device"}
# the rules' population (tests/helpers.py's RULES_BASE): short, with the settings that make each rule act
SMALL = dict(dataset="synthetic", hidden=[16, 16], batch_size=48, epochs=1.0, refresh_period=96, log_every=96,
             eval_every=480, eval_subset=128, kp_decay=0.05, soap_eta=20.0, soap_curvature_bias=1e-6,
             soap_warmup=3, capture=False)
SMALL_DATA = dict(n_train=960, n_val=256, n_test=256, dim=12, num_classes=3, seed=5)
# throughput: MNIST's shapes (784-256-256-10), synthetic inputs, 40 steps of 64
WIDE = [784, 256, 256, 10]
WIDE_DATA = dict(n_train=64 * 40, n_val=512, n_test=64, dim=784, num_classes=10, seed=0)
# CPU mode (no CUDA device): a few rules and steps, so the script's own test runs in seconds
CPU_RULES = ["bp", "fa", "brsf", "kolen_pollack", "so_fa"]
CPU_EPOCHS = 0.25
# CUDA against CPU: fp32 products in another order and CUDA's tanh; the population tests' tolerance
RULE_RTOL = 1e-4
# Adam's lr for the optimizer checks, the others' from their usual scale
OPTIMIZER_LR = {"sgd": 0.2, "momentum": 0.05, "adam": 0.005, "signsgd": 0.005}


def train(values: dict, data, **options):
    return train_population(TrainConfig.from_dict(values), data, progress=False, **options)


def largest_difference(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """Largest relative difference over the numeric columns of two tables of one shape (NaN = NaN)."""
    numeric = a.select_dtypes("number").columns
    x, y = a[numeric].to_numpy(float), b[numeric].to_numpy(float)
    both = np.isnan(x) & np.isnan(y)
    if (np.isnan(x) != np.isnan(y)).any():
        return math.inf
    scale = np.maximum(np.abs(x), np.abs(y))
    return float(np.max(np.where(both | (scale == 0), 0.0, np.abs(x - y) / np.where(scale == 0, 1, scale)),
                        initial=0.0))


def identical(a, b) -> bool:
    try:
        pd.testing.assert_frame_equal(a, b, check_exact=True)
        return True
    except AssertionError:
        return False


def versions(device: torch.device) -> dict:
    out = {**records.versions(), "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
           **device_record(device)}
    if device.type == "cuda":
        out["device_uuid"] = str(torch.cuda.get_device_properties(device).uuid)
    return out


def rules(device: torch.device) -> list[str]:
    return list(RULES) if device.type == "cuda" else CPU_RULES


def epochs(device: torch.device, cuda_epochs: float) -> float:
    return cuda_epochs if device.type == "cuda" else CPU_EPOCHS


def rule_members(device: torch.device, seeds=(0, 1)) -> list[dict]:
    return [{"method": m, "lr": 0.2, "seed": s} for m in rules(device) for s in seeds]


def rules_cuda_vs_cpu(device: torch.device) -> dict:
    if device.type != "cuda":
        return UNMEASURED
    data = synthetic_dataset(**SMALL_DATA)
    values = {**SMALL, "members": rule_members(device)}
    cpu, cuda = train({**values, "device": "cpu"}, data), train({**values, "device": str(device)}, data)
    per_rule = {}
    for method in RULES:
        rows = cpu.runs["method"] == method
        per_rule[method] = largest_difference(cpu.runs[rows].reset_index(drop=True),
                                              cuda.runs[rows].reset_index(drop=True))
    return {"tolerance_rel": RULE_RTOL, "largest_rel_difference": per_rule,
            "curves_rel_difference": largest_difference(cpu.curves, cuda.curves),
            "passed": all(d <= RULE_RTOL for d in per_rule.values())}


def mixed_vs_alone(device: torch.device) -> dict:
    data = synthetic_dataset(**SMALL_DATA)
    members = [{"method": m, "lr": [0.3, 0.1][i % 2], "seed": i % 3} for i, m in enumerate(rules(device))]
    values = {**SMALL, "device": str(device), "epochs": epochs(device, SMALL["epochs"])}
    crowd = train({**values, "members": members}, data).runs
    differences = {}
    for member in members:
        alone = train({**values, "members": [member]}, data).runs
        differences[member["method"]] = largest_difference(crowd.iloc[[len(differences)]].reset_index(drop=True),
                                                           alone)
    return {"device": str(device), "tolerance_rel": RULE_RTOL, "largest_rel_difference": differences,
            "passed": all(d <= RULE_RTOL for d in differences.values())}


def captured(device: torch.device) -> dict:
    """Every capturable rule, two seeds, every optimizer; many steps, so Adam's step is replayed ~100 times."""
    data = synthetic_dataset(**SMALL_DATA)
    capturable = [m for m in rules(device) if not get_rule(m).second_order]
    length = epochs(device, 5.0)
    out = {"device": str(device), "steps": int(length * SMALL_DATA["n_train"]) // SMALL["batch_size"]}
    for optimizer in OPTIMIZERS:
        members = [{"method": m, "lr": OPTIMIZER_LR[optimizer], "seed": s} for m in capturable for s in (0, 1)]
        values = {**SMALL, "members": members, "device": str(device), "optimizer": optimizer, "epochs": length}
        plain, graph = train(values, data, capture=False), train(values, data, capture=True)
        out[optimizer] = {"bitwise_equal": identical(plain.runs, graph.runs) and identical(plain.curves, graph.curves),
                          "largest_rel_difference": largest_difference(plain.runs, graph.runs)}
    return out


def repeat(device: torch.device) -> dict:
    data = synthetic_dataset(**SMALL_DATA)
    values = {**SMALL, "members": rule_members(device), "device": str(device),
              "epochs": epochs(device, SMALL["epochs"])}
    first, second = train(values, data), train(values, data)
    return {"device": str(device), "bitwise_equal": identical(first.runs, second.runs)
            and identical(first.curves, second.curves),
            "largest_rel_difference": largest_difference(first.curves, second.curves)}


def syncs(device: torch.device) -> dict:
    """Syncs inside the steps (StepGraph's call and the refresh after it, the first call's capture
    aside) must be none; over the whole run, each log point reads which members diverged (one) and
    each eval point its row (one), besides the setup and the final evaluation."""
    if device.type != "cuda":
        return UNMEASURED
    data = synthetic_dataset(**WIDE_DATA)
    calls: list[list[str]] = []  # the sync warnings of each step call and each refresh
    original_graph, original_model = loop.StepGraph, loop.population_model

    def counted(call):
        def run(*args, **kwargs):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    return call(*args, **kwargs)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
                    calls.append([str(w.message)[:200] for w in caught if "synchroniz" in str(w.message)])
        return run

    class CountedGraph(original_graph):
        __call__ = counted(original_graph.__call__)

    def counted_model(*args, **kwargs):
        model = original_model(*args, **kwargs)
        model.refresh = counted(model.refresh)
        return model

    values = dict(dataset="synthetic", methods=["bp", "fa", "sign", "brsf"], lrs=[0.05], seeds=[0, 1],
                  device=str(device), epochs=1.0, refresh_period=640, capture=True)
    loop.StepGraph, loop.population_model = CountedGraph, counted_model
    try:
        result = train(values, data)
    finally:
        loop.StepGraph, loop.population_model = original_graph, original_model
    in_steps = [message for call in calls[1:] for message in call]  # calls[0]: the capture
    steps = WIDE_DATA["n_train"] // 64
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train(values, data)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    whole = sum("synchroniz" in str(w.message) for w in caught)
    config = TrainConfig.from_dict(values)
    return {"steps": steps, "syncs_in_steps": len(in_steps), "first_in_step": in_steps[:3],
            "syncs_whole_run": whole, "log_points": steps * 64 // config.log_every,
            "members": len(result.runs), "passed": not in_steps}


def launches(device: torch.device) -> dict:
    if device.type != "cuda":
        return UNMEASURED
    from torch.profiler import ProfilerActivity, profile

    data = synthetic_dataset(**WIDE_DATA)
    values = dict(dataset="synthetic", methods=["fa"], lrs=[0.05], seeds=list(range(40)), device=str(device),
                  epochs=1.0, log_every=10**9, eval_every=10**9)
    steps = WIDE_DATA["n_train"] // 64
    out = {"steps": steps, "note": "whole run (setup and final evaluation included) divided by its steps"}
    for capture in (False, True):
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            train(values, data, capture=capture)
        counts = {e.key: e.count for e in prof.key_averages()}

        def per_step(*names: str) -> float:
            return sum(c for k, c in counts.items() if any(n in k for n in names)) / steps

        out["captured" if capture else "uncaptured"] = {
            "kernel_launches_per_step": per_step("cudaLaunchKernel", "cuLaunchKernel"),
            "graph_launches_per_step": per_step("cudaGraphLaunch"),
            "copies_per_step": per_step("cudaMemcpy"),
            "host_syncs_per_step": per_step("cudaStreamSynchronize", "cudaDeviceSynchronize")}
    return out


def matmul_peak(device: torch.device, precision: str, n: int) -> float:
    """FLOP/s of one n x n float32 matmul at `precision` (highest: fp32; high: TF32 on GPUs that have it)."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        for _ in range(3):
            torch.mm(a, b)
        repeats = 20 if device.type == "cuda" else 3
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return 2 * n**3 * repeats / (time.perf_counter() - start)
    finally:
        torch.set_float32_matmul_precision(previous)


def throughput(device: torch.device, pops: list[int], steps: int, budget_end: float) -> dict:
    cuda = device.type == "cuda"
    n = 8192 if cuda else 256
    out = {"fp32_peak_tflops": matmul_peak(device, "highest", n) / 1e12,
           "tf32_peak_tflops": matmul_peak(device, "high", n) / 1e12 if cuda else UNMEASURED["status"],
           "precision": "highest", "sizes": WIDE, "batch": 64, "runs": []}
    data = synthetic_dataset(**{**WIDE_DATA, "n_train": 64 * steps}).to(device)
    flops = 64 * flops_per_example(WIDE)
    for pop in pops:
        for shape in ("shared", "independent"):
            members = (dict(lrs=np.geomspace(0.01, 0.1, pop).tolist(), seeds=[0]) if shape == "shared"
                       else dict(lrs=[0.05], seeds=list(range(pop))))
            for capture in (False, True):
                if time.monotonic() > budget_end:
                    out["runs"].append({"pop": pop, "orders": shape, "captured": capture,
                                        "status": "skipped: over the time budget"})
                    continue
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                values = dict(dataset="synthetic", methods=["fa"], device=str(device), epochs=1.0, **members)
                meta = train(values, data, capture=capture).meta
                row = {"pop": pop, "orders": shape, "captured": capture,
                       "run_examples_per_s": meta["run_examples_per_s"],
                       "tflops": flops * steps * pop / meta["train_loop_s"] / 1e12}
                if cuda:
                    row["peak_memory_per_member_mb"] = torch.cuda.max_memory_allocated(device) / pop / 2**20
                out["runs"].append(row)
    return out


def lease(device: torch.device) -> dict:
    """The real UUID source on the real device: a second lease of it waits for the first."""
    if device.type != "cuda":
        return UNMEASURED
    with tempfile.TemporaryDirectory() as locks:
        env = dict(os.environ)
        with gpu_lease(locks, 1, env=env) as first:
            try:
                with gpu_lease(locks, 1, env=dict(os.environ), poll_s=0.05, timeout_s=1.0):
                    serialised = False
            except LeaseError as err:
                serialised, message = True, str(err)
        return {"lock_file": first.path.name, "named_by_uuid": "GPU-" in first.path.name,
                "second_lease_waited": serialised, "error": message if serialised else None,
                "passed": serialised and "GPU-" in first.path.name}


def population_tests(device: torch.device, timeout_s: float) -> dict:
    if device.type != "cuda":
        return UNMEASURED
    tests = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_population_*.py"))
    env = {**os.environ, "SOAP_TEST_DEVICE": str(device), "PYTHONPATH": str(REPO)}
    try:
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=REPO,
                             env=env, capture_output=True, text=True, timeout=timeout_s)
        return {"exit_code": out.returncode, "summary": out.stdout.strip().splitlines()[-1:],
                "failures": [line for line in out.stdout.splitlines() if line.startswith("FAILED")][:20],
                "passed": out.returncode == 0}
    except subprocess.TimeoutExpired:
        return {"status": f"unfinished: over {timeout_s:.0f} s"}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the JSON report")
    parser.add_argument("--budget-s", type=float, default=480.0, help="stop measuring throughput past this")
    args = parser.parse_args(argv)
    started = time.monotonic()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    pops, steps = ([40, 256, 1024, 4096], 40) if cuda else ([2], 2)
    report = {"device": str(device), "mode": "cuda" if cuda else "cpu (no CUDA device: small sizes)"}
    sections = [("versions", lambda: versions(device)),
                ("rules_cuda_vs_cpu", lambda: rules_cuda_vs_cpu(device)),
                ("mixed_vs_alone", lambda: mixed_vs_alone(device)),
                ("captured", lambda: captured(device)),
                ("repeat", lambda: repeat(device)),
                ("syncs", lambda: syncs(device)),
                ("launches", lambda: launches(device)),
                ("lease", lambda: lease(device)),
                ("population_tests", lambda: population_tests(device, timeout_s=150)),
                ("throughput", lambda: throughput(device, pops, steps, started + args.budget_s))]
    for name, section in sections:
        t0 = time.monotonic()
        try:
            report[name] = section()
        except Exception as err:  # one failing section must not lose the others' measurements
            report[name] = {"status": f"error: {type(err).__name__}: {err}"}
        if isinstance(report[name], dict) and report[name] is not UNMEASURED:
            report[name] = {**report[name], "seconds": round(time.monotonic() - t0, 1)}
        write_text(json.dumps(report, indent=2, default=str) + "\n", args.out)  # a partial report survives a kill
        print(f"{name}: {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
    report["seconds"] = round(time.monotonic() - started, 1)
    write_text(json.dumps(report, indent=2, default=str) + "\n", args.out)
    return report


if __name__ == "__main__":
    main()
