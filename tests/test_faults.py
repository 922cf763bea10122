"""Faults: a NaN or inf that appears in one member mid-run, a training job SIGKILLed mid-training or
while it writes its outputs, and a writer that fails halfway.

(Tuning studies killed mid-way: tests/test_tuning.py and tests/test_parallel_tuning.py. The whole
pipeline killed and rerun: tests/test_pipeline.py.)
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from workflows import QUICK, environment

from soap.config import TrainConfig
from soap.data import synthetic_dataset
from soap.population import PopulationMLP, train_population
from soap.tables import validate_curves, validate_runs, write_atomic, write_table, write_text
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


TARGET = "results/train/grid/mnist/chunk0/runs.parquet"


def _quick_job(workflow, data_root, epochs: float) -> tuple[list[str], dict]:
    quick = {**QUICK, "train": {**QUICK["train"], "epochs": epochs}}
    config = workflow.write_config(data_root, train=quick["train"])
    return [TARGET, "--cores", "2", "--configfile", config], quick


def test_sigkilled_training_job_leaves_no_output_and_the_rerun_completes(workflow, data_root):
    # Long enough for the kill to land inside the training loop.
    args, quick = _quick_job(workflow, data_root, epochs=0.2)
    job_log = workflow.root / "logs/train/grid/mnist/chunk0.log"

    process = workflow.snakemake(*args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 background=True)
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

    chunk = workflow.root / "results/train/grid/mnist/chunk0"
    left = sorted(p.name for p in chunk.iterdir()) if chunk.exists() else []
    assert left == [], f"the killed job left {left}"
    assert not list((workflow.root / "results").rglob("*.tmp"))  # not even a temporary file

    rerun = workflow.snakemake(*args, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    runs = validate_runs(pd.read_parquet(workflow.root / TARGET))
    assert len(runs) == len(quick["methods"]) * quick["grid"]["n_lrs"] * quick["grid"]["seeds"]
    assert (chunk / "meta.json").is_file() and (chunk / "curves.parquet").is_file()


# Loaded by every Python process started with this folder on PYTHONPATH (the `site` module imports
# sitecustomize): the training job kills itself the moment its curves table is written in full to its
# temporary file, just before the rename that would publish it. By then runs.parquet is in place.
DIE_WHILE_WRITING = """
import os, signal
_replace = os.replace

def replace(src, dst, *args, **kwargs):
    if str(dst).endswith("chunk0/curves.parquet") and os.path.getsize(src) > 0:
        open(os.environ["SOAP_TEST_KILLED_AT"], "w").write(str(src))
        os.kill(os.getpid(), signal.SIGKILL)
    return _replace(src, dst, *args, **kwargs)

os.replace = replace
"""


def test_job_killed_while_writing_its_outputs_is_redone_not_trusted(workflow, data_root, tmp_path_factory):
    """A job SIGKILLed after it has written one output and while it writes the next: no output path ever
    holds a partial file, Snakemake does not keep the half-written job, and the rerun redoes it."""
    hook = tmp_path_factory.mktemp("hook")
    (hook / "sitecustomize.py").write_text(DIE_WHILE_WRITING)
    marker = hook / "killed_at"
    args, quick = _quick_job(workflow, data_root, epochs=0.02)
    env = environment(SOAP_TEST_KILLED_AT=str(marker))
    env["PYTHONPATH"] = os.pathsep.join([str(hook), env["PYTHONPATH"]])
    first = workflow.snakemake(*args, env=env, timeout=300)
    assert first.returncode != 0 and "Error in rule train_grid" in first.stderr, first.stderr[-3000:]
    temp = Path(marker.read_text())
    assert temp.name.startswith(".curves.parquet.") and temp.stat().st_size > 0  # killed mid-publication

    chunk = workflow.root / "results/train/grid/mnist/chunk0"
    # Snakemake removed the output the dead job had finished (runs.parquet): a job is kept whole or not at all.
    assert sorted(p.name for p in chunk.iterdir() if not p.name.startswith(".")) == []
    # What SIGKILL leaves is the hidden temporary file (no cleanup runs in a killed process), never a
    # partial table at an output path.
    assert [p.name for p in chunk.iterdir()] == [temp.name]

    rerun = workflow.snakemake(*args, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    runs = validate_runs(pd.read_parquet(workflow.root / TARGET))
    assert len(runs) == len(quick["methods"]) * quick["grid"]["n_lrs"] * quick["grid"]["seeds"]
    curves = validate_curves(pd.read_parquet(chunk / "curves.parquet"))
    assert set(curves["run_id"]) == set(runs["run_id"]) and (chunk / "meta.json").is_file()


class _HalfWritten(RuntimeError):
    pass


@pytest.mark.parametrize("failure", [_HalfWritten, KeyboardInterrupt])
def test_write_atomic_keeps_the_old_file_when_the_writer_fails_halfway(tmp_path, failure):
    path = tmp_path / "table.parquet"
    old = pd.DataFrame({"run_id": ["a", "b"], "val_loss": [0.5, 0.25]})
    write_table(old, path)
    before = path.read_bytes()

    def half(tmp):
        new = pd.DataFrame({"run_id": [f"r{i}" for i in range(10_000)], "val_loss": np.arange(10_000.0)})
        new.to_parquet(tmp)
        blob = Path(tmp).read_bytes()
        Path(tmp).write_bytes(blob[: len(blob) // 2])  # half of the new file on disk
        raise failure("disk full")

    with pytest.raises(failure):
        write_atomic(path, half)
    assert path.read_bytes() == before  # the old file, byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.parquet"]  # no temporary file remains
    pd.testing.assert_frame_equal(pd.read_parquet(path), old)


def test_write_atomic_publishes_the_whole_new_file_readable_by_others(tmp_path):
    path = tmp_path / "sub" / "summary.json"
    write_text('{"old": 1}', path)
    write_text('{"new": 2}', path)
    assert path.read_text() == '{"new": 2}' and sorted(p.name for p in path.parent.iterdir()) == ["summary.json"]
    assert path.stat().st_mode & 0o044  # readable by group/others under the usual umask, unlike mkstemp's 0600
