"""The intervention arms of issues 10 and 19: set step sizes or error directions by hand and see whether a
rule's advantage follows them.

  factorial   for each rule r of interventions.factorial, the direction x step-size 2 x 2 with bp
              (soap.factorial): the cells bp@r (method bp, step_rule r) and r@bp (method r, step_rule bp)
              crossed with the grid lrs and seeds; bp and r are the main grid's runs at the same seeds
  dose        alpha_methods at feedback scales alpha crossed with the lr grid (alpha = 1 is the main grid):
              under sgd, per-layer lrs (lr * alpha^k_l on hidden layer l); bp among them is the calibration
  optimizers  tune -> grid -> tuned again under momentum, adam or signsgd (scale-invariant controls)

bp_matched (bp at sign's gains transplanted from sign's grid run) is retired in favour of bp@sign, which
takes sign's per-layer step at every step (soap.analysis.verdict says why).

Pure functions from config to members; the workflow (workflow/rules/interventions.smk) only wires them.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from soap.factorial import CELL_NAMES, cell_key


def factorial_members(rules: list[str], lrs: list[float], seeds: Iterable[int],
                      trained: Iterable[str] = ()) -> list[dict]:
    """The factorial arm's members: every cell of every rule r x lr x seed that the main grid does not hold.

    trained: the main grid's methods, whose plain cells (bp, and r when r is one of them) are its runs at
    the same lrs and seeds and are not trained twice. A crossed cell's member carries `step_rule`; a plain
    one does not (its step rule is its method). A cell shared by several rules (bp) appears once.
    """
    seeds, trained = [int(s) for s in seeds], set(trained)
    cells = []
    for rule in rules:
        for cell in CELL_NAMES:
            method, step = cell_key(cell, rule)
            if (method, step) not in cells and not (method == step and method in trained):
                cells.append((method, step))
    members = []
    for method, step in cells:
        extra = {} if method == step else {"step_rule": step}
        members += [{"method": method, "lr": float(lr), "seed": s, **extra} for lr in lrs for s in seeds]
    return members


def dose_members(methods: list[str], alphas: list[float], lrs: list[float], seeds: Iterable[int]) -> list[dict]:
    """The dose-response arm: every method at every feedback scale but 1 (the main grid has it) x lr x seed."""
    seeds = list(seeds)
    return [{"method": m, "lr": float(lr), "seed": int(s), "feedback_scale": float(a)}
            for m in methods for a in alphas if not math.isclose(a, 1.0) for lr in lrs for s in seeds]


def optimizer_lrs(entry: dict) -> list[float]:
    """The lr grid of one `interventions.optimizers` entry: n_lrs log-spaced points over its range."""
    return [float(f"{lr:.4g}") for lr in np.geomspace(entry["lr_low"], entry["lr_high"], entry["n_lrs"])]


def enabled(cfg: dict) -> bool:
    """Whether the study config switches on any intervention arm."""
    arms = cfg["interventions"]
    return bool(arms["factorial"]) or bool(arms["alphas"]) or bool(arms["optimizers"])


def step_rule_problem(rule: str) -> str | None:
    """Why `rule` cannot take part in a factorial with bp (as bp's step rule and with bp as its own), or
    None when it can: the trainer's own check (soap.config.step_rule_conflict) on both crossed cells."""
    from soap.config import step_rule_conflict
    from soap.rules import REFERENCE, RULES

    if rule not in RULES:
        return f"unknown rule {rule}; known: {', '.join(RULES)}"
    if rule == REFERENCE:
        return "bp is every factorial's reference cell, not one of its rules"
    for method, step_rule in ((REFERENCE, rule), (rule, REFERENCE)):
        problem = step_rule_conflict(method, step_rule)
        if problem:
            return f"{rule}: {problem}"
    return None


def check_config(cfg: dict) -> None:
    """Cross-key checks of the `interventions` block the schema cannot express; ConfigError names the key."""
    from soap.config import ConfigError
    from soap.rules import RULES

    arms = cfg["interventions"]
    for key in ("alpha_methods", "optimizer_methods"):
        unknown = [m for m in arms[key] if m not in RULES]
        if unknown:
            raise ConfigError(f"interventions.{key}: unknown method(s) {unknown}; known: {', '.join(RULES)}")
    for rule in arms["factorial"]:
        problem = step_rule_problem(rule)
        if problem:
            raise ConfigError(f"interventions.factorial: {problem}")
    if arms["factorial"] and arms["seeds"] > cfg["grid"]["seeds"]:
        raise ConfigError(f"interventions.seeds must not exceed grid.seeds ({cfg['grid']['seeds']}) when "
                          "interventions.factorial is on (its cells pair with the main grid's bp by seed)")
    for i, entry in enumerate(arms["optimizers"]):
        if entry["lr_low"] >= entry["lr_high"]:
            raise ConfigError(f"interventions.optimizers.{i}.lr_low must be below its lr_high")
    if enabled(cfg) and cfg["tune"]["seed"] < arms["seeds"]:
        raise ConfigError("tune.seed must be at least interventions.seeds (tuning seeds distinct from evaluation seeds)")
