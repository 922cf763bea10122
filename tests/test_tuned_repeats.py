"""The tuned estimand carries the tuning's own uncertainty (issue 11 item 5).

Tuned seed s trains at the lr its method's tuning repeat s mod R found (soap.pipeline.tuned_members),
and the contrast's interval is taken over repeats. A world where each repeat's lr choice moves the
outcome (tuning noise) checks the coverage of the expected tuned contrast, over tuning and seeds.
"""

import numpy as np
import pandas as pd

from soap.analysis.core import analyze
from soap.analysis.paired import paired_contrast, repeat_clustered_contrast
from soap.pipeline import label_tuned_repeats, tuned_members

TUNED = {"bp": {"lr": 0.1, "repeat_lrs": [0.05, 0.1, 0.2]}, "fa": {"lr": 0.3, "repeat_lrs": [0.3, 0.25, 0.4]}}


def test_each_seed_trains_at_its_repeats_lr_or_the_aggregate():
    members = tuned_members(["bp", "fa"], TUNED, range(5))
    assert [(m["method"], m["seed"], m["lr"]) for m in members] == [
        ("bp", 0, 0.05), ("bp", 1, 0.1), ("bp", 2, 0.2), ("bp", 3, 0.05), ("bp", 4, 0.1),
        ("fa", 0, 0.3), ("fa", 1, 0.25), ("fa", 2, 0.4), ("fa", 3, 0.3), ("fa", 4, 0.25)]
    assert {m["lr"] for m in tuned_members(["bp"], TUNED, range(5), "aggregate")} == {0.1}
    runs = pd.DataFrame({"method": ["bp", "fa", "fa"], "seed": [0, 4, 5]})
    assert list(label_tuned_repeats(runs, TUNED, "repeat")["tune_repeat"]) == [0, 1, 2]
    assert list(label_tuned_repeats(runs, TUNED, "aggregate")["tune_repeat"]) == [-1, -1, -1]


def _tuned_world(rng: np.random.Generator, truth: float, repeats: int = 4, seeds: int = 16) -> pd.DataFrame:
    """Test losses of bp and fa at their repeats' lrs: each (method, repeat) lr choice shifts the loss
    (sd 0.05, skewed: a repeat that lands far from the optimum costs more), each seed both arms
    (sd 0.03), plus run noise (sd 0.02)."""
    rows = []
    shift = {(m, r): rng.gamma(2.0, 0.025) for m in ("bp", "fa") for r in range(repeats)}
    for seed in range(seeds):
        repeat, seed_effect = seed % repeats, rng.normal(0, 0.03)
        for method, base in (("bp", 0.30), ("fa", 0.30 + truth)):
            rows.append({"run_id": f"{method}-{seed}", "phase": "tuned", "dataset": "mnist", "method": method,
                         "seed": seed, "lr": 0.1, "feedback_gain": 1.0 if method == "bp" else 2.0,
                         "diverged": False, "test_loss": base + shift[method, repeat] + seed_effect
                         + rng.normal(0, 0.02), "tune_repeat": repeat})
    return pd.DataFrame(rows)


def test_interval_over_repeats_covers_the_tuning_uncertainty_an_interval_over_seeds_misses():
    rng = np.random.default_rng(11)
    truth, replicates = 0.1, 400
    hits_repeats = hits_seeds = 0
    for _ in range(replicates):
        world = _tuned_world(rng, truth)
        by_repeat = repeat_clustered_contrast(world, "fa", "test_loss")
        by_seed = paired_contrast(world, "fa", "test_loss")
        hits_repeats += by_repeat["ci_low"] <= truth <= by_repeat["ci_high"]
        hits_seeds += by_seed["ci_low"] <= truth <= by_seed["ci_high"]
    # 400 replicates: a 95% interval lands in [0.92, 0.98] with probability > 0.99.
    assert 0.92 <= hits_repeats / replicates <= 0.98, hits_repeats
    assert hits_seeds / replicates < 0.80, hits_seeds  # seeds are not independent draws of the tuning


def test_analyze_takes_the_tuned_interval_over_repeats():
    world = _tuned_world(np.random.default_rng(3), truth=0.1)
    world = world.assign(test_acc=0.9, val_loss=world["test_loss"], val_acc=0.9, final_train_loss=0.2,
                         examples_to_target=np.nan, reached_target=False, architecture="mlp",
                         layers="784-256-256-10 tanh")
    rows = analyze(world, n_boot=50).estimates
    tuned = rows[(rows["estimand"] == "tuned") & (rows["outcome"] == "test_loss")].iloc[0]
    assert tuned["unit"] == "tuning repeats" and tuned["n"] == 4
    expected = repeat_clustered_contrast(world, "fa", "test_loss")
    assert np.isclose(tuned["estimate"], expected["estimate"]) and np.isclose(tuned["ci_low"], expected["ci_low"])
    one_repeat = analyze(world.assign(tune_repeat=-1), n_boot=50).estimates
    row = one_repeat[(one_repeat["estimand"] == "tuned") & (one_repeat["outcome"] == "test_loss")].iloc[0]
    assert row["unit"] == "pairs" and row["n"] == 16
