"""soap as an installed package, not a checkout: a wheel in a fresh virtual environment, run from
outside the repository, tunes and analyses with nothing but what the wheel ships (the config schema is
package data; the library imports no workflow file and no Snakemake).

Affordable in CI: the wheel is built once, offline (--no-build-isolation, setuptools from the test
venv), and installed with --no-deps into a venv without pip. Its dependencies come from the test venv's
site-packages through a plain path in a .pth file: a path added that way has its own .pth files
ignored, so the test venv's editable install of this checkout stays out of sight, and `soap` can only
come from the wheel (the test checks where it was imported from).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml
from workflows import REPO


def _run(args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "LANG": "C.UTF-8"}  # no PYTHONPATH, no checkout
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv holding only the soap wheel; returns its bin/ folder."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"  # a copy, so the build leaves nothing in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "soap"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"),
          str(source)], cwd=root)
    (wheel,) = (root / "dist").glob("soap-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
          str(wheel)], cwd=root)
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root)
    Path(site.stdout.strip(), "test_venv_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def test_wheel_install_tunes_and_analyses_outside_the_checkout(installed, tmp_path):
    where = _run([str(installed / "python"), "-c", "import soap; print(soap.__file__)"], cwd=tmp_path)
    assert where.stdout.startswith(str(installed.parent)), where.stdout  # the wheel's soap, not the checkout's
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({"train": {"hidden": [8], "eval_subset": 128},
                                      "tune": {"n_trials": 2, "batch": 2, "epochs": 0.25}, "gpus": 0}))
    _run([str(installed / "soap"), "tune", "--method", "fa", "--dataset", "synthetic", "--config", str(config),
          "--out", "tuned", "--quiet"], cwd=tmp_path)
    assert json.loads((tmp_path / "tuned" / "best.json").read_text())["n_trials"] == 2

    # A runs table with known structure, then the analysis stage on it.
    _run([str(installed / "python"), "-c", "from soap.synthetic import SyntheticSpec, generate_runs; "
          "generate_runs(SyntheticSpec(), seed=0).to_parquet('runs.parquet')"], cwd=tmp_path)
    _run([str(installed / "soap"), "analyze", "--runs", "runs.parquet", "--out", "analysis", "--n-boot", "100"],
         cwd=tmp_path)
    assert (tmp_path / "analysis" / "summary.json").is_file() and (tmp_path / "analysis" / "estimates.csv").is_file()
    # Bad input is still one line naming the key, from the schema the wheel ships.
    config.write_text(yaml.safe_dump({"tune": {"n_trials": 0}}))
    bad = subprocess.run([str(installed / "soap"), "tune", "--method", "fa", "--config", str(config)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert bad.returncode == 2 and "tune.n_trials: 0 is less than the minimum of 1" in bad.stderr, bad.stderr


def test_the_readme_install_brings_what_snakemake_report_needs(installed):
    """The README installs with `pip install -e .` (no extras). `snakemake --report` needs pygments, so
    soap's own metadata must pull it in: read the requirement chain from the installed metadata, as pip
    resolves it (soap -> snakemake[reports] -> pygments). The report itself is built by the README's
    command in tests/test_pipeline.py, in the test venv, with pygments required and shown to be needed."""
    script = """
import importlib.metadata as md
from packaging.requirements import Requirement
soap = [Requirement(r) for r in md.requires("soap")]
plain = [r for r in soap if r.marker is None or r.marker.evaluate({"extra": ""})]
snake = next(r for r in plain if r.name == "snakemake")
pulled = [Requirement(r).name.lower() for r in md.requires("snakemake")
          if Requirement(r).marker is not None and any(Requirement(r).marker.evaluate({"extra": e}) for e in snake.extras)]
print(sorted(snake.extras), pulled)
"""
    out = _run([str(installed / "python"), "-c", script], cwd=installed).stdout
    assert out.split("]")[0] == "['reports'" and "pygments" in out, out
