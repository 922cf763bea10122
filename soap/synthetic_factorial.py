"""Synthetic runs tables of the direction x step-size factorial (STUDY.md), with known truth.

Beside soap.synthetic (whose worlds make the scalar-gain hypothesis exact), these worlds are built so
that the analysis models do NOT fit them exactly:

- per-layer steps with unequal layer weights: test loss is a sum over weight layers l of
  w_l * f(log(lr * g_l) - log s_l), f(x) = (exp(a x) - a x - 1) / a^2 (smooth, not quadratic: linear far
  below the optimum, exponential above it), with a different weight w_l and optimal step s_l per layer;
  the hidden layers' gains g_l are the step rule's, the output layer's is 1 for every rule;
- a seed confounder u_s shared by every cell of a seed: it moves the loss (seed_sd * u) and the log
  gain of every non-bp step rule (seed_gain * u), so gain and loss are correlated through the seed;
- asymmetric (skewed) run noise: a centred Gamma(gamma_shape) variate, shared by a run's validation and
  test loss (the same trained network), plus small independent evaluation noise on each;
- divergence at large steps: a run diverges when its largest per-layer log step plus a N(0, edge_sd)
  run draw exceeds log(diverge_step); its losses are NaN;
- few seeds (5 by default).

A cell is (direction, step): its method's error direction with its step_rule's per-layer sizes. The
direction of `rule` changes the loss by `direction_effect` at every step and by `interaction` more at
its own steps (the r cell). The runs follow the factorial contract: phase grid, optimizer sgd,
feedback_scale 1, step_rule, per-layer gains feedback_gain_l1, feedback_gain_l2 (feedback_gain their
geometric mean), paired by seed.

Truth (`expected_effect`) is exact: given u, the loss's expectation over the lognormal gain draws is
closed-form, and the seed confounder (with the survival of every cell a contrast needs, which depends
on u) is integrated by Gauss-Hermite quadrature. It never comes from an estimator.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import stats

from soap.factorial import CELL_NAMES, EFFECTS, cell_roles

@dataclass(frozen=True)
class FactorialSpec:
    """One factorial world: the design, the per-layer response and the noise. Losses in nats."""

    rule: str = "sign"
    datasets: tuple[str, ...] = ("synthetic",)
    grid_lrs: tuple[float, ...] = tuple(np.logspace(-3, 0.5, 8))  # half a decade apart, as config.yaml
    seeds: int = 5
    hidden_gain: tuple[float, ...] = (30.0, 8.0)  # rule's median gain per hidden layer (bp's is 1)
    layer_weight: tuple[float, ...] = (0.05, 0.02, 0.03)  # w_l: hidden layers, then the output layer
    layer_step: tuple[float, ...] = (0.3, 0.2, 0.1)  # s_l: the step of lowest loss per layer
    asymmetry: float = 0.8  # a of f
    min_loss: float = 0.08
    direction_effect: float = 0.0  # loss of rule's direction minus bp's, at every step
    interaction: float = 0.0  # added to the r cell alone (rule's direction at rule's steps)
    gain_sd: float = 0.1  # sd of a run's log gain per hidden layer (non-bp step rules)
    seed_gain: float = 0.15  # log gain per seed sd (non-bp step rules): the seed confounder
    seed_sd: float = 0.03  # loss per seed sd, shared by every cell of the seed
    noise_sd: float = 0.01  # sd of the skewed run noise
    gamma_shape: float = 2.0  # its skewness is 2 / sqrt(gamma_shape)
    eval_sd: float = 0.003  # independent noise of the validation and of the test evaluation
    diverge_step: float = 4.0
    edge_sd: float = 0.3
    acc_at_zero_loss: float = 1.0
    acc_per_loss: float = 0.3  # test_acc = acc_at_zero_loss - acc_per_loss * test_loss + noise
    acc_noise_sd: float = 0.002
    architecture: str = "mlp"  # the network the runs table says trained (runs-table columns architecture, layers)
    layers: str = "784-256-256-10 tanh"

    def gains(self, step_rule: str) -> np.ndarray:
        """Median per-hidden-layer gains of a step rule ("r" or "bp")."""
        return np.asarray(self.hidden_gain if step_rule == "r" else np.ones(len(self.hidden_gain)), dtype=float)

    def _cell_mean_given_u(self, cell: str, lr: float, u: np.ndarray) -> np.ndarray:
        """E[test_loss | u] of a cell at lr (over the gain draws, which are lognormal given u)."""
        direction, step = cell_roles(cell)
        noisy = step == "r"
        log_steps = np.log(lr) + np.log(np.append(self.gains(step), 1.0))  # hidden layers, output
        sd = np.append(np.full(len(self.hidden_gain), self.gain_sd if noisy else 0.0), 0.0)
        shift = np.append(np.full(len(self.hidden_gain), self.seed_gain if noisy else 0.0), 0.0)
        a = self.asymmetry
        total = np.full_like(u, self.min_loss, dtype=float)
        for w, s, m, sd_l, k in zip(self.layer_weight, self.layer_step, log_steps, sd, shift):
            c = m - np.log(s) + k * u
            total += w * (np.exp(a * c + a**2 * sd_l**2 / 2) - a * c - 1) / a**2
        total += self.direction_effect * (direction == "r") + self.interaction * (cell == "r")
        return total

    def _survival_given_u(self, cell: str, lr: float, u: np.ndarray) -> np.ndarray:
        _, step = cell_roles(cell)
        noisy = step == "r"
        largest = np.log(lr) + (np.log(self.gains(step)).max() + self.seed_gain * u) * noisy
        return stats.norm.sf((largest - np.log(self.diverge_step)) / self.edge_sd)

    def expected_cell(self, cell: str, lr: float) -> float:
        """E[test_loss] of a run of `cell` at lr (unconditional on survival)."""
        u, w = _hermite()
        return float((w * self._cell_mean_given_u(cell, lr, u)).sum())

    def expected_effect(self, effect: str, lr: float, outcome: str = "test_loss") -> float:
        """The paired estimand: E[sum_c coef_c * y_c] over seeds whose runs in every cell the effect
        needs did not diverge (test accuracy in points)."""
        u, w = _hermite()
        needed = EFFECTS[effect]
        weight = w * np.prod([self._survival_given_u(c, lr, u) for c in needed], axis=0)
        value = sum(coef * self._cell_mean_given_u(c, lr, u) for c, coef in needed.items())
        loss = float((weight * value).sum() / weight.sum())
        return loss if outcome == "test_loss" else -100.0 * self.acc_per_loss * loss

    def expected_primary(self, outcome: str = "test_loss") -> float:
        """E[bp@r - r] (the primary contrast), the same at every lr: both cells take r's steps."""
        loss = -(self.direction_effect + self.interaction)
        return loss if outcome == "test_loss" else -100.0 * self.acc_per_loss * loss

    def survival(self, cell: str, lr: float) -> float:
        u, w = _hermite()
        return float((w * self._survival_given_u(cell, lr, u)).sum())


