"""The Snakemake study pipeline, run for real on MNIST with config/quick.yaml in a scratch copy.

One run is SIGKILLed (Snakemake and its jobs, as a crashed machine would be) once the grid job has
finished, then rerun: it must complete, leave finished outputs untouched, and produce tables that
follow the runs-table contract.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from soap.pipeline import bp_reference_loss, fill_targets, grid_lrs, load_study_config
from soap.tables import validate_runs

REPO = Path(__file__).resolve().parents[1]
QUICK = yaml.safe_load((REPO / "config" / "quick.yaml").read_text())
METHODS = QUICK["methods"]


def snakemake(workdir: Path, *args: str, **kwargs) -> subprocess.Popen | subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "snakemake", *args]
    if kwargs.pop("background", False):
        return subprocess.Popen(command, cwd=workdir, env=env, start_new_session=True, **kwargs)
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=600, **kwargs)


def scratch_copy(tmp: Path, data_root: Path, **changes) -> Path:
    """The workflow in a scratch directory, with config/test.yaml = quick.yaml on the real data."""
    for name in ("Snakefile", "config.yaml", "workflow", "config", "profiles"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp / name)
    config = {**QUICK, "data": {"root": str(data_root), "download": False}, **changes}
    (tmp / "config" / "test.yaml").write_text(yaml.safe_dump(config))
    return tmp


def finished_jobs(log: str, rule: str) -> int:
    return log.count(f"(Rule: {rule})")


@pytest.fixture(scope="module")
def killed_and_rerun(tmp_path_factory, data_root):
    """Run the quick study, SIGKILL it after the grid job, rerun it; return what was seen."""
    work = scratch_copy(tmp_path_factory.mktemp("study"), data_root)
    args = ("--cores", "2", "--configfile", "config/test.yaml")
    first_log = work / "first.log"
    with open(first_log, "w") as log:
        process = snakemake(work, *args, background=True, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while finished_jobs(first_log.read_text(), "train_grid") == 0:
            assert process.poll() is None, first_log.read_text()
            assert time.monotonic() < deadline, "the grid job did not finish in time"
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)  # Snakemake and every job it started
        process.wait()
    # Outputs of jobs Snakemake had recorded as finished must survive the rerun untouched.
    kept = [work / "results/data/mnist.pt", *sorted((work / "results/train/grid").rglob("*.*"))]
    mtimes = {path: path.stat().st_mtime_ns for path in kept}
    assert not (work / "results/runs.parquet").exists()

    unlock = snakemake(work, "--unlock", *args)  # a killed run leaves its lock behind
    assert unlock.returncode == 0, unlock.stderr
    started = time.monotonic()
    rerun = snakemake(work, *args)
    assert rerun.returncode == 0, rerun.stderr[-5000:]
    return {"work": work, "mtimes": mtimes, "first": first_log.read_text(), "rerun": rerun.stderr,
            "rerun_s": time.monotonic() - started}


def test_rerun_after_kill_completes_and_reuses_finished_outputs(killed_and_rerun):
    work, rerun = killed_and_rerun["work"], killed_and_rerun["rerun"]
    for path, mtime in killed_and_rerun["mtimes"].items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was rewritten"
    assert finished_jobs(rerun, "train_grid") == 0 and finished_jobs(rerun, "prepare_data") == 0
    assert finished_jobs(rerun, "gather_runs") == 1
    # Every tuning study ended up with its full budget, whether it was resumed or not.
    for method in METHODS:
        best = json.loads((work / f"results/tune/mnist/{method}/r0/best.json").read_text())
        assert best["n_trials"] == QUICK["tune"]["n_trials"]
    nothing = snakemake(work, "-n", "--cores", "2", "--configfile", "config/test.yaml")
    assert "Nothing to be done" in nothing.stdout + nothing.stderr
    report = snakemake(work, "--report", "report.zip", "--configfile", "config/test.yaml")
    assert report.returncode == 0 and (work / "report.zip").stat().st_size > 0, report.stderr[-3000:]


def test_runs_table_follows_the_contract(killed_and_rerun):
    results = killed_and_rerun["work"] / "results"
    runs = validate_runs(pd.read_parquet(results / "runs.parquet"))
    n_lrs, seeds = QUICK["grid"]["n_lrs"], QUICK["grid"]["seeds"]
    grid, tuned = runs[runs["phase"] == "grid"], runs[runs["phase"] == "tuned"]
    assert len(grid) == len(METHODS) * n_lrs * seeds
    assert len(tuned) == len(METHODS) * QUICK["tuned"]["seeds"]
    assert sorted(grid["lr"].unique()) == pytest.approx(grid_lrs(load_study_config(values=dict(QUICK))))
    # Paired design: every (method, lr) has the same seeds.
    assert (grid.groupby(["method", "lr"])["seed"].apply(lambda s: tuple(sorted(s))).nunique()) == 1
    # Tuned runs use the tuned lr of their method.
    lrs = json.loads((results / "tune/mnist/tuned_lrs.json").read_text())
    for method, rows in tuned.groupby("method"):
        assert rows["lr"].to_numpy() == pytest.approx(lrs[method]["lr"])
    # The time-to-target columns were filled against one target, computed from bp's tuned runs.
    assert runs["target_loss"].nunique() == 1 and math.isfinite(runs["target_loss"].iloc[0])
    assert (runs["reached_target"] == runs["examples_to_target"].notna()).all()

    curves = pd.read_parquet(results / "curves.parquet")
    assert set(curves["run_id"]) == set(runs["run_id"])
    assert {"run_id", "examples", "train_loss", "train_loss_ema", "val_loss", "val_acc"} <= set(curves.columns)

    provenance = json.loads((results / "provenance.json").read_text())
    assert {"config", "versions", "device", "wall_time_s", "started", "finished"} <= set(provenance)
    assert provenance["config"]["tune"]["n_trials"] == QUICK["tune"]["n_trials"]
    assert (results / "report.html").stat().st_size > 0
    assert (results / "analysis" / "summary.json").is_file()


def test_invalid_config_stops_before_any_job_and_names_the_key(tmp_path, data_root):
    work = scratch_copy(tmp_path, data_root, tune={**QUICK["tune"], "n_trial": 5})
    result = snakemake(work, "-n", "--configfile", "config/test.yaml")
    message = result.stdout + result.stderr
    assert result.returncode != 0
    assert "'n_trial' was unexpected" in message and "schema['properties']['tune']" in message

    (work / "config" / "test.yaml").write_text(yaml.safe_dump({**QUICK, "grid": {**QUICK["grid"], "seeds": 0}}))
    result = snakemake(work, "--cores", "1", "--configfile", "config/test.yaml")
    message = result.stdout + result.stderr
    assert result.returncode != 0
    assert "0 is less than the minimum of 1" in message and "['grid']['properties']['seeds']" in message
    assert not (work / "results").exists()


def test_lint_and_dry_run_of_the_default_study():
    lint = snakemake(REPO, "--lint")
    assert lint.returncode == 0 and "Congratulations" in lint.stdout + lint.stderr
    dry = snakemake(REPO, "-n")
    assert dry.returncode == 0, dry.stderr
    for rule in ("prepare_data", "tune_study", "tuned_lrs", "train_grid", "train_tuned", "gather_runs",
                 "analyze", "report"):
        assert rule in dry.stdout + dry.stderr


def _bp_tuned_fixture():
    runs = pd.DataFrame({
        "run_id": ["a", "b", "c", "d"], "phase": ["tuned", "tuned", "tuned", "grid"], "dataset": "mnist",
        "method": ["bp", "bp", "fa", "bp"], "diverged": False, "examples_seen": 200, "epochs": 2.0,
    })
    # One epoch is 100 examples: bp's losses there are 0.5 and 0.7, so the target is their median 0.6.
    curves = pd.DataFrame({
        "run_id": ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["d"] * 3,
        "examples": [50, 100, 200] * 4,
        "train_loss_ema": [0.9, 0.5, 0.3, 1.0, 0.7, 0.4, 1.0, 0.8, 0.61, 0.2, 0.1, 0.1],
    })
    return runs, curves


def test_default_target_is_bp_tuned_median_after_one_epoch():
    runs, curves = _bp_tuned_fixture()
    assert bp_reference_loss(runs, curves) == pytest.approx(0.6)
    filled = fill_targets(runs, curves, "auto").set_index("run_id")
    assert filled["target_loss"].eq(0.6).all()
    assert filled["examples_to_target"].fillna(-1).to_dict() == {"a": 100.0, "b": 200.0, "c": -1, "d": 50.0}
    assert filled["reached_target"].to_dict() == {"a": True, "b": True, "c": False, "d": True}
    fixed = fill_targets(runs, curves, 0.35).set_index("run_id")
    assert fixed["examples_to_target"]["a"] == 200.0 and not fixed["reached_target"]["c"]
