"""The quick study on a real SLURM cluster (tests/slurm/cluster.sh), every job an sbatch job, faulted twice.

One run of `snakemake --workflow-profile workflow/profiles/slurm --configfile config/quick.yaml --config
gpus=0` up to the runs and curves tables (module fixture `study`) takes both faults a cluster deals:
1. a training job cancelled with scancel while it runs: the profile's retry submits it again;
2. then, while that retry runs, the controller SIGKILLed: after `--unlock`, the same command again waits
   for the jobs the dead controller left in SLURM and finishes the study without submitting any job twice.
Each test asserts one consequence, from SLURM's accounting (sacct) and the study's outputs; the runs and
curves tables must equal a local `snakemake --cores 2` run's number for number.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from slurm_jobs import FAST_STATUS, PROFILE, sacct_jobs, squeue_jobs, wait_for
from workflows import QUICK, Workflow, environment

pytestmark = pytest.mark.timeout(3600)  # the module's study runs inside its first test's time
TABLES = ("runs.parquet", "curves.parquet")
# The study up to its runs and curves tables (tuning, grid, tuned, gather: 10 jobs), which is what a
# cluster computes; the whole quick study (24 jobs, analysis and report too) is the README's check.
COMMAND = (*PROFILE, "--configfile", "config/quick.yaml", "--config", "gpus=0", *FAST_STATUS,
           *(f"results/{table}" for table in TABLES))
TRAIN_GRID = "rule_train_grid_wildcards__mnist_0"
GRID_OUTPUT = "results/train/grid/mnist/chunk0/runs.parquet"


def rule_of(comment: str) -> str:
    return comment.removeprefix("rule_").partition("_wildcards_")[0]


def planned_jobs(flow: Workflow, env: dict) -> Counter:
    """Jobs per rule, from a dry run's job table."""
    dry = flow.snakemake(*COMMAND, "-n", env=env, timeout=600)
    assert dry.returncode == 0, dry.stderr[-3000:]
    table = dry.stdout[dry.stdout.index("Job stats:"):]
    counts = Counter({rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.MULTILINE)})
    del counts["total"]
    return counts


@pytest.fixture(scope="module")
def study(tmp_path_factory, slurm_cluster, data_root):
    """The quick study run on SLURM with a cancelled training job and a killed controller (see above)."""
    root = tmp_path_factory.mktemp("slurm-study")
    flow = Workflow(root)
    # config/quick.yaml as shipped: its data.root is overridden by $SOAP_DATA_ROOT, which jobs must see.
    env = environment(SOAP_DATA_ROOT=str(data_root))
    plan = planned_jobs(flow, env)
    started = time.monotonic()
    first_log = root / "controller-1.log"
    job_log = root / "logs/train/grid/mnist/chunk0.log"
    with open(first_log, "w") as out:
        first = flow.snakemake(*COMMAND, env=env, background=True, stdout=out, stderr=subprocess.STDOUT)
    try:
        # 1. The training job once its script is running (it opens its log first), outputs not yet written.
        def training():
            return next((i for i, state, comment, _ in squeue_jobs(root)
                         if comment == TRAIN_GRID and state == "RUNNING" and job_log.exists()), None)

        cancelled = wait_for(training, "the train_grid job to run", 900, first, first_log)
        output_at_cancel = (root / GRID_OUTPUT).exists()
        subprocess.run(["scancel", cancelled], check=True)

        # 2. Its retry running: kill the controller, leaving that job (and any other) to SLURM.
        def retry():
            return next((i for i, state, comment, _ in squeue_jobs(root)
                         if comment == TRAIN_GRID and i != cancelled and state == "RUNNING"), None)

        retried = wait_for(retry, "the cancelled job's retry to run", 900, first, first_log)
        completed_before_kill = {job.id for job in sacct_jobs(root) if job.state == "COMPLETED"}
        left_to_slurm = squeue_jobs(root)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=60)
    # Snakemake's own lock outlives a SIGKILL (README: `--unlock` first, as for a local run).
    unlock = flow.snakemake(*COMMAND, "--unlock", env=env, timeout=900)
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    rerun = flow.snakemake(*COMMAND, env=env, timeout=1800)
    (root / "controller-2.log").write_text(rerun.stdout + rerun.stderr)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    print(f"quick study on SLURM, with both faults: {time.monotonic() - started:.0f} s")
    return {"root": root, "plan": plan, "jobs": sacct_jobs(root), "cancelled": cancelled, "retried": retried,
            "output_at_cancel": output_at_cancel, "completed_before_kill": completed_before_kill,
            "left_to_slurm": left_to_slurm, "logs": first_log.read_text() + unlock.stderr + rerun.stderr,
            "unlock": unlock.stderr}


