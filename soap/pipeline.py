"""The study pipeline's library: from the study config (soap.study_config) to training populations, and
from the training jobs' tables to the study's runs table (STUDY.md contract).

The Snakefile decides what runs where; everything it computes lives here, so the workflow scripts stay
thin and the same logic is importable and tested. Nothing here imports Snakemake: a wheel install of
soap runs `soap train`, `soap tune` and `soap analyze` without the workflow.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from soap.study_config import device_for, train_config
from soap.tables import validate_curves, validate_runs, write_table, write_text

log = logging.getLogger(__name__)


def log_to_file(path) -> None:
    """Send a job's stderr (logging, warnings, progress bars, a traceback) to its Snakemake log."""
    sys.stderr = open(path, "w", buffering=1)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # matplotlib's PDF backend subsets each figure's fonts through fontTools, which logs ~150 INFO lines
    # a figure: 2,191 of the report log's 2,207 lines were its
    logging.getLogger("fontTools").setLevel(logging.WARNING)


def grid_lrs(cfg: dict) -> list[float]:
    grid = cfg["grid"]
    if grid["lrs"] is not None:
        return [float(lr) for lr in grid["lrs"]]
    # Rounded so run ids and plots show readable numbers; 4 significant digits keep points distinct.
    return [float(f"{lr:.4g}") for lr in np.geomspace(grid["lr_low"], grid["lr_high"], grid["n_lrs"])]


def n_chunks(n_seeds: int, per_job: int) -> int:
    return math.ceil(n_seeds / per_job)


def chunk_seeds(n_seeds: int, per_job: int, chunk: int) -> list[int]:
    """Seeds of job `chunk` when seeds 0 .. n_seeds-1 are split into jobs of `per_job`."""
    seeds = list(range(chunk * per_job, min((chunk + 1) * per_job, n_seeds)))
    if not seeds:
        raise ValueError(f"chunk {chunk} is empty ({n_seeds} seeds, {per_job} per job)")
    return seeds


def grid_members(methods: list[str], lrs: list[float], seeds: Iterable[int],
                 refresh_periods: list[int] | None = None, refresh_period: int | None = None) -> list[dict]:
    """The crossed design: every method at every grid learning rate on every paired seed, and, for
    the rules that refresh their feedback, at every refresh period in `refresh_periods` (a sensitivity
    axis; None: the config's one period). Rules that never refresh run once, at `refresh_period`."""
    from soap.rules import get_rule

    members = []
    for m in methods:
        periods = refresh_periods if refresh_periods and get_rule(m).refresh is not None else [None]
        for period in periods:
            extra = {} if period is None or period == refresh_period else {"refresh_period": int(period)}
            members += [{"method": m, "lr": float(lr), "seed": int(s), **extra} for lr in lrs for s in seeds]
    return members


def tuned_members(methods: list[str], tuned_lrs: dict, seeds: Iterable[int], lr_source: str = "repeat") -> list[dict]:
    """Every method at its own tuned learning rate on paired seeds (tuned_lrs: tuned_lrs.json,
    {method: {"lr": aggregate, "repeat_lrs": [one per tuning repeat, in repeat order]}}).

    lr_source "repeat": seed s trains at the best lr of tuning repeat s mod R, each method its own, so
    the tuned runs vary with the tuning as a reader's own tuning would, and the tuned contrast's
    interval (over repeats, soap.analysis.paired) carries that uncertainty. "aggregate": every seed at
    the aggregate lr, whose interval over seeds treats the tuned lr as known.
    """
    missing = [m for m in methods if m not in tuned_lrs]
    if missing:
        raise KeyError(f"no tuned learning rate for {missing}")
    if lr_source not in ("repeat", "aggregate"):
        raise ValueError(f"tuned.lr_source must be repeat or aggregate, got {lr_source!r}")

    def lr(method: str, seed: int) -> float:
        if lr_source == "aggregate":
            return float(tuned_lrs[method]["lr"])
        return float(tuned_lrs[method]["repeat_lrs"][tuned_repeat(seed, tuned_lrs[method])])

    return [{"method": m, "lr": lr(m, int(s)), "seed": int(s)} for m in methods for s in seeds]


