"""What a population run leaves behind: the runs table (one row per member, STUDY.md's contract), the
curves table (one row per run and log point) and the meta record (config, versions, device, times)."""

from __future__ import annotations

import importlib.metadata
import math
import platform
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

import soap
from soap.activity_propagation import forward_backward_passes
from soap.config import Member, TrainConfig
from soap.metrics import feedback_gain, time_to_target
from soap.models import INPUT_SIZE, lenet_layout
from soap.rules import get_rule
from soap.tables import effective_lr


@dataclass
class TrainResult:
    runs: pd.DataFrame  # one row per member (STUDY.md runs-table contract)
    curves: pd.DataFrame  # long table: run_id, examples, logged quantities
    meta: dict  # config, versions, device, wall time


def run_id(config: TrainConfig, member: Member) -> str:
    period = "" if member.refresh_period == config.refresh_period else f"-T{member.refresh_period}"
    scale = "" if member.feedback_scale == 1.0 else f"-a{member.feedback_scale:.6g}"
    optimizer = "" if config.optimizer == "sgd" else f"-{config.optimizer}"
    layers = "" if member.lr_scale is None else "-m" + "_".join(f"{m:.4g}" for m in member.lr_scale)
    step = "" if member.step_rule == member.method else f"-at{member.step_rule}"
    return (f"{config.dataset}-{config.phase}-{member.method}-lr{member.lr:.6g}-s{member.seed}"
            f"{period}{scale}{layers}{step}{optimizer}")


def versions() -> dict[str, str]:
    import numpy

    # torchvision's installed version, read without importing it: the import (its models and ops) took
    # 4.0 s of every training job here, which reads prepared tensors and never uses torchvision
    return {"soap": soap.__version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "torchvision": importlib.metadata.version("torchvision"), "numpy": numpy.__version__,
            "pandas": pd.__version__, "platform": platform.platform()}


def curves_table(config: TrainConfig, members: list[Member], train_log: list, eval_log: list) -> pd.DataFrame:
    """train_log [(examples, loss (pop,), ema (pop,))], eval_log [(examples, {column: (pop,)})] -> the
    long table, sorted by run and examples."""
    ids = [run_id(config, m) for m in members]
    pop = len(members)
    train = pd.DataFrame({
        "run_id": np.tile(ids, len(train_log)),
        "examples": np.repeat([e for e, _, _ in train_log], pop),
        "train_loss": torch.stack([l for _, l, _ in train_log]).cpu().numpy().ravel(),
        "train_loss_ema": torch.stack([m for _, _, m in train_log]).cpu().numpy().ravel(),
    })
    columns = list(eval_log[0][1])
    evals = pd.DataFrame({"run_id": np.tile(ids, len(eval_log)),
                          "examples": np.repeat([e for e, _ in eval_log], pop)})
    for column in columns:
        evals[column] = torch.stack([row[column] for _, row in eval_log]).numpy().ravel()
    curves = train.merge(evals, on=["run_id", "examples"], how="outer")
    return curves.sort_values(["run_id", "examples"], kind="stable").reset_index(drop=True)


