"""Three `soap tune` workers as three SLURM jobs on one Optuna study in PostgreSQL, one cancelled mid-trial.

The study must end with exactly tune.n_trials finished trials, numbered once; the cancelled worker loses
only the trial it was running (failed once its heartbeat stops, then redone by a live worker with the same
learning rate), and keeps the trials it had finished.
"""

from __future__ import annotations

import subprocess
import sys

import yaml
from slurm_jobs import sacct_jobs, squeue_jobs, wait_for
from workflows import environment

from soap.tuning import WORKER_ATTR, open_storage

N_TRIALS = 6
FINISHED = ("COMPLETE", "PRUNED")


def submit_worker(root, config, storage, index: int, env: dict) -> str:
    # The batch shell records its pid, then becomes the worker: the pid in the worker's trial tags.
    command = (f"echo $$ > worker-$SLURM_JOB_ID.pid && exec {sys.executable} -m soap.cli tune --method fa "
               f"--dataset mnist --config {config} --out out{index} --storage {storage} --quiet")
    return subprocess.run(["sbatch", "--parsable", "--chdir", str(root), "--output", f"{root}/worker-%j.log",
                           "--cpus-per-task=1", "--mem=2000", "--time=20", "--comment", f"soap-tune-{index}",
                           "--wrap", command], capture_output=True, text=True, check=True, env=env,
                          timeout=60).stdout.strip()


def test_three_workers_on_slurm_end_with_exactly_n_trials_and_a_cancelled_one_loses_only_its_trial(
        tmp_path, slurm_cluster, postgres_url, data_root):
    import optuna

    config = tmp_path / "config.yaml"
    # One trial per ask and a few seconds each on MNIST, so the cancel lands inside one.
    config.write_text(yaml.safe_dump({
        "train": {"hidden": [32, 32], "epochs": 0.5, "log_every": 256, "eval_every": 2048, "eval_subset": 500,
                  "val_size": 2000},
        "gpus": 0,
        "tune": {"n_trials": N_TRIALS, "batch": 1, "epochs": 0.5, "heartbeat_interval": 1, "grace_period": 5}}))
    env = environment(SOAP_DATA_ROOT=str(data_root))
    jobs = [submit_worker(tmp_path, config, postgres_url, i, env) for i in range(3)]
    storage = open_storage(postgres_url)

    def trials():
        names = [summary.study_name for summary in optuna.get_all_study_summaries(storage)]
        return optuna.load_study(study_name=names[0], storage=storage).trials if names else []

    def worker_pid(job_id: str) -> str | None:
        pid_file = tmp_path / f"worker-{job_id}.pid"
        return pid_file.read_text().strip() if pid_file.exists() else None

    def running_trial():
        """(job, its worker's tag, its trial) for a worker that is inside a trial."""
        pids = {worker_pid(job): job for job in jobs if worker_pid(job)}
        for trial in trials():
            tag = trial.user_attrs.get(WORKER_ATTR, "")
            if trial.state.name == "RUNNING" and tag.split(":")[1:2] and tag.split(":")[1] in pids:
                return pids[tag.split(":")[1]], tag, trial.number
        return None

    doomed, doomed_tag, doomed_trial = wait_for(running_trial, "a worker inside a trial", 600)
    subprocess.run(["scancel", doomed], check=True)
    wait_for(lambda: not squeue_jobs(tmp_path), "the other workers to finish", 900)

    final = trials()
    states = {job.id: job.state for job in sacct_jobs(tmp_path)}
    assert states == {doomed: "CANCELLED", **{job: "COMPLETED" for job in jobs if job != doomed}}, states
    finished = [t for t in final if t.state.name in FINISHED]
    assert len(finished) == N_TRIALS  # exactly the budget
    assert [t.number for t in final] == list(range(len(final)))  # numbered once, none missing
    failed = [t for t in final if t.state.name == "FAIL"]
    assert [t.number for t in failed] == [doomed_trial]  # only the trial it was running is lost ...
    redo = [t for t in finished if t.params["lr"] == failed[0].params["lr"]]
    assert len(redo) == 1 and redo[0].user_attrs[WORKER_ATTR] != doomed_tag  # ... redone once, by a peer
    # The cancelled worker keeps whatever it had finished; no other trial failed or was redone.
    kept = [t for t in final if t.user_attrs.get(WORKER_ATTR) == doomed_tag and t.number != doomed_trial]
    assert all(t.state.name in FINISHED for t in kept)
    assert len(final) == N_TRIALS + 1
