"""soap.analysis.tuning_budget: expected best validation loss by hand, which trials are i.i.d., tuned lrs at an edge."""

import numpy as np
import pandas as pd
import pytest

from soap.analysis.tuning_budget import budget_curves, tuned_lrs_at_edge


def test_expected_best_validation_loss_by_hand():
    from soap.analysis.tuning_budget import expected_best

    # Best of k draws with replacement from {1, 2, 3}: k = 1 the mean; k = 2: P(min = 1) = 1 - (2/3)^2,
    # P(min = 2) = (2/3)^2 - (1/3)^2, P(min = 3) = (1/3)^2, so 5/9 + 2 * 3/9 + 3 * 1/9 = 14/9.
    assert expected_best(np.array([3.0, 1.0, 2.0]), 1) == pytest.approx(2.0)
    assert expected_best(np.array([3.0, 1.0, 2.0]), 2) == pytest.approx(14 / 9)
    assert expected_best(np.array([3.0, 1.0, 2.0]), 200) == pytest.approx(1.0)


def test_iid_trials_are_the_random_ones_or_tpe_startup():
    from soap.analysis.tuning_budget import at_edge, iid_trials

    trials = pd.DataFrame({"dataset": "mnist", "method": "fa", "repeat": "0", "number": range(8),
                           "value": np.arange(8.0), "state": "COMPLETE"})
    chosen, which = iid_trials(trials, startup=4)
    assert list(chosen["number"]) == [0, 1, 2, 3] and "startup" in which
    flagged = trials.assign(origin=["random", "tpe"] * 4)  # as soap.tuning.study.trials_frame writes it
    chosen, which = iid_trials(flagged, startup=4)
    assert list(chosen["number"]) == [0, 2, 4, 6] and "recorded origin" in which
    assert at_edge(1.05e-3, 1e-3, 3.0) == "low" and at_edge(2.9, 1e-3, 3.0) == "high"
    assert at_edge(0.05, 1e-3, 3.0) is None


def test_budget_curves_pool_the_repeats_by_hand():
    # Random draws 3 and 1 in repeat 0, 2 in repeat 1; a TPE trial is left out. Best of k from {1, 2, 3}:
    # k = 1 the mean 2; k = 3: P(min = 1) = 19/27, P(min = 2) = 7/27, P(min = 3) = 1/27, so 36/27.
    trials = pd.DataFrame({"dataset": "mnist", "method": "fa", "repeat": ["0", "0", "0", "1"], "number": [0, 1, 2, 0],
                           "value": [3.0, 1.0, 0.5, 2.0], "state": "COMPLETE",
                           "origin": ["random", "random", "tpe", "random"]})
    curves, which = budget_curves(trials, startup=None)
    assert "recorded origin" in which
    assert curves["budget"].tolist() == [1, 2, 3] and (curves["n_trials"] == 3).all()
    assert curves["expected_best"].tolist() == pytest.approx([2.0, 14 / 9, 36 / 27])


def test_tuned_lrs_at_an_edge_of_the_search_range():
    # [1e-3, 3]: 5% of its log width is a factor 3000 ** 0.05 = 1.49 from either bound.
    edges = tuned_lrs_at_edge({"mnist": {"bp": 1.4e-3, "fa": 0.05, "sign": 2.1}, "fashion_mnist": {"fa": 1.6e-3}},
                              1e-3, 3.0)
    assert edges == {"mnist": {"bp": "low", "sign": "high"}, "fashion_mnist": {}}
