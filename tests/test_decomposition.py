"""The decomposition table (soap.analysis.decomposition) on small hand-made factorials: each effect is
its cell contrast paired by seed, divergence is counted and excludes a seed only from the effects that
need its cell, Holm runs over the whole table, and a missing arm is a one-line error."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from soap.analysis.decomposition import decomposition_table, factorial_rules, factorial_runs, require_cells
from soap.analysis.errors import AnalysisError

CELLS = {"bp": ("bp", "bp"), "r": ("sign", "sign"), "bp@r": ("bp", "sign"), "r@bp": ("sign", "bp")}


def table(values: dict[str, list[float]], lrs=(0.01,), seed_effect=None, diverged=()):
    """Runs of every cell at every lr: values[cell][seed] (+ 0.1 * lr index), plus a seed effect shared by
    every cell of a seed; `diverged` lists (cell, lr, seed) runs that diverged."""
    rows = []
    for i, lr in enumerate(lrs):
        for cell, (method, step) in CELLS.items():
            for seed, value in enumerate(values[cell]):
                value = value + 0.1 * i + (0 if seed_effect is None else seed_effect[seed])
                bad = (cell, lr, seed) in diverged
                rows.append({"run_id": f"{cell}-{lr}-{seed}", "phase": "grid", "dataset": "d", "method": method,
                             "step_rule": step, "seed": seed, "lr": lr, "diverged": bad,
                             "val_loss": np.nan if bad else value, "test_loss": np.nan if bad else value,
                             "test_acc": np.nan if bad else 1 - value, "architecture": "mlp"})
    return pd.DataFrame(rows)


VALUES = {"bp": [0.50, 0.52, 0.47, 0.55], "r": [0.30, 0.33, 0.29, 0.36],
          "bp@r": [0.31, 0.30, 0.30, 0.34], "r@bp": [0.49, 0.55, 0.46, 0.56]}


def _effect(t, effect, outcome="test_loss", lr=None):
    rows = t[(t["effect"] == effect) & (t["outcome"] == outcome)]
    return rows.iloc[0] if lr is None else rows[np.isclose(rows["lr"], lr)].iloc[0]


def test_each_effect_is_its_cell_contrast_paired_by_seed():
    t = decomposition_table(table(VALUES))
    v = {k: np.array(x) for k, x in VALUES.items()}
    expected = {"total": v["r"] - v["bp"], "step": v["bp@r"] - v["bp"], "direction_at_r_steps": v["r"] - v["bp@r"],
                "direction_at_bp_steps": v["r@bp"] - v["bp"],
                "interaction": (v["r"] - v["bp@r"]) - (v["r@bp"] - v["bp"])}
    for effect, diffs in expected.items():
        row = _effect(t, effect)
        low, high = stats.t.interval(0.95, len(diffs) - 1, diffs.mean(), stats.sem(diffs))
        assert row["estimate"] == pytest.approx(diffs.mean())
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high))
        assert row["p"] == pytest.approx(stats.ttest_1samp(diffs, 0).pvalue)
        # accuracy (1 - loss) in points: the same contrast, negated and times 100
        assert _effect(t, effect, "test_acc")["estimate"] == pytest.approx(-100 * diffs.mean())
    assert _effect(t, "interaction")["contrast"] == "sign - bp@sign - sign@bp + bp"


def test_a_seed_effect_shared_by_the_cells_cancels():
    # paired by seed, a large seed effect changes nothing; pairing over any other axis would widen the interval
    plain = decomposition_table(table(VALUES))
    shifted = decomposition_table(table(VALUES, seed_effect=[0.0, 1.0, -2.0, 3.0]).sample(frac=1, random_state=0))
    for column in ("estimate", "ci_low", "ci_high"):
        np.testing.assert_allclose(shifted[column].to_numpy(), plain[column].to_numpy(), atol=1e-12)


def test_a_diverged_run_is_counted_and_leaves_only_the_effects_that_need_its_cell():
    t = decomposition_table(table(VALUES, lrs=(0.01, 0.1), diverged={("r@bp", 0.1, 2)}))
    at = lambda effect: _effect(t, effect, lr=0.1)  # noqa: E731
    for effect in ("total", "step", "direction_at_r_steps"):  # none needs r@bp
        assert at(effect)["n"] == 4 and at(effect)["diverged"] == 0 and at(effect)["note"] == ""
    v = {k: np.delete(np.array(x) + 0.1, 2) for k, x in VALUES.items()}
    for effect, diffs in (("direction_at_bp_steps", v["r@bp"] - v["bp"]),
                          ("interaction", v["r"] - v["bp@r"] - v["r@bp"] + v["bp"])):
        row = at(effect)
        assert row["n"] == 3 and row["n_seeds"] == 4 and row["diverged"] == 1
        assert row["note"] == "sign@bp: 1 diverged"
        assert row["estimate"] == pytest.approx(diffs.mean())
    assert _effect(t, "interaction", lr=0.01)["n"] == 4  # the other lr keeps every seed


def test_holm_runs_over_every_row_of_the_table():
    t = decomposition_table(table(VALUES, lrs=(0.01, 0.1)))
    assert t["p"].notna().all() and len(t) == 2 * 2 * 5
    np.testing.assert_allclose(t["p_holm"], multipletests(t["p"], method="holm")[1])


def test_a_missing_arm_is_a_one_line_error_naming_it():
    runs = table(VALUES)
    runs = runs[~((runs["method"] == "bp") & (runs["step_rule"] == "sign"))]
    with pytest.raises(AnalysisError, match=r"^no bp@sign runs \(method bp, step_rule sign\) in RUNS: the primary "
                                            r"test needs interventions.factorial to include sign$"):
        require_cells(factorial_runs(runs), "sign")


def test_a_table_without_step_rule_has_step_rule_equal_to_method():
    runs = table(VALUES)
    plain = runs[runs["method"] == runs["step_rule"]].drop(columns="step_rule")
    cells = factorial_runs(plain)
    assert (cells["step_rule"] == cells["method"]).all() and factorial_rules(cells) == []
    assert factorial_rules(factorial_runs(runs)) == ["sign"]
    with pytest.raises(AnalysisError, match="no bp@sign runs"):
        require_cells(cells, "sign")
    with pytest.raises(AnalysisError, match="missing column.*val_loss"):
        factorial_runs(plain.drop(columns="val_loss"))


def test_two_architectures_get_their_own_rows_never_pooled():
    lenet_values = {cell: [v + 1.0 + 0.2 * (cell == "r") for v in values] for cell, values in VALUES.items()}
    runs = pd.concat([table(VALUES), table(lenet_values).assign(architecture="lenet5",
                                                                 run_id=lambda d: "lenet-" + d["run_id"])])
    t = decomposition_table(runs)
    assert len(t) == 2 * len(decomposition_table(table(VALUES)))
    for architecture, values in (("mlp", VALUES), ("lenet5", lenet_values)):
        v = {k: np.array(x) for k, x in values.items()}
        row = _effect(t[t["architecture"] == architecture], "total")
        assert row["estimate"] == pytest.approx((v["r"] - v["bp"]).mean()) and row["n"] == 4
    # one Holm family over both networks' rows
    assert t["p_holm"].to_numpy() == pytest.approx(multipletests(t["p"].to_numpy(), method="holm")[1])
    with pytest.raises(AnalysisError, match="missing column.* architecture"):
        decomposition_table(table(VALUES).drop(columns="architecture"))
