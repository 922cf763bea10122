"""soap.analysis.divergence: rates per cell with Wilson intervals, and the logistic model or its reason."""

from dataclasses import replace

import numpy as np
import pytest

from soap.analysis.core import analyze
from soap.analysis.divergence import divergence_block, divergence_cells
from soap.analysis.summary import Summary
from soap.synthetic import SyntheticSpec, generate_runs
from study_results import SMALL, make_runs


def test_divergence_rates_and_a_logistic_model_or_its_reason():
    # Sharp edge (the default world): lr and gain tell exactly which runs diverge, no finite MLE.
    result = analyze(generate_runs(SMALL, seed=0), n_boot=50, outcomes=("test_loss",))
    block = result.summary.divergence["synthetic"]
    sign = [c for c in block.cells if c.method == "sign" and c.lr == pytest.approx(0.1)][0]
    assert (sign.n_runs, sign.n_diverged, sign.rate) == (4, 4, 1.0) and sign.ci_low < 1 == sign.ci_high
    assert "separation" in block.note and block.coef == {}
    # A soft edge: divergence a probability; sign diverges far more often than bp at the same lr.
    soft = replace(SMALL, grid_lrs=tuple(np.logspace(-3, 0, 7)), grid_seeds=10, edge_width=1.0, diverge_elr=0.5)
    block = analyze(generate_runs(soft, seed=1), n_boot=50, outcomes=("test_loss",)).summary.divergence["synthetic"]
    assert block.coef["sign"].ci_low > 1 and block.coef["sign"].unit == "runs"


def test_wilson_cells_by_hand():
    # fa diverges in 1 of 4 runs at lr 0.1; nothing else diverges.
    runs = make_runs([("grid", m, s, lr, 1.0 + s) for m in ("bp", "fa") for s in range(4) for lr in (0.01, 0.1)
                      if not (m == "fa" and s == 0 and lr == 0.1)] + [("grid", "fa", 0, 0.1, np.nan, True)])
    summary = Summary(outcome="test_loss", datasets=["toy"], methods=["bp", "fa"], n_runs=len(runs))
    divergence_block(summary, runs, "toy")
    cells = divergence_cells(summary).set_index(["method", "lr"])
    # Wilson at k = 1, n = 4: (p + z^2 / 2n) / (1 + z^2 / n) -+ z sqrt(p q / n + z^2 / 4n^2) / (1 + z^2 / n)
    z, n, p = 1.959964, 4, 0.25
    centre, half = (p + z**2 / (2 * n)) / (1 + z**2 / n), z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    fa = cells.loc[("fa", 0.1)]
    assert (fa["n_runs"], fa["n_diverged"], fa["rate"]) == (4, 1, 0.25)
    assert (fa["ci_low"], fa["ci_high"]) == pytest.approx((centre - half, centre + half), abs=1e-6)
    assert cells.loc[("bp", 0.01), "rate"] == 0.0 and cells.loc[("bp", 0.01), "ci_low"] == 0.0
    assert summary.divergence["toy"].note.startswith("Wilson 95% intervals per cell")
    assert divergence_cells(Summary(outcome="test_loss", datasets=[], methods=[], n_runs=0)).empty
