"""Bad input through the real entry points: one clear error naming the problem, nothing computed lost.

`soap` must exit with status 2 and print one line (no traceback); Snakemake must stop, with the failing
rule's log (or, for the config, its own output) naming the problem. Each test leaves results from an
earlier run in place and checks that they are byte-for-byte untouched afterwards.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml
from workflows import Workflow, environment


def soap(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "soap.cli", *args], cwd=cwd, env=environment(keep_data_root=False),
                          capture_output=True, text=True, timeout=300)


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The single line `soap` printed; checks status 2, no traceback, and that it names the problem."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and "ERROR" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def earlier_results(root: Path) -> dict:
    """Stand-ins for what an earlier run computed; returns their fingerprints (content and mtime)."""
    files = {
        "results/runs.parquet": b"PAR1 earlier runs table",
        "results/tune/synthetic/fa/r0/study.journal": b'{"op_code": 0}\n',
        "results/tune/synthetic/fa/r0/best.json": b'{"lr": 0.1, "value": 0.5, "n_trials": 4}\n',
        "results/data/mnist.pt": b"earlier prepared data",
        "results/analysis/summary.json": b"{}\n",
    }
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return fingerprints(root)


def fingerprints(root: Path) -> dict:
    return {str(p.relative_to(root)): (hashlib.md5(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted((root / "results").rglob("*")) if p.is_file()}


def small_config(path: Path, **changes) -> Path:
    values = {"train": {"hidden": [8], "epochs": 0.25, "eval_subset": 128},
              "tune": {"n_trials": 2, "batch": 2, "epochs": 0.25}, "gpus": 0}
    for section, value in changes.items():
        values[section] = {**values.get(section, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(values))
    return path


def test_invalid_config_value(tmp_path):
    before = earlier_results(tmp_path)
    config = small_config(tmp_path / "bad.yaml", tune={"n_trials": -1})
    proc = soap(tmp_path, "tune", "--method", "fa", "--dataset", "synthetic", "--config", str(config),
                "--out", "results/tune/synthetic/fa/r0", "--quiet")
    line = one_line_error(proc, "tune.n_trials", "-1 is less than the minimum of 1", "bad.yaml")
    print(line)
    assert fingerprints(tmp_path) == before


def test_unknown_method_name(tmp_path):
    before = earlier_results(tmp_path)
    config = small_config(tmp_path / "config.yaml")
    proc = soap(tmp_path, "tune", "--method", "sgn", "--dataset", "synthetic", "--config", str(config),
                "--out", "results/tune/synthetic/fa/r0", "--quiet")
    print(one_line_error(proc, "'sgn'", "unknown method", "known: bp, fa"))
    # In the study config, through Snakemake: stops before any job, naming the method.
    flow = Workflow(tmp_path)
    dry = flow.snakemake("-n", "--configfile", flow.write_config(tmp_path, methods=["bp", "sgn"]),
                         env=environment(keep_data_root=False))
    assert dry.returncode != 0 and "unknown method(s) ['sgn']" in dry.stdout + dry.stderr
    assert fingerprints(tmp_path) == before


def test_data_root_without_the_dataset(tmp_path):
    before = earlier_results(tmp_path)
    empty = tmp_path / "no-data"
    empty.mkdir()
    proc = soap(tmp_path, "prepare-data", "--dataset", "mnist", "--data-root", str(empty), "--no-download",
                "--out", "results/data/mnist.pt")
    print(one_line_error(proc, "mnist: files missing under", str(empty / "MNIST" / "raw"), "train-images-idx3-ubyte"))
    assert fingerprints(tmp_path) == before

    # Through Snakemake, a dataset never prepared: the prepare_data job fails and its log names the
    # missing files; the other dataset's prepared file and every other result stay as they were.
    flow = Workflow(tmp_path)
    config = flow.write_config(empty, datasets=["mnist", "fashion_mnist"])
    run = flow.snakemake("results/data/fashion_mnist.pt", "--cores", "1", "--configfile", config,
                         env=environment(keep_data_root=False))
    assert run.returncode != 0
    log = (tmp_path / "logs" / "data" / "fashion_mnist.log").read_text()
    assert "DataError: fashion_mnist: files missing under" in log, log[-2000:]
    assert "logs/data/fashion_mnist.log" in run.stdout + run.stderr  # Snakemake points at the log
    assert fingerprints(tmp_path) == before


def test_corrupted_dataset_file(tmp_path, data_root):
    before = earlier_results(tmp_path)
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        (raw / name).symlink_to(data_root / "MNIST" / "raw" / name)
    labels = bytearray((data_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").read_bytes())
    labels[100] ^= 0xFF  # one flipped byte: a label changed, the file still parses
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes(labels))
    proc = soap(tmp_path, "prepare-data", "--dataset", "mnist", "--data-root", str(tmp_path / "root"),
                "--no-download", "--out", "results/data/mnist.pt")
    print(one_line_error(proc, "md5 mismatch", str(raw / "t10k-labels-idx1-ubyte"), "download again"))
    assert fingerprints(tmp_path) == before


def test_runs_table_missing_columns(tmp_path):
    before = earlier_results(tmp_path)
    pd.DataFrame({"run_id": ["a"], "method": ["bp"], "lr": [0.1]}).to_parquet(tmp_path / "partial.parquet")
    proc = soap(tmp_path, "analyze", "--runs", "partial.parquet", "--out", "results/analysis")
    print(one_line_error(proc, "partial.parquet is missing required column(s): phase, dataset, seed"))
    assert fingerprints(tmp_path) == before
