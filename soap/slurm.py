"""What a SLURM cluster can run: its largest node, and a watch on jobs it never will.

Snakemake's SLURM executor submits what a rule asks for and waits for the job. A job asking for more
CPUs than any node has is accepted by sbatch and stays PENDING (Reason=PartitionConfig) for ever, and
the study waits with it. Three guards, all through SLURM's own commands (sinfo, squeue, scancel), used
by the workflow (workflow/rules/common.smk) in the Snakemake controller:

- largest_node(): the most CPUs and memory any node has, so a rule's threads are capped to it before
  submission (cap_threads, with a warning);
- Watch: a thread polling squeue for this workflow's jobs (by their working directory) that cancels a
  job which can never start, with an error naming its rule, wildcards and reason; Snakemake then
  reports the job failed and the study ends instead of waiting;
- wait_for_previous(): a controller killed mid-run leaves its jobs running in SLURM, their outputs
  marked incomplete; the next controller waits for them to end (then their outputs are finished) rather
  than submitting them a second time beside the first.

Off a cluster (no sinfo or squeue) every guard is a no-op.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from soap.files import write_atomic

log = logging.getLogger(__name__)

# Pending reasons SLURM gives a job that no amount of waiting will start: the request exceeds what the
# partition, its nodes or the association allow (squeue(1), JOB REASON CODES).
NEVER = frozenset({
    "PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints", "InvalidAccount",
    "InvalidQOS", "QOSMaxCpuPerJobLimit", "QOSMaxMemoryPerJob", "AssocMaxCpuPerJobLimit",
})
ACTIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED")
RULE_PREFIX = "rule_"  # the executor plugin's job comment: rule_<name>[_wildcards_<k=v,...>]


@dataclass(frozen=True)
class Node:
    cpus: int
    mem_mb: int


@dataclass(frozen=True)
class Job:
    """One line of squeue for a job of this workflow."""
    id: str
    state: str
    reason: str
    cpus: int
    mem_mb: int | None  # per node; None when the job asked per CPU or not at all
    comment: str

    @property
    def name(self) -> str:
        """rule and wildcards, from the comment the executor plugin gives each job."""
        rule, _, wildcards = self.comment.removeprefix(RULE_PREFIX).partition("_wildcards_")
        # The plugin joins wildcard values with "_": the main arm's empty {arm} leaves a leading one.
        wildcards = wildcards.strip("_")
        return f"rule {rule}" + (f" ({wildcards})" if wildcards else "")


def _run(command: list[str]) -> str | None:
    """A SLURM command's output; None when SLURM is not here or the command fails (with a warning)."""
    if shutil.which(command[0]) is None:
        return None
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("%s failed: %s", " ".join(command), err)
        return None
    if out.returncode != 0:
        # SLURM's clients explain a missing configuration in several lines; the last one says what failed.
        reason = (out.stderr.strip().splitlines() or [""])[-1][:300]
        log.warning("soap.slurm: %s failed (exit %d): %s", " ".join(command), out.returncode, reason)
        return None
    return out.stdout


def _mb(text: str) -> int | None:
    """squeue's or sinfo's memory (e.g. 8000, 8000M, 16G) in MB; None for a per-CPU request (suffix c)."""
    units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2}
    text = text.strip().rstrip("+")
    if not text or text.endswith(("c", "C")) or text == "N/A":
        return None
    if text[-1].upper() in units:
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(float(text))


def largest_node() -> Node | None:
    """The most CPUs and the most memory of any node SLURM knows (sinfo); None off a cluster."""
    out = _run(["sinfo", "--noheader", "--Node", "--format=%c %m"])
    nodes = [line.split() for line in (out or "").splitlines() if line.strip()]
    if not nodes:
        return None
    return Node(cpus=max(int(cpus.rstrip("+")) for cpus, _ in nodes),
                mem_mb=max(_mb(mem) or 0 for _, mem in nodes))


def cap_threads(threads: int, node: Node | None, what: str) -> int:
    """`threads`, or the largest node's CPUs when it has fewer (with a warning naming `what`)."""
    if node is None or threads <= node.cpus:
        return threads
    log.warning("soap.slurm: %s asks for %d CPUs per job but the largest SLURM node has %d: capped to %d",
                what, threads, node.cpus, node.cpus)
    return node.cpus


def workflow_jobs(workdir: str | os.PathLike) -> list[Job]:
    """This workflow's active SLURM jobs: those the executor plugin submitted with `workdir` as theirs."""
    out = _run(["squeue", "--noheader", "--states=" + ",".join(ACTIVE), "--format=%i|%T|%r|%C|%m|%Z|%k"])
    workdir = Path(workdir).resolve()
    jobs = []
    for line in (out or "").splitlines():
        fields = line.split("|", 6)
        if len(fields) < 7 or not fields[6].startswith(RULE_PREFIX) or Path(fields[5]).resolve() != workdir:
            continue
        job_id, state, reason, cpus, mem, _, comment = fields
        jobs.append(Job(job_id, state, reason, int(cpus), _mb(mem), comment))
    return jobs