def runs_table(config: TrainConfig, members: list[Member], sizes: list[int], finals: dict[str, np.ndarray],
               diverged_at: np.ndarray, seen: int, eval_log: list, curves: pd.DataFrame) -> pd.DataFrame:
    """One row per member (in `members`' order) from its final numbers, divergence and logged curves."""
    hidden = len(sizes) - 2
    # (points, hidden layers, pop) -> a gain per member and hidden layer, and their geometric mean
    ratios = np.stack([[row[f"norm_ratio_l{l}"].numpy() for l in range(hidden)] for _, row in eval_log])
    layer_gains = np.array([[feedback_gain(ratios[:, l, p]) for l in range(hidden)] for p in range(len(members))])
    gains = np.array([feedback_gain(g) for g in layer_gains])
    layer_lrs = np.array([m.layer_lrs(len(sizes) - 1) for m in members]) / np.array([[m.lr] for m in members])
    runs = pd.DataFrame({
        "run_id": [run_id(config, m) for m in members],
        "phase": config.phase,
        "dataset": config.dataset,
        "method": [m.method for m in members],
        "seed": [m.seed for m in members],
        "lr": [m.lr for m in members],
        "feedback_gain": gains,
        "diverged": ~np.isnan(diverged_at),
        **finals,
    })
    # so_ runs: |n| / |g2| at the SOAP points, combined over points and log points like the feedback gain
    soap_keys = [key for key in eval_log[-1][1] if key.startswith("soap_gain_l")]
    soap = np.stack([[row[key].numpy() for key in soap_keys] for _, row in eval_log]) if soap_keys else None
    runs["soap_gain"] = [feedback_gain(soap[:, :, p]) if soap is not None else math.nan for p in range(len(members))]
    runs["effective_lr"] = effective_lr(runs)
    if config.target_loss is not None:
        runs["examples_to_target"], runs["reached_target"] = time_to_target(curves, runs["run_id"], config.target_loss)
    else:
        runs["examples_to_target"], runs["reached_target"] = np.nan, False
    # forward-backward passes (over one batch) to the target: an so_ step after the warm-up costs two
    runs["two_pass_from"] = [config.soap_warmup * config.batch_size if get_rule(m.method).second_order else np.nan
                             for m in members]
    runs["passes_to_target"] = forward_backward_passes(runs["examples_to_target"], config.batch_size,
                                                       runs["two_pass_from"])
    runs["target_loss"] = np.nan if config.target_loss is None else config.target_loss
    runs["refresh_period"] = [m.refresh_period for m in members]
    runs["feedback_scale"] = [m.feedback_scale for m in members]
    runs["step_rule"] = [m.step_rule for m in members]
    runs["optimizer"] = config.optimizer
    # 1-based, input to output: hidden layer l's error drives weight layer l's step
    for l in range(hidden):
        runs[f"feedback_gain_l{l + 1}"] = layer_gains[:, l]
    for l in range(len(sizes) - 1):
        runs[f"lr_scale_l{l + 1}"] = layer_lrs[:, l]
    runs["diverged_at"] = diverged_at
    runs["examples_seen"] = seen
    runs["epochs"] = config.epochs
    runs["batch_size"] = config.batch_size
    runs["architecture"] = config.architecture
    runs["layers"] = layers_description(config, sizes)
    return runs


def layers_description(config: TrainConfig, sizes: list[int]) -> str:
    """The network's layers and nonlinearity, e.g. "784-256-256-10 tanh" or
    "1x32x32-6c5-p2-16c5-p2-120c5-84-10 relu" (conv: channels c kernel, p: max-pool)."""
    if config.architecture == "lenet5":
        return f"{lenet_layout(sizes[-1], sizes[0] // INPUT_SIZE ** 2)} {config.network_activation()}"
    return f"{'-'.join(map(str, sizes))} {config.activation}"


def meta_record(config: TrainConfig, device: str, started: str, finished: str, wall: float, loop_time: float,
                loop_cpu: float, members: int, seen: int, device_info: dict | None = None) -> dict:
    """device: a line naming it; device_info: soap.devices.device_record (type, model, precision flags)."""
    return {"config": config.to_dict(), "versions": versions(), "device": device, **(device_info or {}),
            "started": started, "finished": finished,
            "wall_time_s": wall, "train_loop_s": loop_time, "members": members,
            # CPU seconds of the loop, all threads: on a machine shared with other work, a steadier
            # measure of the loop's cost than wall time (with one thread, where no thread waits spinning)
            "train_loop_cpu_s": loop_cpu,
            # throughput of the training loop itself (logging included; data loading and final tests not)
            "run_examples_per_s": seen * members / loop_time}