def tuned_repeat(seed: int, tuned: dict) -> int:
    """The tuning repeat whose lr seed `seed` trains at (lr_source "repeat"): seed mod R."""
    return int(seed) % len(tuned["repeat_lrs"])


def label_tuned_repeats(runs: pd.DataFrame, tuned_lrs: dict, lr_source: str) -> pd.DataFrame:
    """The runs table with column tune_repeat: the repeat each tuned run's lr came from (-1: the aggregate)."""
    repeats = [tuned_repeat(seed, tuned_lrs[method]) if lr_source == "repeat" else -1
               for method, seed in zip(runs["method"], runs["seed"])]
    return runs.assign(tune_repeat=np.array(repeats, dtype=int))


def train_job(train: dict, dataset: str, phase: str, members: list[dict], *, prepared: str, gpus,
              gpu_lock_dir, epochs: float | None = None):
    """One training job of the workflow: the population of `members` on a leased device (gpus 0: the
    CPU); `train` is the study config's train block, `epochs` the phase's own length if it has one."""
    from soap.gpu_lease import gpu_lease
    from soap.population import train_population

    config = train_config(train, dataset, phase, members, prepared=prepared, epochs=epochs,
                          device=device_for(gpus))
    with gpu_lease(gpu_lock_dir, gpus):
        return train_population(config)


def write_population(result, runs_path, curves_path, meta_path) -> None:
    """Write one population's runs, curves and meta (`soap train` and every training job), each
    atomically, meta last: its presence marks a complete output (a killed job leaves no half file)."""
    write_table(result.runs, runs_path)
    write_table(result.curves, curves_path)
    write_text(json.dumps(result.meta, indent=2, default=str), meta_path)


def bp_reference_loss(runs: pd.DataFrame, curves: pd.DataFrame) -> float:
    """Median over bp's tuned runs of the EMA training loss after one epoch (STUDY.md default target).

    A run shorter than one epoch contributes its last logged loss. NaN when there is no such run.
    """
    bp = runs[(runs["phase"] == "tuned") & (runs["method"] == "bp") & ~runs["diverged"].astype(bool)]
    losses = []
    for row in bp.itertuples():
        one_epoch = row.examples_seen / row.epochs  # the training split's size
        logged = curves[(curves["run_id"] == row.run_id) & (curves["examples"] <= one_epoch + 0.5)]
        logged = logged.dropna(subset=["train_loss_ema"])
        if len(logged):
            losses.append(float(logged.sort_values("examples")["train_loss_ema"].iloc[-1]))
    return float(np.median(losses)) if losses else math.nan


def fill_targets(runs: pd.DataFrame, curves: pd.DataFrame, target) -> pd.DataFrame:
    """Set target_loss, examples_to_target and reached_target per dataset; target: "auto", a loss, or
    {dataset: loss}."""
    from soap.metrics import time_to_target

    runs = runs.copy()
    for dataset, rows in runs.groupby("dataset").groups.items():
        ids = runs.loc[rows, "run_id"]
        part = curves[curves["run_id"].isin(ids)]
        if isinstance(target, dict):  # {dataset: loss}, e.g. the main study's for the interventions
            loss = float(target.get(dataset, math.nan))
        else:
            loss = bp_reference_loss(runs.loc[rows], part) if target == "auto" else float(target)
        if not math.isfinite(loss):
            log.warning("%s: no finite target loss (no bp tuned run?); examples_to_target left NaN", dataset)
            runs.loc[rows, ["target_loss", "examples_to_target"]] = math.nan
            runs.loc[rows, "reached_target"] = False
            continue
        examples, reached = time_to_target(part, ids, loss)
        runs.loc[rows, "target_loss"] = loss
        runs.loc[rows, "examples_to_target"] = examples
        runs.loc[rows, "reached_target"] = reached
        log.info("%s: target loss %.4f, reached by %d of %d runs", dataset, loss,
                 int(runs.loc[rows, "reached_target"].sum()), len(rows))
    runs["reached_target"] = runs["reached_target"].astype(bool)
    if "two_pass_from" in runs:  # so_ runs: time to target in forward-backward passes too
        from soap.activity_propagation import forward_backward_passes

        runs["passes_to_target"] = forward_backward_passes(runs["examples_to_target"], runs["batch_size"],
                                                           runs["two_pass_from"])
    return runs


