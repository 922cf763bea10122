"""Faults: a NaN or inf that appears in one member mid-run, and a training job SIGKILLed mid-training.

(Tuning studies killed mid-way: tests/test_tuning.py and tests/test_parallel_tuning.py. The whole
pipeline killed and rerun: tests/test_pipeline.py.)
"""

from __future__ import annotations

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

from soap.config import TrainConfig
from soap.data import synthetic_dataset
from soap.population import PopulationMLP, train_population
from soap.tables import validate_runs

REPO = Path(__file__).resolve().parents[1]
DATA = synthetic_dataset(n_train=960, n_val=256, n_test=256, dim=12, num_classes=3, seed=5)
CONFIG = TrainConfig.from_dict(dict(
    dataset="synthetic", hidden=[16], batch_size=48, epochs=1.0, log_every=96, eval_every=480,
    eval_subset=128, device="cpu", members=[{"method": m, "lr": 0.1, "seed": s}
                                            for m, s in (("bp", 0), ("fa", 1), ("sign", 2), ("bp", 3))]))
POISON_STEP = 5  # 0-based; the step sees examples 241..288, and the next log point is 288


def test_nan_weights_and_inf_data_mark_only_their_member_diverged(monkeypatch):
    clean = train_population(CONFIG, DATA, progress=False)
    original, calls = PopulationMLP.train_step, []

    def poisoned(self, x, y, lr):
        calls.append(1)
        if len(calls) == POISON_STEP + 1:
            self.weights[0][1, 0, 0] = math.nan  # member 1: one NaN weight
            x = x.clone()
            x[2, 0, 0] = math.inf  # member 2: one infinite input value in its batch
        return original(self, x, y, lr)

    monkeypatch.setattr(PopulationMLP, "train_step", poisoned)
    hit = train_population(CONFIG, DATA, progress=False)

    runs = validate_runs(hit.runs)  # diverged rows still follow the contract
    assert runs["diverged"].tolist() == [False, True, True, False]
    # Caught at the first log point (every 96 examples) after the loss turns non-finite: member 1's at
    # once; member 2's loss on the inf batch is still finite (tanh saturates), its update is not.
    assert runs.loc[1:2, "diverged_at"].tolist() == [288, 384]
    assert runs.loc[1:2, ["val_loss", "test_loss", "final_train_loss"]].isna().all().all()
    # The healthy members are exactly what they are without the poison: nothing leaks across members.
    for column in ("val_loss", "test_loss", "test_acc", "final_train_loss", "feedback_gain"):
        assert runs.loc[[0, 3], column].tolist() == pytest.approx(clean.runs.loc[[0, 3], column].tolist(),
                                                                  rel=1e-6), column
    # Curves of a diverged member: finite before the poison, NaN from its detection on.
    for member in (1, 2):
        curve = hit.curves[hit.curves["run_id"] == runs.loc[member, "run_id"]]
        at = runs.loc[member, "diverged_at"]
        before = curve[curve["examples"] < at]["train_loss"].dropna()
        assert len(before) >= 2 and before.map(math.isfinite).all()
        assert curve[curve["examples"] >= at]["train_loss"].isna().all()


def _job_pid(session: int, script: str) -> int | None:
    """The process of Snakemake's session running `script` (Snakemake's own processes excluded)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) != session:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ProcessLookupError):
            continue
        if any(arg.endswith(script.encode()) for arg in argv) and b"snakemake" not in argv[1:3]:
            return int(entry.name)
    return None


def test_sigkilled_training_job_leaves_no_output_and_the_rerun_completes(tmp_path, data_root):
    for name in ("Snakefile", "config.yaml", "workflow", "config", "profiles"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / name)
    quick = yaml.safe_load((REPO / "config" / "quick.yaml").read_text())
    quick["train"]["epochs"] = 0.2  # long enough for the kill to land inside the training loop
    (tmp_path / "test.yaml").write_text(yaml.safe_dump({**quick, "data": {"root": str(data_root),
                                                                          "download": False}}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    target = "results/train/grid/mnist/chunk0/runs.parquet"
    command = [sys.executable, "-m", "snakemake", target, "--cores", "2", "--configfile", "test.yaml"]
    job_log = tmp_path / "logs/train/grid/mnist/chunk0.log"

    process = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    # The progress bar is the trainer's first output: from then on the job is inside the training loop.
    while not (job_log.exists() and "grid x" in job_log.read_text()):
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "the training job did not start"
        time.sleep(0.1)
    pid = _job_pid(process.pid, "train.py")
    assert pid is not None, "no training job process found"
    os.kill(pid, signal.SIGKILL)
    first = process.communicate(timeout=120)[0]
    assert process.returncode != 0 and "Error in rule train_grid" in first, first[-3000:]

    chunk = tmp_path / "results/train/grid/mnist/chunk0"
    left = sorted(p.name for p in chunk.iterdir()) if chunk.exists() else []
    assert left == [], f"the killed job left {left}"
    assert not list((tmp_path / "results").rglob("*.tmp"))  # not even a temporary file

    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    runs = validate_runs(pd.read_parquet(tmp_path / target))
    assert len(runs) == len(quick["methods"]) * quick["grid"]["n_lrs"] * quick["grid"]["seeds"]
    assert (chunk / "meta.json").is_file() and (chunk / "curves.parquet").is_file()
