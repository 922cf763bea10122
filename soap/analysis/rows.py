"""The estimates table's rows, and the collector every estimand module writes into.

Each estimand module (paired, time_to_target, divergence, ...) builds its own rows through a
`Collector`; `soap.analysis.core` only decides which estimand runs on which runs. A failing estimand
becomes a `skipped` entry with its reason and never takes the others down (`Collector.guard`).
"""

from __future__ import annotations

import logging
import zlib

import numpy as np
import pandas as pd

from soap.analysis.summary import Exclusion, Skipped
from soap.rules import REFERENCE

log = logging.getLogger(__name__)

# slopes_differ: True on an effective_lr row whose method's slope in log effective lr differs from bp's
# (F test, p < 0.05), where the one difference averages one that changes with the lr; False elsewhere.
ESTIMATES_COLUMNS = ("estimand", "dataset", "method", "reference", "outcome", "lr", "estimate", "ci_low",
                     "ci_high", "p_value", "p_holm", "n", "unit", "interval", "holm_family", "note",
                     "slopes_differ")
# What a failing estimand can raise from numpy, pandas, scipy and statsmodels on degenerate data
# (singular designs, empty groups, no events). Caught per estimand so the others are still computed;
# the message goes into the estimand's `skipped` reason and the traceback into the log.
ESTIMAND_ERRORS = (ValueError, ArithmeticError, KeyError, IndexError)


def rng_for(seed: int, *keys: str) -> np.random.Generator:
    """A generator per (seed, estimand, dataset, ...): results do not depend on the order of analysis."""
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


def ordered_methods(rows: pd.DataFrame) -> list[str]:
    """The reference first, then the other methods of `rows` alphabetically."""
    return [REFERENCE] + sorted(m for m in rows["method"].unique() if m != REFERENCE)


def lower_is_better(outcome: str) -> bool:
    return "acc" not in outcome


class Collector:
    """Rows, exclusions and skipped estimands of one analysis, with the guard that isolates failures."""

    def __init__(self):
        self.rows: list[dict] = []
        self.exclusions: list[Exclusion] = []
        self.skipped: list[Skipped] = []

    def row(self, estimand, dataset, method, reference, outcome, stats: dict, n: int, unit: str, interval: str,
            lr: float | None = None, note: str = "", slopes_differ: bool = False) -> None:
        self.rows.append({"estimand": estimand, "dataset": dataset, "method": method, "reference": reference,
                          "outcome": outcome, "lr": np.nan if lr is None else lr,
                          "estimate": stats.get("estimate", np.nan), "ci_low": stats.get("ci_low", np.nan),
                          "ci_high": stats.get("ci_high", np.nan), "p_value": stats.get("p_value", np.nan),
                          "p_holm": np.nan, "n": int(n), "unit": unit, "interval": interval,
                          "holm_family": None, "note": note or stats.get("note", ""),
                          "slopes_differ": bool(slopes_differ)})

    def exclude(self, estimand: str, dataset: str, method: str, counts: dict[str, int]) -> None:
        for reason, n in counts.items():
            if n:
                self.exclusions.append(Exclusion(estimand, dataset, method, reason, int(n)))

    def skip(self, estimand: str, dataset: str, reason: str) -> None:
        log.info("%s skipped for %s: %s", estimand, dataset, reason)
        self.skipped.append(Skipped(estimand, dataset, reason))

    def guard(self, estimand: str, dataset: str, compute) -> None:
        try:
            compute()
        except ESTIMAND_ERRORS as err:
            log.warning("%s failed for %s", estimand, dataset, exc_info=True)
            self.skip(estimand, dataset, f"could not be computed: {type(err).__name__}: {err}")

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(ESTIMATES_COLUMNS))
