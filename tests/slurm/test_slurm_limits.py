"""A job never asks the cluster for more CPUs than a node has, and one SLURM can never start stops the study.

On a 2-CPU node the profile's old `set-threads: 4` became --cpus-per-task=4: PENDING with
Reason=PartitionConfig for ever, and the controller waiting with it.
"""

from __future__ import annotations

import os
import signal
import subprocess

from slurm_jobs import FAST_STATUS, PROFILE, sacct_jobs, squeue_jobs, wait_for
from workflows import Workflow, environment

GRID = "results/train/grid/mnist/chunk0/runs.parquet"


def node_cpus() -> int:
    out = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%c"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return max(int(cpus) for cpus in out.split())


def test_threads_follow_the_largest_node(tmp_path, slurm_cluster):
    flow = Workflow(tmp_path)
    (tmp_path / "results" / "data").mkdir(parents=True)
    (tmp_path / "results" / "data" / "mnist.pt").touch()  # its job is not the one under test
    # threads=4, the profile's for a GPU job (here without a GPU, which this node has not): more CPUs than
    # a small node has. What SLURM is asked for is read from its queue, then the run is stopped.
    with open(tmp_path / "snakemake.log", "w") as log:
        run = flow.snakemake(*PROFILE, GRID, "--configfile", "config/quick.yaml", "--config", "gpus=0", "threads=4",
                             background=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        job = wait_for(lambda: next(iter(squeue_jobs(tmp_path)), None), "the train_grid job", 300, run,
                       tmp_path / "snakemake.log")
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(timeout=60)
        for job_id, *_ in squeue_jobs(tmp_path):
            subprocess.run(["scancel", job_id], check=True)
    cpus = node_cpus()
    assert job[2] == "rule_train_grid_wildcards__mnist_0" and job[3] == min(4, cpus), job
    capped = f"threads=4 (config) asks for 4 CPUs per job but the largest SLURM node has {cpus}: capped to {cpus}"
    assert (capped in (tmp_path / "snakemake.log").read_text()) == (cpus < 4)


def test_a_job_slurm_can_never_start_stops_the_study_naming_it_and_why(tmp_path, slurm_cluster, data_root):
    flow = Workflow(tmp_path)
    (tmp_path / "results" / "data").mkdir(parents=True)
    (tmp_path / "results" / "data" / "mnist.pt").touch()  # its job is not the one under test
    # --set-threads bypasses the cap, as a site's edit of the profile could: one CPU more than any node.
    too_many = node_cpus() + 1
    run = flow.snakemake(*PROFILE, *FAST_STATUS, "--configfile", "config/quick.yaml", "--config", "gpus=0",
                         "--set-threads", f"train_grid={too_many}", "--retries", "0", GRID,
                         env=environment(SOAP_DATA_ROOT=str(data_root)), timeout=480)
    out = run.stdout + run.stderr
    assert run.returncode != 0, out[-3000:]
    jobs = sacct_jobs(tmp_path)
    assert [job.state for job in jobs] == ["CANCELLED"], jobs
    assert (f"SLURM job {jobs[0].id}, rule train_grid (mnist_0), can never start: PENDING with "
            "Reason=PartitionConfig") in out, out[-3000:]
    assert "Error in rule train_grid" in out
