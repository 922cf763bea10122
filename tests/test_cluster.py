"""The SLURM profile (workflow/profiles/slurm) with the real snakemake-executor-plugin-slurm, no cluster.

A dry run plans the whole study; then stand-in SLURM commands on PATH record the sbatch call the plugin
makes for a training job, so the resources it asks for (GPU, memory, time, CPUs) are checked as SLURM
would receive them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

from workflows import REPO, Workflow, environment, run_snakemake

PROFILE = ("--workflow-profile", "workflow/profiles/slurm")


def test_dry_run_with_the_slurm_profile_plans_every_job_with_resources():
    dry = run_snakemake(REPO, "-n", *PROFILE, timeout=300)
    out = dry.stdout + dry.stderr
    assert dry.returncode == 0, out[-3000:]
    assert "Using workflow specific profile workflow/profiles/slurm" in out
    jobs = re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", out, flags=re.MULTILINE)
    assert {rule for rule, _ in jobs} >= {"prepare_data", "tune_study", "train_grid", "train_tuned", "gather_runs",
                                          "analyze", "report"}
    for rule, resources in jobs:
        assert "mem_mb=" in resources and "runtime=" in resources, rule
        # The profile sets gpus=1: the login node sees no GPU, the compute nodes do; every job that trains
        # (tuning, the grid, the tuned runs and each intervention arm's training) takes one.
        trains = rule == "tune_study" or rule.startswith("train_")
        assert ("gpu=1" in resources) == trains, (rule, resources)


FAKE = """#!/bin/sh
echo "$(basename "$0") $*" >> "{log}"
[ "$(basename "$0")" = sbatch ] && echo 4242
exit 0
"""


def test_training_job_is_submitted_with_a_gpu_memory_time_and_cpus(tmp_path):
    bin_dir, work = tmp_path / "bin", tmp_path / "work"
    bin_dir.mkdir()
    work.mkdir()
    flow = Workflow(work)
    calls = tmp_path / "calls.log"
    for name in ("sbatch", "sacct", "squeue", "sinfo", "scontrol", "sacctmgr", "sshare", "scancel"):
        (bin_dir / name).write_text(FAKE.format(log=calls))
        (bin_dir / name).chmod(0o755)
    (work / "results" / "data").mkdir(parents=True)
    (work / "results" / "data" / "mnist.pt").touch()  # its job is not the one under test

    with open(tmp_path / "snakemake.log", "w") as log:
        process = flow.snakemake(*PROFILE, "results/train/grid/mnist/chunk0/runs.parquet",
                                 "--default-resources", "slurm_account=soap", "slurm_partition=gpu",
                                 env=environment(path_prefix=str(bin_dir)), background=True, stdout=log,
                                 stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not (calls.exists() and "sbatch " in calls.read_text()):
                assert process.poll() is None, (tmp_path / "snakemake.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no sbatch call"
                time.sleep(0.2)
        finally:
            # The stand-in sacct never reports the job done: stop Snakemake once it has submitted.
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
    sbatch = next(line for line in calls.read_text().splitlines() if line.startswith("sbatch "))
    for flag in ("--gpus=1", "--mem 16000", "-t 480", "--cpus-per-task=4", "-A soap", "-p gpu",
                 "--config 'gpus=1'",
                 "--target-jobs 'train_grid:arm=,dataset=mnist,chunk=0'"):
        assert flag in sbatch, (flag, sbatch)


# --- soap.slurm's decisions, without a cluster (tests/slurm runs them against a real one) ---------------

def test_a_job_never_starts_for_a_config_reason_or_a_request_beyond_every_node():
    from soap.slurm import Job, Node, never_starts

    node = Node(cpus=2, mem_mb=24000)

    def job(state="PENDING", reason="Resources", cpus=1, mem_mb=4000):
        return Job("7", state, reason, cpus, mem_mb, "rule_train_grid_wildcards__mnist_0")

    assert never_starts(job(reason="PartitionConfig"), node) == "PENDING with Reason=PartitionConfig"
    assert "asks for 4 CPUs, the largest node has 2" in never_starts(job(cpus=4), node)
    assert "asks for 32000 MB" in never_starts(job(mem_mb=32000), node)
    # Waiting its turn on a node that fits it, or already running: left alone.
    assert never_starts(job(cpus=2, mem_mb=24000), node) is None
    assert never_starts(job(reason="Priority", mem_mb=None), node) is None
    assert never_starts(job(state="RUNNING", reason="None", cpus=4), node) is None
    assert job().name == "rule train_grid (mnist_0)"


def test_threads_are_capped_to_the_largest_node_with_a_warning(caplog):
    from soap.slurm import Node, cap_threads

    assert cap_threads(4, Node(cpus=2, mem_mb=1000), "threads=4 (config)") == 2
    assert "threads=4 (config) asks for 4 CPUs per job but the largest SLURM node has 2" in caplog.text
    caplog.clear()
    assert cap_threads(2, Node(cpus=2, mem_mb=1000), "x") == 2
    assert cap_threads(8, None, "x") == 8  # off a cluster: Snakemake's --cores decides
    assert caplog.text == ""


RECORD = "import sys, time; from soap.slurm import record_controller; record_controller(sys.argv[1]); " \
         "print('recorded', flush=True); time.sleep(600)"


def test_a_controller_is_dead_once_killed_and_alive_while_it_runs(tmp_path):
    from soap.slurm import CONTROLLER, controller_dead

    assert not controller_dead(tmp_path)  # none recorded: nothing to wait for
    controller = subprocess.Popen([sys.executable, "-c", RECORD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                                  env=environment())
    try:
        assert controller.stdout.readline() == "recorded\n"
        assert not controller_dead(tmp_path)
    finally:
        controller.kill()
        controller.wait(timeout=60)
    assert controller_dead(tmp_path)
    # Recorded on another host: this one cannot tell, so it does not call it dead.
    host, pid, started = (tmp_path / CONTROLLER).read_text().split()
    (tmp_path / CONTROLLER).write_text(f"elsewhere {pid} {started}\n")
    assert not controller_dead(tmp_path)


FAILING_SINFO = """#!/bin/sh
echo "$(basename "$0") $*" >> "{log}"
echo "sinfo: error: fetch_config: DNS SRV lookup failed" >&2
echo "sinfo: fatal: Could not establish a configuration source" >&2
exit 1
"""


def test_a_local_study_where_slurm_does_not_answer_polls_no_slurm_command(tmp_path, data_root):
    # A machine with SLURM's clients but no cluster (or an unconfigured one): a local run asks sinfo
    # once, warns in one line, and then neither waits on nor watches any SLURM job.
    bin_dir, work = tmp_path / "bin", tmp_path / "work"
    bin_dir.mkdir()
    work.mkdir()
    calls = tmp_path / "calls.log"
    (bin_dir / "sinfo").write_text(FAILING_SINFO.format(log=calls))
    for name in ("squeue", "scancel"):
        (bin_dir / name).write_text(FAKE.format(log=calls))
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    run = Workflow(work).snakemake("results/data/mnist.pt", "--cores", "1", "--configfile", "config/quick.yaml",
                                   env=environment(path_prefix=str(bin_dir), SOAP_DATA_ROOT=str(data_root)),
                                   timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    assert {line.split()[0] for line in calls.read_text().splitlines()} == {"sinfo"}
    warnings = [line for line in out.splitlines() if "sinfo --noheader" in line]
    assert warnings == ["soap.slurm: sinfo --noheader --Node --format=%c %m failed (exit 1): "
                        "sinfo: fatal: Could not establish a configuration source"]
