"""benchmarks/throughput.py --architecture lenet5 at a tiny size: a conventional-loop rate, then one row
per population size, shape and logging setting, each with its rate, its ratio to the loop and its
fractions of both references."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# LeNet-5's FLOPs per SGD example by hand: forward 2 x (6*25*28*28 + 16*150*10*10 + 120*400 + 84*120 + 10*84),
# the weight gradients as many again, the input gradients of every layer but the first as many as its forward
FORWARD = 2 * (6 * 25 * 784 + 16 * 150 * 100 + 120 * 400 + 84 * 120 + 10 * 84)
LENET_FLOPS = 2 * FORWARD + FORWARD - 2 * 6 * 25 * 784
ROW = re.compile(r"^\s*(independent|shared order)\s+(\d+)\s+(default|off)\s+([\d,]+)\s+([\d.]+)x\s+(\d+)%\s+(\d+)%"
                 r"\s+([\d.]+)\s+([\d.]+)$")


def test_lenet5_path_gives_a_row_per_population_size_shape_and_logging(data_root):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--architecture", "lenet5",
                           "--data-root", str(data_root), "--examples", "256", "--pops", "1,2", "--repeats", "1",
                           "--threads", "1"], env=env, check=True, capture_output=True, text=True, timeout=600)
    lines = done.stdout.splitlines()
    conventional = re.search(r"conventional loop \(DataLoader \+ lenet5 nn.Module, one model at a time, fa\): "
                             r"([\d,]+) examples/s", done.stdout)
    assert conventional and float(conventional.group(1).replace(",", "")) > 0
    rows = [ROW.match(line).groups() for line in lines if ROW.match(line)]
    # P = 1 has one data order either way; P = 2 both shapes; each with logging on and off
    assert [(shape, int(pop), logging) for shape, pop, logging, *_ in rows] == [
        ("independent", 1, "default"), ("independent", 1, "off"), ("independent", 2, "default"),
        ("independent", 2, "off"), ("shared order", 2, "default"), ("shared order", 2, "off")]
    conv = float(conventional.group(1).replace(",", ""))
    for *_, rate, ratio, _of_peak, of_shape, peak, shape_peak in rows:
        rate = float(rate.replace(",", ""))
        assert rate > 0 and float(peak) > 0 and float(shape_peak) > 0 and int(of_shape) > 0
        assert abs(float(ratio) - rate / conv) <= 0.05 + 0.01 * rate / conv  # the printed ratio is rate / loop
        # the fraction of the shape peak is LeNet-5's work at that rate over the step's own conv/GEMM FLOP/s
        expected = 100 * rate * LENET_FLOPS / (float(shape_peak) * 1e9)
        assert abs(int(of_shape) - expected) <= 1 + 0.05 * expected