@pytest.fixture(scope="module")
def local_results(tmp_path_factory, data_root) -> Path:
    """results/ of a local `snakemake --cores 2` run of config/quick.yaml: $SOAP_LOCAL_RESULTS when set
    (a finished local run's folder), else made here (its runs and curves tables only)."""
    if os.environ.get("SOAP_LOCAL_RESULTS"):
        return Path(os.environ["SOAP_LOCAL_RESULTS"])
    root = tmp_path_factory.mktemp("local-study")
    flow = Workflow(root)
    # Targets first: --configfile takes every word after it.
    local = flow.snakemake(*(f"results/{t}" for t in TABLES), "--cores", "2", "--configfile", "config/quick.yaml",
                           env=environment(SOAP_DATA_ROOT=str(data_root)), timeout=1800)
    assert local.returncode == 0, local.stderr[-3000:]
    return root / "results"


def test_every_study_job_ran_as_an_sbatch_job_and_completed(study):
    jobs = study["jobs"]
    finished = Counter(rule_of(job.comment) for job in jobs if job.state == "COMPLETED")
    assert finished == study["plan"]  # every planned job, each completed once
    assert [job.id for job in jobs if job.state != "COMPLETED"] == [study["cancelled"]]
    # The controller ran nothing itself: every job was submitted.
    assert not re.findall(r"^localrule (\w+):", study["logs"], flags=re.MULTILINE)


def test_cancelled_training_job_is_retried_and_completes(study):
    by_id = {job.id: job for job in study["jobs"]}
    assert by_id[study["cancelled"]].state == "CANCELLED"
    assert not study["output_at_cancel"]  # cancelled mid-run, before it wrote its outputs
    grid = [job for job in study["jobs"] if job.comment == TRAIN_GRID]
    assert [job.id for job in grid] == [study["cancelled"], study["retried"]]
    assert by_id[study["retried"]].state == "COMPLETED"
    assert (study["root"] / GRID_OUTPUT).is_file()


def test_killed_controller_keeps_finished_jobs_and_submits_none_twice(study):
    jobs = study["jobs"]
    submissions = Counter(job.comment for job in jobs)
    # One submission per job; the cancelled one's retry is the one second submission.
    assert {comment: n for comment, n in submissions.items() if n > 1} == {TRAIN_GRID: 2}
    assert study["completed_before_kill"] and study["left_to_slurm"]  # the kill landed mid-study
    by_comment = {job.comment: job for job in jobs}
    for job_id, _, comment, _ in study["left_to_slurm"]:  # what the dead controller left ran on and finished
        assert by_comment[comment].id == job_id and by_comment[comment].state == "COMPLETED", comment
    # the unlock waits for those of them still queued when it looks: a short one may have finished since
    waited = re.search(r"waiting for (\d+) SLURM job\(s\) that a killed controller left running in \S+: (.*)",
                       study["unlock"])
    assert waited, study["unlock"][-2000:]
    ids = [entry.split()[0] for entry in waited.group(2).split(", ")]
    assert len(ids) == int(waited.group(1)) >= 1, waited.group(0)
    assert set(ids) <= {str(job_id) for job_id, *_ in study["left_to_slurm"]}, waited.group(0)


def test_runs_and_curves_equal_a_local_run_number_for_number(study, local_results):
    for table in TABLES:
        on_slurm = pd.read_parquet(study["root"] / "results" / table)
        local = pd.read_parquet(local_results / table)
        pd.testing.assert_frame_equal(on_slurm, local, check_exact=True)  # NaN equals NaN here
    runs = pd.read_parquet(study["root"] / "results" / "runs.parquet")
    per_method = QUICK["grid"]["n_lrs"] * QUICK["grid"]["seeds"] + QUICK["tuned"]["seeds"]
    assert len(runs) == len(QUICK["methods"]) * per_method and runs["run_id"].is_unique


def test_jobs_found_their_data_their_optuna_storage_and_no_gpu(study):
    root = study["root"]
    # gpus=0: no GPU asked of SLURM, none leased; every training job on the CPU with config.yaml's one
    # thread, as in a local run.
    for meta in (root / "results" / "train").rglob("meta.json"):
        assert json.loads(meta.read_text())["device"] == "cpu (1 threads)", meta
    # Each tuning study ran in its own journal beside its outputs, to exactly n_trials trials.
    for method in QUICK["methods"]:
        study_dir = root / "results" / "tune" / "mnist" / method / "r0"
        assert (study_dir / "study.journal").is_file()
        assert len(pd.read_csv(study_dir / "trials.csv")) == QUICK["tune"]["n_trials"]