def never_starts(job: Job, node: Node | None) -> str | None:
    """Why `job` can never start, or None if it may: a never-reason, or a request beyond every node
    (the workflow's jobs are one-node jobs, so a job's CPUs and memory must fit on one)."""
    if job.state != "PENDING":
        return None
    if job.reason in NEVER:
        return f"PENDING with Reason={job.reason}"
    if node is not None and job.cpus > node.cpus:
        return f"PENDING (Reason={job.reason}): it asks for {job.cpus} CPUs, the largest node has {node.cpus}"
    if node is not None and job.mem_mb is not None and job.mem_mb > node.mem_mb:
        return (f"PENDING (Reason={job.reason}): it asks for {job.mem_mb} MB, "
                f"the largest node has {node.mem_mb} MB")
    return None


class Watch:
    """Cancel this workflow's jobs that SLURM can never start, with an error saying which and why.

    A job is cancelled once it has been seen unschedulable on `polls` successive polls, `poll_s` apart,
    so a reason that clears by itself (a partition briefly reconfigured) does not kill it.
    """

    def __init__(self, workdir: str | os.PathLike, poll_s: float = 10, polls: int = 2):
        self.workdir, self.poll_s, self.polls = workdir, poll_s, polls
        self.seen: dict[str, int] = {}  # job id: successive polls it was seen unschedulable

    def check(self) -> None:
        """One poll: count, and cancel, the jobs that never start."""
        node = largest_node()
        stuck = {}
        for job in workflow_jobs(self.workdir):
            why = never_starts(job, node)
            if why is not None:
                stuck[job.id] = (job, why)
        self.seen = {job_id: self.seen.get(job_id, 0) + 1 for job_id in stuck}
        for job_id, count in self.seen.items():
            if count >= self.polls:
                job, why = stuck[job_id]
                log.error("soap.slurm: SLURM job %s, %s, can never start: %s. Cancelling it: lower its threads or "
                          "resources, or submit to a partition with larger nodes", job_id, job.name, why)
                _run(["scancel", job_id])

    def start(self) -> threading.Thread:
        """Poll in a daemon thread for the life of the controller."""
        def loop():
            while True:
                try:
                    self.check()
                except Exception:  # a watch that dies silently would bring back the endless wait
                    log.exception("the SLURM pending-job watch failed")
                time.sleep(self.poll_s)

        thread = threading.Thread(target=loop, name="soap-slurm-watch", daemon=True)
        thread.start()
        return thread


CONTROLLER = Path(".snakemake") / "soap-slurm-controller"  # "host pid start" of the controller here


def _started(pid: int) -> str | None:
    """A process's start time (/proc/PID/stat, field 22): with the pid, it names one process even after
    the pid is reused. None when no such process runs."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def record_controller(workdir: str | os.PathLike) -> None:
    """Note this process as the workflow's controller (its onstart: after Snakemake's directory lock)."""
    line = f"{socket.gethostname()} {os.getpid()} {_started(os.getpid())}\n"
    write_atomic(Path(workdir) / CONTROLLER, lambda tmp: Path(tmp).write_text(line))


def controller_dead(workdir: str | os.PathLike) -> bool:
    """Whether the last controller recorded in `workdir` ran on this host and has died (SIGKILL, a lost
    login shell). False when none was recorded, or it still runs, or it ran on another host (where this
    one cannot tell): then Snakemake's own directory lock decides."""
    try:
        host, pid, started = (Path(workdir) / CONTROLLER).read_text().split()
    except (FileNotFoundError, ValueError):
        return False
    return host == socket.gethostname() and _started(int(pid)) != started


def previous_jobs(workdir: str | os.PathLike) -> list[Job]:
    """This workflow's jobs that a dead controller left active in SLURM. Empty inside one of the
    workflow's own jobs (its SLURM_JOB_ID is among them), whose siblings are not leftovers."""
    if not controller_dead(workdir):
        return []
    jobs = workflow_jobs(workdir)
    if any(job.id == os.environ.get("SLURM_JOB_ID") for job in jobs):
        return []
    return jobs


def wait_for_previous(workdir: str | os.PathLike, poll_s: float = 10) -> None:
    """Block until the jobs a dead controller left in `workdir` have ended, so that a new controller
    finds their outputs finished and submits none of them twice."""
    jobs = previous_jobs(workdir)
    while jobs:
        log.warning("soap.slurm: waiting for %d SLURM job(s) that a killed controller left running in %s: %s",
                    len(jobs), Path(workdir).resolve(), ", ".join(f"{job.id} {job.name} {job.state}" for job in jobs))
        time.sleep(poll_s)
        jobs = previous_jobs(workdir)
