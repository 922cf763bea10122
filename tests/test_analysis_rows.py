"""soap.analysis.rows: the estimates table's rows, and the guard that keeps one failing estimand from
taking the others down."""

import numpy as np
import pytest

from soap.analysis.rows import ESTIMATES_COLUMNS, Collector, lower_is_better, ordered_methods, rng_for
from study_results import TOY


def test_a_row_has_every_column_with_its_defaults():
    out = Collector()
    out.row("tuned", "toy", "fa", "bp", "test_loss", {"estimate": 0.5, "ci_low": 0.1}, 3, "pairs", "paired t")
    table = out.table()
    assert tuple(table.columns) == ESTIMATES_COLUMNS
    row = table.iloc[0]
    assert (row["estimate"], row["ci_low"], row["n"], row["note"]) == (0.5, 0.1, 3, "")
    assert np.isnan(row["ci_high"]) and np.isnan(row["lr"]) and np.isnan(row["p_holm"])
    assert table["slopes_differ"].dtype == bool and not row["slopes_differ"]


def test_the_guard_turns_degenerate_data_into_a_skipped_reason_and_lets_bugs_through():
    out = Collector()
    out.guard("mediation", "toy", lambda: np.linalg.inv(np.zeros((2, 2))))  # LinAlgError is a ValueError
    assert [(s.estimand, s.dataset) for s in out.skipped] == [("mediation", "toy")]
    assert out.skipped[0].reason.startswith("could not be computed: LinAlgError: Singular matrix")
    with pytest.raises(TypeError):
        out.guard("mediation", "toy", lambda: None + 1)


def test_exclusions_keep_only_nonzero_counts():
    out = Collector()
    out.exclude("tuned", "toy", "fa", {"diverged": 2, "non-finite test_loss": 0})
    assert [(e.reason, e.n) for e in out.exclusions] == [("diverged", 2)]


def test_streams_depend_on_their_keys_not_on_the_order_of_analysis():
    assert rng_for(0, "poi", "toy").random() == rng_for(0, "poi", "toy").random()
    assert rng_for(0, "poi", "toy").random() != rng_for(0, "poi", "other").random()
    assert ordered_methods(TOY.assign(method=["sign", "bp", "fa", "bp", "fa", "sign"])) == ["bp", "fa", "sign"]
    assert lower_is_better("test_loss") and not lower_is_better("test_acc")
