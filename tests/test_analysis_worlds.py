"""Recovery and interval coverage in every synthetic world, including those the models do not fit.

For each world of soap.synthetic.WORLDS, R independent studies (10 grid seeds, 16 tuned seeds, as in
the default study) are drawn and analysed estimand by estimand; the truth comes from the spec's
quadrature, never from the analysis. Bands are binomial: with R = 40 intervals of true coverage 0.95,
P(hits < 34) ~ 0.01, so [0.85, 1] fails a correct method rarely and catches one that covers 75% or
less (the percentile bootstrap at few pairs, mediation without seed effects: 0 of 50). Bias is checked
against the Monte Carlo SE of the mean estimate (4 SE). These bands catch under-coverage and bias;
whether an interval is needlessly wide is checked at small n, with two-sided bands, in
tests/test_analysis_bootstrap.py.

Run this file as a script to print the table of truth, mean estimate and coverage per world.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import pytest

from soap.analysis.effective_lr import fit_lr_model
from soap.analysis.inputs import at_lr
from soap.analysis.mediation import fit_mediation, pooled_rows
from soap.analysis.paired import paired_contrast
from soap.analysis.time_to_target import median_ratio, survival_data
from soap.synthetic import WORLDS, generate_runs

R = 40
SMALL_LR = 1e-3
# effective_lr's truth is the direct effect only where the outcome depends on lr through the
# effective lr alone; with an output-layer share it also depends on the nominal lr (no single truth).
EFFECTIVE_LR_WORLDS = ("default", "seed_confounding", "asymmetric_u", "divergence_edge")


def _design(world: str):
    return replace(WORLDS[world], grid_seeds=10, tuned_seeds=16)


@functools.cache
def evaluate(world: str) -> dict[str, dict]:
    """{estimand: {truths, estimates, hits, n}} over R studies drawn from `world` (the truth can differ
    between studies: the pooled mediation's lrs are the ones healthy in that study)."""
    spec = _design(world)
    out: dict[str, dict] = {}

    def record(name, truth, result, log=False):
        entry = out.setdefault(name, {"truths": [], "estimates": [], "hits": 0, "n": 0})
        entry["n"] += 1
        entry["truths"].append(truth)
        estimate = result["estimate"]
        entry["estimates"].append(np.log(estimate) if log else estimate)
        entry["hits"] += bool(result["ci_low"] <= truth <= result["ci_high"])

    for r in range(R):
        runs = generate_runs(spec, seed=50_000 + r)
        grid, tuned = runs[runs["phase"] == "grid"], runs[runs["phase"] == "tuned"]
        for method in ("fa", "sign"):
            record(f"tuned {method}", spec.tuned_contrast(method), paired_contrast(tuned, method, "test_loss"))
            record(f"small_lr {method}", spec.expected_contrast(method, SMALL_LR),
                   paired_contrast(at_lr(grid, SMALL_LR), method, "test_loss"))
        if world in EFFECTIVE_LR_WORLDS:
            fit = fit_lr_model(grid, "test_loss")
            for method in ("fa", "sign"):
                record(f"effective_lr {method}", spec.direct_effect[method] - spec.direct_effect["bp"],
                       fit.coef[method])
        rows, _ = pooled_rows(grid, "test_loss")
        med = fit_mediation(rows, "test_loss", 100, np.random.default_rng(r), "pooled")
        # Healthy cells only: where divergence is a band, the runs there are survivors.
        acme = float(np.mean([spec.mediated_effect(lr, given_survival=True) for lr in med.lrs]))
        ade = spec.direct_effect["sign"] - spec.direct_effect["sign_scaled"]
        for part, truth in (("acme", acme), ("ade", ade), ("total", acme + ade)):
            record(f"mediation {part}", truth, med.effects[part])
        surv = survival_data(tuned, np.nan)
        ratio = median_ratio(surv, "fa", 200, np.random.default_rng(r))
        record("time_to_target fa", np.log(spec.median_ratio("fa")),
               {"estimate": ratio["estimate"], "ci_low": np.log(ratio["ci_low"]), "ci_high": np.log(ratio["ci_high"])})
        out["time_to_target fa"]["estimates"][-1] = np.log(ratio["estimate"])
    return out


def _check(world: str, estimand: str, min_coverage: float = 0.85):
    entry = evaluate(world)[estimand]
    estimates = np.array(entry["estimates"])
    coverage = entry["hits"] / entry["n"]
    se = estimates.std(ddof=1) / np.sqrt(len(estimates))
    assert coverage >= min_coverage, (world, estimand, coverage)
    truth = np.mean(entry["truths"])
    assert abs(estimates.mean() - truth) <= 4 * se + 1e-9, (world, estimand, estimates.mean(), truth)


@pytest.mark.parametrize("world", list(WORLDS))
def test_paired_contrasts_recover_the_truth_and_cover(world):
    for estimand in ("tuned fa", "tuned sign", "small_lr fa", "small_lr sign"):
        _check(world, estimand)


@pytest.mark.parametrize("world", EFFECTIVE_LR_WORLDS)
def test_effective_lr_recovers_the_direct_effect(world):
    for estimand in ("effective_lr fa", "effective_lr sign"):
        _check(world, estimand)


@pytest.mark.parametrize("world", [w for w in WORLDS if w != "asymmetric_u"])
def test_mediation_recovers_acme_ade_and_total(world):
    # Seed fixed effects in both models: in the seed-confounded world the pooled analysis without
    # them reverses the ACME and covers 0 of 50 times.
    for part in ("acme", "ade", "total"):
        _check(world, f"mediation {part}")


def test_mediation_under_an_asymmetric_u_is_biased_and_says_so_by_its_width():
    # The outcome model's U is symmetric: the world's is three times steeper above the optimum. The
    # total (model-free in effect: both arms observed) still covers; the split does not have to.
    _check("asymmetric_u", "mediation total")


@pytest.mark.parametrize("world", list(WORLDS))
def test_time_to_target_ratio_recovers_and_covers(world):
    _check(world, "time_to_target fa")


def table() -> str:
    lines = [f"{'world':18} {'estimand':22} {'truth':>9} {'mean est':>9} {'coverage':>9}"]
    for world in WORLDS:
        for estimand, e in evaluate(world).items():
            lines.append(f"{world:18} {estimand:22} {np.mean(e['truths']):9.4f} {np.mean(e['estimates']):9.4f} "
                         f"{e['hits'] / e['n']:9.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
