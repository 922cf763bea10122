"""Synthetic runs tables with known ground truth, to validate the analysis (STUDY.md's runs contract).

The generator's world is the study's hypothesis made exact:

- test loss is a U-shaped (quadratic) function of log(effective_lr) = log(lr * feedback_gain), plus a
  known direct effect per method, a seed effect shared by every method at that seed (paired seeds),
  and independent run noise;
- test accuracy is a known linear function of test loss plus its own noise, so every effect on
  accuracy is ``-acc_per_loss`` times the effect on loss;
- a run diverges, deterministically, when its effective learning rate exceeds ``diverge_elr``;
- examples_to_target is lognormal with a known median per method, independent of learning rate, and
  censored at the training budget (or at divergence).

`SyntheticSpec.expected_loss` and friends give the true values each estimand should recover.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from soap.tables import validate_runs


def _default_direct_effect() -> dict[str, float]:
    # Effects on test loss at matched effective learning rate (positive: worse than bp).
    return {"bp": 0.0, "fa": 0.15, "sign": 0.0, "sign_scaled": 0.05}


def _default_gain() -> dict[str, tuple[float, float]]:
    # (median, sd of log) of feedback_gain per run; sign amplifies the backward signal ~20x.
    return {"bp": (1.0, 0.0), "fa": (1.0, 0.05), "sign": (20.0, 0.15), "sign_scaled": (1.0, 0.1)}


def _default_median_examples() -> dict[str, float]:
    # Median examples to reach the target loss, per method (bp: one epoch of 50,000).
    return {"bp": 50_000.0, "fa": 100_000.0, "sign": 40_000.0, "sign_scaled": 120_000.0}


@dataclass(frozen=True)
class SyntheticSpec:
    """Ground truth and design of a synthetic study. Learning rates are nominal, losses in nats."""

    datasets: tuple[str, ...] = ("synthetic",)
    direct_effect: dict[str, float] = field(default_factory=_default_direct_effect)
    gain: dict[str, tuple[float, float]] = field(default_factory=_default_gain)
    median_examples: dict[str, float] = field(default_factory=_default_median_examples)
    grid_lrs: tuple[float, ...] = tuple(np.logspace(-4, 0, 9))
    grid_seeds: int = 10
    tuned_seeds: int = 20
    optimal_elr: float = 0.05  # effective learning rate at the bottom of the U
    min_loss: float = 0.08  # loss at the bottom of the U, before direct effects
    curvature: float = 0.03  # loss per squared natural-log unit of effective lr
    diverge_elr: float = 1.5  # runs above this effective learning rate diverge
    seed_sd: float = 0.02  # sd of the per-seed effect shared by all methods
    noise_sd: float = 0.02  # sd of run-level noise on test loss
    acc_at_zero_loss: float = 1.0
    acc_per_loss: float = 0.3  # test_acc = acc_at_zero_loss - acc_per_loss * test_loss + noise
    acc_noise_sd: float = 0.005
    examples_sd_log: float = 0.4  # sd of log(examples_to_target)
    budget_examples: float = 250_000.0  # examples seen by a run that does not diverge
    target_loss: float = 0.3  # the training-loss target examples_to_target refers to

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.direct_effect)

    def tuned_lr(self, method: str) -> float:
        """The argmin of the method's expected loss: optimal effective lr over its median gain."""
        return self.optimal_elr / self.gain[method][0]

    def expected_loss(self, method: str, lr: float) -> float:
        """E[test_loss] of a non-diverged run at nominal lr (closed form over the lognormal gain)."""
        median, sd_log = self.gain[method]
        offset = np.log(lr * median / self.optimal_elr)
        return self.min_loss + self.curvature * (offset**2 + sd_log**2) + self.direct_effect[method]

    def mediated_effect(self, lr: float, exposure: str = "sign", control: str = "sign_scaled") -> float:
        """True ACME at nominal lr: the loss change from moving the gain alone from control's to exposure's."""
        direct = self.direct_effect[exposure] - self.direct_effect[control]
        return self.expected_loss(exposure, lr) - self.expected_loss(control, lr) - direct

    def median_ratio(self, method: str, reference: str = "bp") -> float:
        return self.median_examples[method] / self.median_examples[reference]


