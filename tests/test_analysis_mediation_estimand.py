"""soap.analysis.mediation_estimand: the mediation rows, or the reason there are none."""

import pytest

from soap.analysis.core import analyze
from soap.synthetic import SyntheticSpec, generate_runs


def test_dataset_without_sign_methods_skips_mediation():
    runs = generate_runs(SyntheticSpec(grid_seeds=4, tuned_seeds=4), seed=0)
    runs = runs[runs["method"].isin(["bp", "fa"])]
    result = analyze(runs, n_boot=100)
    assert result.summary.mediation == {}
    assert "no sign and sign_scaled" in result.summary.skipped_reason("mediation", "synthetic")
    assert not result.estimates["estimand"].str.startswith("mediation").any()
    assert set(result.estimates["method"]) == {"fa"}


def test_mediation_rows_are_the_four_effects_of_sign_over_sign_scaled():
    result = analyze(generate_runs(SyntheticSpec(grid_lrs=(1e-3, 1e-2, 1e-1), grid_seeds=4, tuned_seeds=4), seed=0),
                     n_boot=50, outcomes=("test_loss",))
    rows = result.estimates[result.estimates["estimand"].str.startswith("mediation")]
    assert sorted(rows["estimand"]) == ["mediation_acme", "mediation_ade", "mediation_prop", "mediation_total"]
    assert set(zip(rows["method"], rows["reference"])) == {("sign", "sign_scaled")}
    block = result.summary.mediation["synthetic"]
    acme, ade, total = (rows.set_index("estimand").loc[f"mediation_{k}", "estimate"] for k in ("acme", "ade", "total"))
    assert block.acme.estimate == pytest.approx(acme) and total == pytest.approx(acme + ade, rel=1e-6)