def gather(runs_paths: Iterable, curves_paths: Iterable, meta_paths: Iterable, target="auto",
           config: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Concatenate the jobs' tables, fill the time-to-target columns (target: "auto" or a loss) and
    build the provenance record (config: the study config it records)."""
    runs = pd.concat([pd.read_parquet(p) for p in runs_paths], ignore_index=True)
    curves = validate_curves(pd.concat([pd.read_parquet(p) for p in curves_paths], ignore_index=True),
                             source="gathered curves")
    runs = validate_runs(fill_targets(runs, curves, target), source="gathered runs")
    metas = [json.loads(Path(p).read_text()) for p in meta_paths]
    device_types = method_device_types([pd.read_parquet(p, columns=["method"]) for p in runs_paths], metas)
    mixed = mixed_device_contrasts(device_types)
    for message in mixed:
        log.warning("%s", message)
    provenance = {
        "config": config or {},
        "versions": metas[0]["versions"] if metas else {},
        "device": sorted({m["device"] for m in metas}),
        "device_types": device_types,  # {method: device types its runs ran on}
        "mixed_device_contrasts": mixed,  # paired contrasts whose arms ran on different device types
        "wall_time_s": _span_s(metas),  # first job's start to last job's end
        "compute_time_s": float(sum(m["wall_time_s"] for m in metas)),  # summed over jobs
        "started": min((m["started"] for m in metas), default=None),
        "finished": max((m["finished"] for m in metas), default=None),
        "gathered": datetime.now(timezone.utc).isoformat(),
        "jobs": len(metas),
        "runs": len(runs),
    }
    return runs, curves, provenance


def method_device_types(job_runs: list[pd.DataFrame], metas: list[dict]) -> dict[str, list[str]]:
    """{method: sorted device types} over the jobs (each job's runs table and its meta.json, in one
    order); a meta without device_type (older runs) is typed by its device line ("cuda:0 (...)")."""
    types: dict[str, set[str]] = {}
    for runs, meta in zip(job_runs, metas, strict=True):
        kind = meta.get("device_type") or str(meta["device"]).split(":")[0].split(" ")[0]
        for method in runs["method"].unique():
            types.setdefault(str(method), set()).add(kind)
    return {method: sorted(kinds) for method, kinds in sorted(types.items())}


def mixed_device_contrasts(device_types: dict[str, list[str]]) -> list[str]:
    """A message for each method paired against bp whose runs and bp's ran on different device types:
    their products differ by the devices' rounding (~1e-7 relative, more under TF32), not by the rule."""
    from soap.rules import REFERENCE

    reference = set(device_types.get(REFERENCE, []))
    return [f"paired contrast {method} - {REFERENCE} mixes device types: {method} ran on "
            f"{', '.join(kinds)}, {REFERENCE} on {', '.join(sorted(reference))}"
            for method, kinds in device_types.items()
            if method != REFERENCE and reference and set(kinds) | reference != set(kinds) & reference]


def main_target_losses(main_runs: pd.DataFrame) -> dict:
    """{dataset: target loss} of the main study's runs table: the interventions' runs are timed to the
    main study's targets, so their time to target is comparable with it."""
    return main_runs.groupby("dataset")["target_loss"].first().to_dict()


def write_gathered(runs: pd.DataFrame, curves: pd.DataFrame, provenance: dict, runs_path, curves_path,
                   provenance_path) -> None:
    """Write gather()'s runs table, curves table and provenance record, each atomically, runs last."""
    write_table(curves, curves_path)
    write_text(json.dumps(provenance, indent=2, default=str) + "\n", provenance_path)
    write_table(runs, runs_path)


def _span_s(metas: list[dict]) -> float:
    if not metas:
        return 0.0
    start = min(datetime.fromisoformat(m["started"]) for m in metas)
    end = max(datetime.fromisoformat(m["finished"]) for m in metas)
    return (end - start).total_seconds()
