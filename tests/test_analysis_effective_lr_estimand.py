"""soap.analysis.effective_lr_estimand: the effective_lr rows, and the slopes_differ flag a figure reads
instead of a note's words."""

import numpy as np
import pytest

from soap.analysis.core import analyze
from soap.analysis.effective_lr_estimand import slopes_differ
from soap.synthetic import SyntheticSpec, generate_runs

pytestmark = [pytest.mark.filterwarnings("ignore:omni_normtest is not valid")]


def test_slopes_differ_at_five_percent():
    assert slopes_differ({"p_value": 0.049}) and not slopes_differ({"p_value": 0.05})
    assert not slopes_differ({"p_value": None}) and not slopes_differ({})


def test_a_method_with_another_slope_is_flagged_on_its_rows_only():
    spec = SyntheticSpec(grid_lrs=tuple(np.logspace(-3, -1, 5)), grid_seeds=6, tuned_seeds=4)
    runs = generate_runs(spec, seed=2)
    # fa's loss falls 0.3 per e-fold of lr faster than bp's would: a slope bp does not share.
    fa = (runs["method"] == "fa") & (runs["phase"] == "grid")
    runs.loc[fa, "test_loss"] -= 0.3 * np.log(runs.loc[fa, "lr"] / 1e-2)
    estimates = analyze(runs, n_boot=50, outcomes=("test_loss",)).estimates
    elr = estimates[estimates["estimand"] == "effective_lr"].set_index("method")
    assert elr.loc["fa", "slopes_differ"] and "slope" in elr.loc["fa", "note"]
    assert not elr.loc["sign_scaled", "slopes_differ"] and elr.loc["sign_scaled", "note"] == ""
    assert not estimates.loc[estimates["estimand"] != "effective_lr", "slopes_differ"].any()
