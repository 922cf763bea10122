"""The verdict (soap.analysis.verdict), the primary test (soap.analysis.primary) and `soap verdict`, on
synthetic factorial worlds whose truth is known (soap.synthetic_factorial) and on hand-made tables."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from soap.analysis.errors import AnalysisError
from soap.analysis.primary import choose_lr, non_inferiority, power
from soap.analysis.verdict import study_verdict
from soap.cli import main
from soap.synthetic_factorial import FACTORIAL_WORLDS, generate_factorial_runs

MARGINS = {"test_loss": 0.02, "test_acc": 0.5, "log_lr": 0.25}
PRIMARY = {"rule": "sign", "outcome": "test_loss", "margin": None}


def _verdict(world, seed=0, seeds=10, **changes):
    spec = replace(FACTORIAL_WORLDS[world], seeds=seeds, **changes)
    return study_verdict(generate_factorial_runs(spec, seed=seed), PRIMARY, MARGINS, ["sign"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_opposite_truths_give_opposite_answers(seed):
    # pure step size: bp@sign = sign in expectation; a direction worth 0.08 nats (4 margins): bp@sign is worse
    step = _verdict("pure_step", seed).answer
    direction = _verdict("direction_better", seed, direction_effect=-0.08).answer
    assert step["verdict"] == "supported" and step["sentence"].endswith("sign's advantage is its step size.")
    assert direction["verdict"] == "contradicted"
    assert direction["sentence"].endswith("is not only its step size: its direction matters.")
    for result in (step, direction):
        assert result["sentence"].startswith(f"At lr {result['lr']:.3g}, where sign beats bp by")
        assert result["r_beats_bp"] and result["advantage"] > 0


def test_no_advantage_anywhere_is_stated_as_such():
    # sign's steps are bp's (gain 1) and its direction costs 0.05 nats: it beats bp nowhere
    answer = _verdict("pure_step", hidden_gain=(1.0, 1.0), gain_sd=0.0, seed_gain=0.0, direction_effect=0.05).answer
    assert not answer["r_beats_bp"]
    assert answer["sentence"].startswith("sign beats bp at no grid lr on validation loss")


def test_inconclusive_says_the_data_cannot_tell():
    # 3 seeds and 5x the run noise: the 90% interval is about 6 margins wide, so most draws are inconclusive
    answers = [_verdict("pure_step", seed, seeds=3, noise_sd=0.05).answer for seed in range(5)]
    inconclusive = [a for a in answers if a["verdict"] == "inconclusive"]
    assert len(inconclusive) >= 3
    for answer in inconclusive:
        assert answer["sentence"].endswith("may or may not be its step size: the data cannot tell at this size "
                                           "(3 seeds).")


def test_the_lr_is_chosen_on_validation_not_test():
    # validation says sign's advantage is largest at the first lr, test says at the second
    rows = []
    for lr, (val_gap, test_gap) in {0.01: (0.3, 0.1), 0.1: (0.1, 0.3)}.items():
        for seed in range(4):
            for method, step, gap in (("bp", "bp", 0), ("sign", "sign", 1), ("bp", "sign", 1), ("sign", "bp", 0)):
                rows.append({"dataset": "d", "phase": "grid", "method": method, "step_rule": step, "seed": seed,
                             "lr": lr, "diverged": False, "val_loss": 1 - gap * val_gap + 0.01 * seed,
                             "test_loss": 1 - gap * test_gap, "test_acc": 0.5})
    runs = pd.DataFrame(rows)
    assert choose_lr(runs, "sign") == (0.01, pytest.approx(0.3), True)


def test_one_sided_test_matches_scipy_and_its_bounds():
    rng = np.random.default_rng(0)
    for _ in range(50):
        d = rng.normal(0.01, 0.02, 6)
        test = non_inferiority(d, 0.02)
        assert test["p"] == pytest.approx(stats.ttest_1samp(d, 0.02, alternative="less").pvalue)
        low, high = stats.t.interval(0.90, 5, d.mean(), stats.sem(d))
        assert (test["lower"], test["upper"]) == pytest.approx((low, high))
        assert (test["verdict"] == "supported") == (test["p"] < 0.05)
        assert (test["verdict"] == "contradicted") == (low > 0.02)


def test_power_is_the_size_at_the_margin_and_matches_simulation():
    assert power(5, effect=0.02, sd=0.01, margin=0.02) == pytest.approx(0.05)
    rng = np.random.default_rng(1)
    draws = rng.normal(0.0, 0.02, (4000, 5))
    simulated = np.mean([non_inferiority(d, 0.02)["verdict"] == "supported" for d in draws])
    expected = power(5, effect=0.0, sd=0.02, margin=0.02)
    assert 0.3 < expected < 0.7  # where a wrong df or a two-sided critical value moves it most
    assert simulated == pytest.approx(expected, abs=4 * np.sqrt(expected * (1 - expected) / 4000))


def test_secondary_rows_are_holm_adjusted_among_themselves():
    table = _verdict("pure_step").verdict
    primary = table[table["primary"]]
    assert len(primary) == 1 and (primary["kind"] == "primary").all()
    assert primary["p_holm"].iloc[0] == primary["p"].iloc[0]
    assert primary[["row", "outcome"]].iloc[0].tolist() == ["primary", "test_loss"]
    secondary = table[~table["primary"]]
    assert (secondary["kind"] == "secondary").all() and len(secondary) == 3
    np.testing.assert_allclose(secondary["p_holm"], multipletests(secondary["p"], method="holm")[1])
    assert set(table["verdict"]) <= {"supported", "contradicted", "inconclusive"}
    assert (table["predicted"] == "non-inferior").all()


def test_descriptive_rows_have_no_verdict_and_identities_give_none():
    # sign vs sign_scaled under signsgd (an identity) and adam (what the data show); sign_scaled at 2
    # feedback scales, with bp at both as its calibration
    rng = np.random.default_rng(0)
    base = generate_factorial_runs(replace(FACTORIAL_WORLDS["pure_step"], seeds=4), seed=0)
    extra = []
    for optimizer in ("signsgd", "adam"):
        for method in ("sign", "sign_scaled"):
            part = base[(base["method"] == "bp") & (base["step_rule"] == "bp")].copy()
            part["method"], part["step_rule"], part["optimizer"] = method, method, optimizer
            part["test_loss"] += 0.1 * (method == "sign") * (optimizer == "adam")
            extra.append(part)
    for method, alpha in (("sign_scaled", 1.0), ("sign_scaled", 4.0), ("bp", 4.0)):
        part = base[(base["method"] == "bp") & (base["step_rule"] == "bp")].copy()
        part["method"], part["step_rule"], part["feedback_scale"] = method, method, alpha
        part["test_loss"] += 0.03 * (alpha == 4.0) + 0.02 * (method == "sign_scaled" and alpha == 4.0)
        part["test_loss"] += rng.normal(0, 1e-3, len(part))
        extra.append(part)
    runs = pd.concat([base, *extra], ignore_index=True)
    runs["run_id"] = np.arange(len(runs)).astype(str)
    result = study_verdict(runs, PRIMARY, MARGINS, ["sign"], n_boot=100)
    d = result.descriptive
    assert "verdict" not in d.columns
    optimizer = d[d["row"] == "optimizer"]
    assert list(optimizer["contrast"].unique()) == ["sign - sign_scaled under adam"]
    assert optimizer.loc[optimizer["outcome"] == "test_loss", "estimate"].iloc[0] == pytest.approx(0.1)
    alpha = d[d["row"] == "alpha_did"].iloc[0]
    # sign_scaled's alpha effect is 0.05, bp's own is 0.03: the difference in differences is 0.02
    assert alpha["contrast"] == "sign_scaled: alpha 4 vs 1 minus bp's alpha effect"
    assert alpha["estimate"] == pytest.approx(0.02, abs=3e-3)
    assert not set(result.verdict["row"]) & set(d["row"])


def test_cli_writes_the_four_files_and_names_a_missing_arm(tmp_path, caplog):
    runs = generate_factorial_runs(replace(FACTORIAL_WORLDS["pure_step"], seeds=6), seed=0)
    first, second = tmp_path / "a.csv", tmp_path / "b.parquet"
    runs.iloc[: len(runs) // 2].to_csv(first, index=False)
    runs.iloc[len(runs) // 2:].to_parquet(second)
    config = tmp_path / "study.yaml"
    config.write_text("analysis:\n  primary: {margin: 0.05}\ninterventions:\n  factorial: [sign]\n")
    out = tmp_path / "verdict"
    args = ["verdict", "--runs", str(first), "--runs", str(second), "--out", str(out), "--config", str(config)]
    assert main(args) == 0
    verdict = pd.read_csv(out / "verdict.csv")
    for column in ("dataset", "row", "contrast", "outcome", "unit", "estimate", "ci_low", "ci_high", "verdict",
                   "primary", "kind", "p_holm"):
        assert column in verdict.columns
    assert verdict.loc[verdict["primary"], "margin"].iloc[0] == 0.05
    assert (out / "decomposition.csv").exists() and (out / "descriptive.csv").exists()
    import json
    answer = json.loads((out / "answer.json").read_text())
    assert answer["margin"] == 0.05 and answer["sentence"]
    # without the bp@sign cell: exit 2 and one line naming it
    runs[~((runs["method"] == "bp") & (runs["step_rule"] == "sign"))].to_csv(first, index=False)
    caplog.clear()
    assert main(["verdict", "--runs", str(first), "--out", str(out), "--config", str(config)]) == 2
    err = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(err) == 1 and "\n" not in err[0] and "no bp@sign runs (method bp, step_rule sign) in" in err[0]
    assert "needs interventions.factorial to include sign" in err[0]


def test_a_dataset_of_two_architectures_is_refused_not_pooled():
    # every verdict row is per dataset: an MLP's and a LeNet-5's factorial would be pooled into one
    mlp = generate_factorial_runs(replace(FACTORIAL_WORLDS["pure_step"], seeds=3), seed=0)
    lenet = mlp.assign(architecture="lenet5", run_id="lenet-" + mlp["run_id"])
    with pytest.raises(AnalysisError, match="dataset 'synthetic' holds runs of architectures lenet5, mlp"):
        study_verdict(pd.concat([mlp, lenet], ignore_index=True), PRIMARY, MARGINS, ["sign"])
