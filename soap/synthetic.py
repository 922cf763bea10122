"""Synthetic runs tables with known ground truth, to validate the analysis (STUDY.md's runs contract).

The default world is the study's hypothesis made exact:

- test loss is a U-shaped (quadratic) function of log(effective_lr) = log(lr * feedback_gain), plus a
  known direct effect per method, a seed effect shared by every method at that seed (paired seeds),
  and independent run noise;
- test accuracy is a known linear function of test loss plus its own noise, so every effect on
  accuracy is ``-acc_per_loss`` times the effect on loss;
- a run diverges, deterministically, when its effective learning rate exceeds ``diverge_elr``;
- examples_to_target is lognormal with a known median per method, independent of learning rate, and
  censored at the training budget (or at divergence).

Worlds the analysis models do NOT fit exactly (WORLDS), each one knob of SyntheticSpec:

- seed confounding (`seed_gain`): the seed moves the feedback gain of every non-bp method as well as
  the loss (initial weights plausibly do both), so gain and loss are correlated through the seed;
- asymmetric U (`curvature_high`): the loss rises faster above the optimal effective lr than below;
- output-layer share (`output_share`): the output layer's step is never scaled by the feedback, so a
  share of the U is a function of the nominal lr, not the effective one;
- divergence at the edge (`edge_width`): divergence becomes likely over a band of effective lrs
  instead of at a threshold, so edge cells lose some seeds, selected on their gain.

Truths (`expected_loss`, `expected_contrast`, `mediated_effect`, `tuned_lr`, ...) are computed from
the spec by Gauss-Hermite quadrature over the seed and gain draws, never from the analysis.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from scipy import optimize, stats

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
    seed_sd: float = 0.02  # sd of the per-seed effect on loss shared by all methods
    seed_gain: float = 0.0  # log feedback gain per seed sd, for every method but bp (seed confounding)
    curvature_high: float | None = None  # curvature above the optimum (None: = curvature, a symmetric U)
    output_share: float = 0.0  # share of the U taken at the nominal lr (the output layer's unscaled step)
    edge_width: float = 0.0  # sd (log elr) of the divergence edge; 0: diverge exactly above diverge_elr
    noise_sd: float = 0.02  # sd of run-level noise on test loss
    acc_at_zero_loss: float = 1.0
    acc_per_loss: float = 0.3  # test_acc = acc_at_zero_loss - acc_per_loss * test_loss + noise
    acc_noise_sd: float = 0.005
    examples_sd_log: float = 0.4  # sd of log(examples_to_target)
    budget_examples: float = 250_000.0  # examples seen by a run that does not diverge
    target_loss: float = 0.3  # the training-loss target examples_to_target refers to
    architecture: str = "mlp"  # the network the runs table says trained (runs-table columns architecture, layers)
    layers: str = "784-256-256-10 tanh"

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.direct_effect)

    def tuned_lr(self, method: str) -> float:
        """The argmin over nominal lr of the method's expected loss (a closed form in the default world)."""
        if self.is_default_shape:
            return self.optimal_elr / self.gain[method][0]
        guess = np.log(self.optimal_elr / self.gain[method][0])
        best = optimize.minimize_scalar(lambda x: self.expected_loss(method, float(np.exp(x))),
                                        bounds=(guess - 3, guess + 3), method="bounded",
                                        options={"xatol": 1e-6})
        return float(np.exp(best.x))

    @property
    def is_default_shape(self) -> bool:
        return self.curvature_high is None and self.output_share == 0 and self.edge_width == 0

    def u_shape(self, log_elr: np.ndarray, log_lr: np.ndarray | float) -> np.ndarray:
        """The loss's learning-rate term: a U in log effective lr, a share of it in log nominal lr."""
        def u(x):
            x = x - np.log(self.optimal_elr)
            high = self.curvature if self.curvature_high is None else self.curvature_high
            return np.where(x > 0, high, self.curvature) * x**2
        return (1 - self.output_share) * u(log_elr) + self.output_share * u(np.asarray(log_lr, dtype=float))

    def survival(self, log_elr: np.ndarray) -> np.ndarray:
        """P(a run does not diverge) at log effective lr."""
        edge = np.log(self.diverge_elr)
        if self.edge_width == 0:
            return (log_elr <= edge).astype(float)
        return stats.norm.sf((log_elr - edge) / self.edge_width)

    def _log_gain_nodes(self, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Quadrature nodes (seed u, log gain) and weights for one method's run."""
        u, z, w = _nodes()
        median, sd_log = self.gain[method]
        seed_gain = 0.0 if method == "bp" else self.seed_gain
        return u, np.log(median) + sd_log * z + seed_gain * u, w

    def expected_loss(self, method: str, lr: float, given_survival: bool = False) -> float:
        """E[test_loss] of a run at nominal lr (of a run that did not diverge, if given_survival)."""
        _, log_gain, w = self._log_gain_nodes(method)
        log_elr = np.log(lr) + log_gain
        weight = w * (self.survival(log_elr) if given_survival else 1.0)
        value = self.min_loss + self.u_shape(log_elr, np.log(lr)) + self.direct_effect[method]
        return float((weight * value).sum() / weight.sum())

    def expected_contrast(self, method: str, lr: float, reference_lr: float | None = None,
                          reference: str = "bp") -> float:
        """E[loss_method - loss_reference] over seeds where both runs survive (the paired estimand),
        the reference at reference_lr (default: the same lr). The shared seed effect cancels; bp's
        gain does not depend on the seed, so only the method's survival selects seeds."""
        ref_lr = lr if reference_lr is None else reference_lr
        u, log_gain, w = self._log_gain_nodes(method)
        _, ref_gain, _ = self._log_gain_nodes(reference)
        log_elr, ref_elr = np.log(lr) + log_gain, np.log(ref_lr) + ref_gain
        weight = w * self.survival(log_elr) * self.survival(ref_elr)
        diff = (self.u_shape(log_elr, np.log(lr)) + self.direct_effect[method]
                - self.u_shape(ref_elr, np.log(ref_lr)) - self.direct_effect[reference])
        return float((weight * diff).sum() / weight.sum())

    def tuned_contrast(self, method: str, reference: str = "bp") -> float:
        return self.expected_contrast(method, self.tuned_lr(method), self.tuned_lr(reference), reference)

    def mediated_effect(self, lr: float, exposure: str = "sign", control: str = "sign_scaled",
                        given_survival: bool = False) -> float:
        """True ACME at nominal lr: the loss change from moving the gain alone from control's to exposure's
        (among runs that did not diverge, if given_survival: what an analysis of surviving runs sees)."""
        direct = self.direct_effect[exposure] - self.direct_effect[control]
        return (self.expected_loss(exposure, lr, given_survival) - self.expected_loss(control, lr, given_survival)
                - direct)

    def median_ratio(self, method: str, reference: str = "bp") -> float:
        return self.median_examples[method] / self.median_examples[reference]


@functools.cache
def _nodes(n: int = 24) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 2-d probabilists' Gauss-Hermite grid over (seed u, gain noise z), both standard normal."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / w.sum()
    u, z = (a.ravel() for a in np.meshgrid(x, x, indexing="ij"))
    return u, z, np.outer(w, w).ravel()


def _world(**changes) -> SyntheticSpec:
    return replace(SyntheticSpec(), **changes)


# Worlds the analysis's models do not fit exactly (see the module docstring), by name.
WORLDS: dict[str, SyntheticSpec] = {
    "default": SyntheticSpec(),
    # The seed moves sign's gain by e^0.3 per seed sd and the loss by 0.03: pooled over seeds, a
    # higher gain comes with a higher loss, which a mediation without seed effects reads as mediation.
    "seed_confounding": _world(seed_sd=0.03, seed_gain=0.3),
    # The loss climbs three times as fast above the optimum as below it.
    "asymmetric_u": _world(curvature_high=0.09),
    # A third of the U follows the nominal lr (the output layer's step).
    "output_share": _world(output_share=1 / 3),
    # Divergence over a band half a log unit wide around effective lr 1.5.
    "divergence_edge": _world(edge_width=0.5),
}


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
            seed_effect = rng.standard_normal(n_seeds)  # u: in seed sds
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
    u = design["seed_effect"].to_numpy()
    seed_gain = np.where(method == "bp", 0.0, spec.seed_gain)
    gain = median_gain * np.exp(sd_log_gain * rng.standard_normal(n) + seed_gain * u)
    elr = design["lr"].to_numpy() * gain
    direct = np.array([spec.direct_effect[m] for m in method])

    loss = (spec.min_loss + spec.u_shape(np.log(elr), np.log(design["lr"].to_numpy())) + direct
            + spec.seed_sd * u + spec.noise_sd * rng.standard_normal(n))
    acc = spec.acc_at_zero_loss - spec.acc_per_loss * loss + spec.acc_noise_sd * rng.standard_normal(n)
    diverged = rng.random(n) >= spec.survival(np.log(elr))

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
    out["architecture"], out["layers"] = spec.architecture, spec.layers
    return out
