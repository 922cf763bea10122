"""summary.json: the one typed definition of what the analysis hands the report.

The analysis builds a `Summary` and writes `Summary.to_json()`; the report reads it back with
`Summary.from_json()`. Both sides use these classes, so a field renamed or retyped here is renamed for
both, and the report never guesses at a missing key: optional values are None (JSON null), and
mappings and lists are empty, never absent.

Conventions: NaN and infinities are written as null (strict JSON); learning rates are nominal unless
named otherwise; every `n` comes with its `unit` (pairs, runs, seed clusters, runs per arm).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Interval:
    """An estimate with its 95% interval, as the estimates table has it."""

    estimate: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    p_holm: float | None = None
    n: int | None = None
    unit: str = ""  # what n counts: "pairs", "runs", "seed clusters", ...
    interval: str = ""  # how the interval was made: "paired t", "cluster-robust t(G-1)", ...
    sd: float | None = None  # standard deviation of the estimate (simulation or bootstrap), where known
    note: str = ""  # why it is missing, or a warning (few pairs, censored median)

    @property
    def available(self) -> bool:
        return self.estimate is not None and math.isfinite(self.estimate)


@dataclass
class Exclusion:
    """Runs left out of one estimand, counted by method and reason (nothing is dropped silently)."""

    estimand: str
    dataset: str
    method: str
    reason: str
    n: int


@dataclass
class Skipped:
    """An estimand that could not be computed for a dataset, and why (the others still are)."""

    estimand: str
    dataset: str
    reason: str


@dataclass
class WaldTest:
    """A joint test: statistic, its reference distribution and p-value."""

    hypothesis: str
    statistic: float | None = None
    df_num: float | None = None
    df_denom: float | None = None
    p_value: float | None = None
    note: str = ""


@dataclass
class EffectiveLrModel:
    formula: str
    r2: float | None
    n: int
    n_clusters: int
    coef: dict[str, Interval] = field(default_factory=dict)
    support: dict = field(default_factory=dict)  # low, high, n_dropped, n_unhealthy_cell, n_used, used_range
    spline_sensitivity: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> {df: estimate}
    nominal_formula: str | None = None
    nominal_coef: dict[str, Interval] = field(default_factory=dict)
    interaction: WaldTest | None = None  # do the methods share one curve shape?


@dataclass
class MediationSummary:
    exposure: str
    control: str
    design: str  # "pooled" or "fixed_lr"
    lr: float | None  # the one nominal lr (fixed_lr design), else None
    lrs: list[float]
    outcome_model: str
    mediator_model: str
    n: int  # runs
    n_seeds: int  # seed clusters (fixed effects in both models)
    n_sims: int
    acme: Interval = field(default_factory=Interval)
    ade: Interval = field(default_factory=Interval)
    total: Interval = field(default_factory=Interval)
    prop: Interval = field(default_factory=Interval)


@dataclass
class TimeToTarget:
    target_loss: float | None
    phase: str
    median_examples: dict[str, float | None] = field(default_factory=dict)  # null: censored (see lower bound)
    median_lower_bound: dict[str, float | None] = field(default_factory=dict)  # when the median is censored
    ratio: dict[str, Interval] = field(default_factory=dict)
    hazard_ratio: dict[str, Interval] = field(default_factory=dict)
    hazard_ratio_note: str = ""
    proportional_hazards: dict[str, WaldTest] = field(default_factory=dict)  # per method vs bp
    n_censored: dict[str, int] = field(default_factory=dict)
    n_runs: dict[str, int] = field(default_factory=dict)
    target_sensitivity: list[dict] = field(default_factory=list)  # rows: target_loss, method, ratio...


@dataclass
class DivergenceCell:
    method: str
    lr: float
    n_runs: int
    n_diverged: int
    rate: float
    ci_low: float
    ci_high: float


@dataclass
class Divergence:
    cells: list[DivergenceCell] = field(default_factory=list)
    model: str = ""  # the logistic model's formula
    coef: dict[str, Interval] = field(default_factory=dict)  # method -> odds ratio vs bp at matched log lr
    note: str = ""


@dataclass
class EstimateRow:
    estimand: str
    dataset: str
    method: str
    reference: str
    outcome: str
    lr: float | None
    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    p_holm: float | None
    n: int
    unit: str
    interval: str
    holm_family: str | None
    note: str
    slopes_differ: bool = False  # effective_lr rows: the method's slope is not bp's (F test, p < 0.05)


@dataclass
class Summary:
    outcome: str
    datasets: list[str]
    methods: list[str]
    n_runs: int
    n_seeds: dict[str, dict[str, int]] = field(default_factory=dict)  # dataset -> phase -> seeds
    epochs: dict[str, dict[str, float]] = field(default_factory=dict)  # dataset -> phase -> training epochs
    n_diverged: dict[str, dict[str, int]] = field(default_factory=dict)  # dataset -> method -> runs
    fixed_lr: dict[str, float | None] = field(default_factory=dict)  # bp's tuned lr snapped to the grid
    small_lr: dict[str, float | None] = field(default_factory=dict)  # the smallest grid lr
    tuned_lr: dict[str, dict[str, float]] = field(default_factory=dict)
    exclusions: list[Exclusion] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    holm_families: dict[str, str] = field(default_factory=dict)  # family label -> its members, in words
    min_pairs: int = 6  # below this many pairs a paired estimate carries a warning
    refresh_period: float | None = None  # the refresh period T the estimands use, when runs have several
    # dataset -> rows (refresh_period, estimand, method, estimate, ci_low, ci_high, p_value, n): every T
    refresh_sensitivity: dict[str, list[dict]] = field(default_factory=dict)
    effective_lr_model: dict[str, EffectiveLrModel] = field(default_factory=dict)
    mediation: dict[str, MediationSummary] = field(default_factory=dict)
    time_to_target: dict[str, TimeToTarget] = field(default_factory=dict)
    divergence: dict[str, Divergence] = field(default_factory=dict)
    # dataset -> method -> "low" / "high": tuned lrs at an edge of the search range (tuning_budget.at_edge)
    tuned_lr_edges: dict[str, dict[str, str]] = field(default_factory=dict)
    tuning_budget_trials: str = ""  # which trials the tuning-budget curves use (tuning_budget.iid_trials)
    estimates: list[EstimateRow] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(json_safe(dataclasses.asdict(self)), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Summary:
        return load(cls, json.loads(text))

    def skipped_reason(self, estimand: str, dataset: str) -> str:
        return "; ".join(s.reason for s in self.skipped if s.estimand == estimand and s.dataset == dataset)


def json_safe(value):
    """`value` with numpy scalars made Python and NaN/inf made None, so json.dumps(strict) accepts it."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def load(tp, value):
    """Build an instance of type `tp` (a dataclass above, or a container of them) from parsed JSON."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # X | None
        if value is None:
            return None
        return load(next(a for a in args if a is not type(None)), value)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        known = {f.name for f in dataclasses.fields(tp)}
        return tp(**{k: load(hints[k], v) for k, v in value.items() if k in known})
    if origin is dict:
        return {k: load(args[1], v) for k, v in value.items()}
    if origin is list:
        return [load(args[0], v) for v in value]
    if tp is float:
        return float(value)
    return value
