"""The real one-node SLURM cluster of tests/slurm/cluster.sh, and what the tests read from it.

These tests run only when named (`pytest tests/slurm`: pyproject's norecursedirs keeps the main suite
out of here); .ci/run brings the cluster up first. A cluster that is not up is brought up here (root,
apt) and taken down at the end; one that cannot start is an error, not a skip.
"""

from __future__ import annotations

import subprocess

import pytest
from slurm_jobs import CLUSTER_SH


def _node_up() -> bool:
    try:
        out = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%t"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and any(state in ("idle", "mix", "alloc") for state in out.stdout.split())


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running cluster: the one .ci/run started, else one started here (and stopped after)."""
    started = False
    if not _node_up():
        up = subprocess.run(["bash", str(CLUSTER_SH), "up"], capture_output=True, text=True, timeout=900)
        assert up.returncode == 0, f"tests/slurm/cluster.sh up failed:\n{up.stderr[-3000:]}"
        started = True
    yield
    if started:
        subprocess.run(["bash", str(CLUSTER_SH), "down"], capture_output=True, timeout=300)