def generate_runs(spec: SyntheticSpec | None = None, seed: int = 0) -> pd.DataFrame:
    """A runs table (grid and tuned phases, every dataset and method of `spec`) drawn with `seed`.

    Pure: the same (spec, seed) gives the same table. Seeds are paired: seed s carries the same seed
    effect for every method within a (dataset, phase).
    """
    spec = spec or SyntheticSpec()
    rng = np.random.default_rng(seed)
    designs = []
    for dataset in spec.datasets:
        for phase, n_seeds in (("grid", spec.grid_seeds), ("tuned", spec.tuned_seeds)):
            seed_effect = rng.normal(0.0, spec.seed_sd, n_seeds)
            for method in spec.methods:
                lrs = spec.grid_lrs if phase == "grid" else (spec.tuned_lr(method),)
                lr, seeds = (a.ravel() for a in np.meshgrid(lrs, np.arange(n_seeds), indexing="ij"))
                designs.append(
                    pd.DataFrame(
                        {"dataset": dataset, "phase": phase, "method": method, "lr": lr, "seed": seeds,
                         "seed_effect": seed_effect[seeds]}
                    )
                )
    runs = pd.concat(designs, ignore_index=True)
    return validate_runs(_draw_outcomes(runs, spec, rng), source="synthetic runs")


def _draw_outcomes(design: pd.DataFrame, spec: SyntheticSpec, rng: np.random.Generator) -> pd.DataFrame:
    n = len(design)
    method = design["method"].to_numpy()
    median_gain = np.array([spec.gain[m][0] for m in method])
    sd_log_gain = np.array([spec.gain[m][1] for m in method])
    gain = median_gain * np.exp(sd_log_gain * rng.standard_normal(n))
    elr = design["lr"].to_numpy() * gain
    direct = np.array([spec.direct_effect[m] for m in method])

    loss = (spec.min_loss + spec.curvature * np.log(elr / spec.optimal_elr) ** 2 + direct
            + design["seed_effect"].to_numpy() + spec.noise_sd * rng.standard_normal(n))
    acc = spec.acc_at_zero_loss - spec.acc_per_loss * loss + spec.acc_noise_sd * rng.standard_normal(n)
    diverged = elr > spec.diverge_elr

    median_examples = np.array([spec.median_examples[m] for m in method])
    examples = median_examples * np.exp(spec.examples_sd_log * rng.standard_normal(n))
    # A diverged run stops early, at a random fraction of the budget.
    examples_seen = np.where(diverged, spec.budget_examples * rng.uniform(0.05, 0.5, n), spec.budget_examples)
    reached = examples <= examples_seen

    out = design.drop(columns="seed_effect")
    out["run_id"] = [
        f"{d}-{p}-{m}-lr{lr:.4g}-s{s}"
        for d, p, m, lr, s in zip(out["dataset"], out["phase"], method, out["lr"], out["seed"])
    ]
    out["feedback_gain"] = gain
    out["effective_lr"] = elr
    out["diverged"] = diverged
    nan_if_diverged = lambda x: np.where(diverged, np.nan, x)  # noqa: E731
    out["final_train_loss"] = nan_if_diverged(loss - 0.02)
    out["val_loss"] = nan_if_diverged(loss + 0.01 * rng.standard_normal(n))
    out["val_acc"] = nan_if_diverged(acc + 0.005 * rng.standard_normal(n))
    out["test_loss"] = nan_if_diverged(loss)
    out["test_acc"] = nan_if_diverged(acc)
    out["examples_to_target"] = np.where(reached, examples, np.nan)
    out["reached_target"] = reached
    out["examples_seen"] = examples_seen
    out["target_loss"] = spec.target_loss
    return out
