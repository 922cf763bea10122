"""benchmarks/gpu_check.py in its CPU mode (no CUDA device here, as in CI): every section of the report
is there, the CPU-runnable ones measured at small sizes and passing, the CUDA-only ones unmeasured."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ["versions", "rules_cuda_vs_cpu", "mixed_vs_alone", "captured", "repeat", "syncs", "launches",
            "lease", "population_tests", "throughput"]
CUDA_ONLY = ["rules_cuda_vs_cpu", "syncs", "launches", "lease", "population_tests"]


def test_cpu_mode_measures_what_a_cpu_can_and_marks_the_rest_unmeasured(tmp_path):
    assert not torch.cuda.is_available()  # the CPU mode is what this test checks
    out = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--out", str(out)], env=env,
                   check=True, capture_output=True, timeout=300)
    report = json.loads(out.read_text())
    assert [key for key in report if key in SECTIONS] == SECTIONS
    for section in CUDA_ONLY:
        assert report[section] == {"status": "unmeasured: no CUDA device"}, section
    assert report["versions"]["device_type"] == "cpu" and report["versions"]["float32_matmul_precision"] == "highest"
    assert report["mixed_vs_alone"]["passed"]
    assert set(report["captured"]) >= {"sgd", "momentum", "adam", "signsgd"}
    assert all(report["captured"][kind]["bitwise_equal"] for kind in ("sgd", "momentum", "adam", "signsgd"))
    assert report["repeat"]["bitwise_equal"]
    assert report["throughput"]["tf32_peak_tflops"] == "unmeasured: no CUDA device"
    runs = report["throughput"]["runs"]
    assert {(r["orders"], r["captured"]) for r in runs} == {(o, c) for o in ("shared", "independent")
                                                          for c in (False, True)}
    assert all(r["run_examples_per_s"] > 0 and r["tflops"] > 0 for r in runs)