@functools.lru_cache(maxsize=1)
def _hermite(n: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights for E over u ~ N(0, 1)."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return x, w / w.sum()


def generate_factorial_runs(spec: FactorialSpec | None = None, seed: int = 0,
                            cells: tuple[str, ...] = CELL_NAMES) -> pd.DataFrame:
    """A runs table of the factorial's cells (every dataset, grid lr and seed of `spec`) drawn with `seed`.

    Pure: the same arguments give the same table. `cells` leaves cells out (to test the missing-arm errors).
    """
    spec = spec or FactorialSpec()
    rng = np.random.default_rng(seed)
    n_layers = len(spec.hidden_gain)
    frames = []
    for dataset in spec.datasets:
        u = rng.standard_normal(spec.seeds)
        for cell in cells:
            direction, step = cell_roles(cell)
            lr, seeds = (a.ravel() for a in np.meshgrid(spec.grid_lrs, np.arange(spec.seeds), indexing="ij"))
            n = len(lr)
            noisy = step == "r"
            log_gain = (np.log(spec.gains(step))[None, :]
                        + (spec.gain_sd * rng.standard_normal((n, n_layers)) + spec.seed_gain * u[seeds, None])
                        * noisy)
            log_steps = np.column_stack([np.log(lr)[:, None] + log_gain, np.log(lr)])
            c = log_steps - np.log(np.asarray(spec.layer_step))[None, :]
            a = spec.asymmetry
            loss = (spec.min_loss + ((np.exp(a * c) - a * c - 1) / a**2) @ np.asarray(spec.layer_weight)
                    + spec.direction_effect * (direction == "r") + spec.interaction * (cell == "r")
                    + spec.seed_sd * u[seeds]
                    + spec.noise_sd * (rng.gamma(spec.gamma_shape, size=n) - spec.gamma_shape)
                    / np.sqrt(spec.gamma_shape))
            largest = np.log(lr) + (np.log(spec.gains(step)).max() + spec.seed_gain * u[seeds]) * noisy
            diverged = largest + spec.edge_sd * rng.standard_normal(n) > np.log(spec.diverge_step)
            test = loss + spec.eval_sd * rng.standard_normal(n)
            nan = lambda x: np.where(diverged, np.nan, x)  # noqa: E731
            name = {"bp": "bp", "r": spec.rule}
            frame = pd.DataFrame({
                "run_id": [f"{dataset}-{name[direction]}@{name[step]}-lr{x:.4g}-s{s}" for x, s in zip(lr, seeds)],
                "phase": "grid", "dataset": dataset, "method": name[direction], "step_rule": name[step],
                "optimizer": "sgd", "feedback_scale": 1.0, "seed": seeds, "lr": lr,
                "feedback_gain": np.exp(log_gain.mean(axis=1)), "diverged": diverged,
                "final_train_loss": nan(loss - 0.02), "val_loss": nan(loss + spec.eval_sd * rng.standard_normal(n)),
                "val_acc": nan(spec.acc_at_zero_loss - spec.acc_per_loss * loss),
                "test_loss": nan(test),
                "test_acc": nan(spec.acc_at_zero_loss - spec.acc_per_loss * test
                                + spec.acc_noise_sd * rng.standard_normal(n)),
                "examples_to_target": np.nan, "reached_target": False,
                "architecture": spec.architecture, "layers": spec.layers,
            })
            for layer in range(n_layers):
                frame[f"feedback_gain_l{layer + 1}"] = np.exp(log_gain[:, layer])
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _world(**changes) -> FactorialSpec:
    return replace(FactorialSpec(), **changes)


# Worlds by name (each is also drawn at other seed counts by the tests).
FACTORIAL_WORLDS: dict[str, FactorialSpec] = {
    # sign's advantage is its step size: bp's direction at sign's per-layer steps is sign, in expectation.
    "pure_step": FactorialSpec(),
    # sign's direction is worth 0.03 nats at every step: bp@sign is worse than sign by that much.
    "direction_better": _world(direction_effect=-0.03),
    # sign's direction costs 0.03 nats: bp@sign beats sign.
    "direction_worse": _world(direction_effect=0.03),
    # unequal layer weights (the first hidden layer dominates) and a direction effect only at sign's steps.
    "interaction": _world(layer_weight=(0.08, 0.01, 0.03), direction_effect=0.0, interaction=-0.02),
}
