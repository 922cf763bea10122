"""Running the Snakemake workflow from tests: a scratch copy of it, and `python -m snakemake` in it.

Used through the `workflow` fixture (tests/conftest.py), or Workflow(dir) in module-scoped fixtures.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
QUICK = yaml.safe_load((REPO / "config" / "quick.yaml").read_text())
WORKFLOW_FILES = ("Snakefile", "config.yaml", "workflow", "config", "profiles")


def environment(path_prefix: str | None = None, keep_data_root: bool = True, **extra: str) -> dict:
    """The test's environment with this checkout's soap first on PYTHONPATH.

    keep_data_root=False drops $SOAP_DATA_ROOT, which would override a config's data.root."""
    env = {k: v for k, v in os.environ.items() if keep_data_root or k != "SOAP_DATA_ROOT"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    if path_prefix:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env['PATH']}"
    return {**env, **extra}


def run_snakemake(workdir: Path, *args: str, background: bool = False, env: dict | None = None,
                  timeout: float = 600, **kwargs):
    """`python -m snakemake ARGS` in workdir: a CompletedProcess (text output captured), or with
    background=True a Popen in its own session (kill it with os.killpg)."""
    command = [sys.executable, "-m", "snakemake", *args]
    env = environment() if env is None else env
    if background:
        return subprocess.Popen(command, cwd=workdir, env=env, start_new_session=True, **kwargs)
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout,
                          **kwargs)


class Workflow:
    """A scratch copy of the workflow (Snakefile, config, workflow/, profiles/)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        for name in WORKFLOW_FILES:
            source = REPO / name
            (shutil.copytree if source.is_dir() else shutil.copy)(source, self.root / name)

    def write_config(self, data_root: Path, name: str = "config/test.yaml", **changes) -> str:
        """config/quick.yaml on `data_root` (no download), with top-level keys replaced by `changes`."""
        config = {**QUICK, "data": {"root": str(data_root), "download": False}, **changes}
        (self.root / name).write_text(yaml.safe_dump(config))
        return name

    def snakemake(self, *args: str, **kwargs):
        return run_snakemake(self.root, *args, **kwargs)
