"""What the SLURM tests read from the cluster: sacct's and squeue's view of a workflow's jobs."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CLUSTER_SH = Path(__file__).resolve().parent / "cluster.sh"
PROFILE = ("--workflow-profile", "workflow/profiles/slurm")
# The executor plugin checks job states first after 40 s, then backs off; a short study has no time for it.
FAST_STATUS = ("--slurm-init-seconds-before-status-checks", "5")


@dataclass(frozen=True)
class AccountedJob:
    """One job as SLURM's accounting (sacct) has it."""
    id: str
    state: str
    comment: str  # the executor plugin's rule_<name>[_wildcards_<values>]
    submit: str
    start: str
    end: str


def sacct_jobs(workdir: Path) -> list[AccountedJob]:
    """Every job SLURM accounted with `workdir` as its working directory, in submission order."""
    out = subprocess.run(["sacct", "--allusers", "--allocations", "--noheader", "--parsable2",
                          "--starttime=now-1days", "--format=JobID,State,WorkDir,Submit,Start,End,Comment"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    jobs = []
    for line in out.splitlines():
        job_id, state, job_dir, submit, start, end, comment = line.split("|", 6)
        if Path(job_dir).resolve() == workdir.resolve():
            jobs.append(AccountedJob(job_id, state.split()[0], comment, submit, start, end))
    return sorted(jobs, key=lambda job: int(job.id))


def squeue_jobs(workdir: Path) -> list[tuple[str, str, str, int]]:
    """(id, state, comment, CPUs asked for) of the jobs SLURM still holds for `workdir`."""
    out = subprocess.run(["squeue", "--noheader", "--format=%i|%T|%C|%Z|%k"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    rows = [line.split("|", 4) for line in out.splitlines()]
    return [(i, state, comment, int(cpus)) for i, state, cpus, job_dir, comment in rows
            if Path(job_dir).resolve() == workdir.resolve()]


def wait_for(condition, what: str, timeout_s: float, process=None, log: Path | None = None):
    """Poll condition() until it returns something true (returned); fail on timeout or if `process` ends."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if process is not None and process.poll() is not None:
            raise AssertionError(f"snakemake ended (exit {process.returncode}) before {what}:\n"
                                 + (log.read_text()[-3000:] if log else ""))
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)
    return value
