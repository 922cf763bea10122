"""The runs table and the curves table: the contract between training and analysis (STUDY.md).

A runs table has one row per finished run; a curves table is long, one row per (run_id, examples)
logging point. Both are written as parquet (CSV is accepted on read) and always atomically, so a
reader never sees half a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from soap.files import write_atomic

# Columns every runs table must carry (STUDY.md), with the dtype kind analysis relies on.
RUNS_COLUMNS: dict[str, str] = {
    "run_id": "string",
    "phase": "string",  # "grid" or "tuned"
    "dataset": "string",
    "method": "string",
    "seed": "int",
    "lr": "float",  # nominal learning rate
    "feedback_gain": "float",  # geometric mean of |delta_rule| / |delta_bp| over hidden layers and time
    "diverged": "bool",
    "final_train_loss": "float",  # EMA-smoothed training loss at the end (NaN if diverged)
    "val_loss": "float",
    "val_acc": "float",
    "test_loss": "float",
    "test_acc": "float",
    "examples_to_target": "float",  # NaN where the target was not reached
    "reached_target": "bool",
}

# bp's feedback gain is 1 by definition (its feedback is W itself); a measured gain further than this
# from 1 means the column holds something else, and every effective-lr coefficient would shift with it.
BP_GAIN_TOLERANCE = 1e-3

# Columns soap's trainer adds beyond the contract; analysis must not require them.
RUNS_EXTRA_COLUMNS = (
    "effective_lr",  # lr * step_gain (step_gain below): lr * feedback_gain but for so_ runs
    "soap_gain",  # so_ runs: |n| / |g2| at the SOAP points, combined like feedback_gain (NaN otherwise)
    "refresh_period",  # examples between feedback refreshes
    "feedback_scale",  # alpha: errors sent down as alpha * grad_y B
    "step_rule",  # the rule whose per-layer step sizes the run took (its method's direction); = method if absent
    "optimizer",  # sgd | momentum | adam | signsgd
    "tune_repeat",  # tuned runs: the tuning repeat whose lr the run trained at (-1: the aggregate lr)
    # feedback_gain_l1, ...: per hidden layer |delta_rule| / |delta_bp| (feedback_gain is their geometric
    # mean); lr_scale_l1, ...: per weight layer, its lr over the nominal lr (1 unless given per layer)
    "target_loss",  # the training-loss target examples_to_target refers to (NaN if none)
    "diverged_at",  # examples seen when divergence was detected (NaN if not diverged)
    "examples_seen",
    "epochs",
    "batch_size",
    "architecture",  # the network, TrainConfig.architecture: mlp | lenet5
    "layers",  # its layers and nonlinearity, e.g. "784-256-256-10 tanh" (records.layers_description)
)


def step_gain(runs: pd.DataFrame) -> pd.Series:
    """How much larger than bp's a run's hidden-layer step is: feedback_gain, times soap_gain for so_ runs.

    The measured gain for every run, bp's too: a bp run with another step rule (bp@sign) steps at that
    rule's sizes, and its measured gain says so.

    The one definition behind `effective_lr = lr * step_gain` (STUDY.md defines it with feedback_gain
    alone, which predates the so_ rules). An so_ run's feedback_gain measures its base rule's signal;
    activity propagation then replaces that signal by n, |n| / |g2| = soap_gain times larger, before it
    reaches the weights below the SOAP point (2e-5 to 2e-3 with issue 12's defaults on MNIST). Leaving
    it out would compare so_ runs with bp at effective lrs 500 to 50,000 times too large.
    """
    gain = runs["feedback_gain"].astype(float)
    if "soap_gain" not in runs:
        return gain
    soap = runs["soap_gain"].astype(float)
    return gain * soap.where(soap.notna(), 1.0)


def effective_lr(runs: pd.DataFrame) -> pd.Series:
    """lr * step_gain: the learning rate a run's hidden layers actually apply, on bp's scale."""
    return runs["lr"].astype(float) * step_gain(runs)


CURVES_KEY = ("run_id", "examples")
# Logged quantities (NaN between their logging points). Per-layer ones come besides, suffixed with the
# layer index: angle_l0, ...; cos_l0, norm_ratio_l0, ... for hidden layers.
CURVES_COLUMNS = ("train_loss", "train_loss_ema", "val_loss", "val_acc")


class TableError(ValueError):
    """A table that does not follow the contract."""


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a parquet or CSV table, with an error that names the file when it is missing or unknown."""
    path = Path(path)
    if not path.exists():
        raise TableError(f"table not found: {path}")
    if path.suffix not in (".parquet", ".csv"):
        raise TableError(f"{path}: unknown table format {path.suffix!r} (expected .parquet or .csv)")
    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    # What pyarrow and pandas raise for a file that is not a table of the kind its name says
    # (pyarrow.ArrowInvalid is a ValueError; pandas' ParserError and EmptyDataError are too).
    except (ValueError, OSError, UnicodeDecodeError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TableError(f"{path}: not a readable {path.suffix[1:]} table ({first_line})") from None


def validate_runs(runs: pd.DataFrame, source: str = "runs table") -> pd.DataFrame:
    """Check a runs table against the contract and return it with canonical dtypes.

    Raises TableError naming every missing column, the first column with values of the wrong kind,
    repeated run_ids, a learning rate that is not positive and finite, or a plain bp run whose
    feedback_gain is not 1 (within BP_GAIN_TOLERANCE). Not plain: bp at feedback scale alpha != 1 (the dose
    arm's calibration: gain alpha^k by design) and bp with another rule's step_rule (bp@sign takes sign's
    per-layer sizes, so its gain is sign's). NaN outcomes and gains of other runs are
    allowed: the analysis excludes and counts them.
    """
    missing = [c for c in RUNS_COLUMNS if c not in runs.columns]
    if missing:
        raise TableError(f"{source} is missing required column(s): {', '.join(missing)}")
    out = runs.copy()
    for column, kind in RUNS_COLUMNS.items():
        try:
            if kind == "float":
                out[column] = pd.to_numeric(out[column], errors="raise").astype(float)
            elif kind == "int":
                out[column] = pd.to_numeric(out[column], errors="raise").astype("int64")
            elif kind == "bool":
                out[column] = _as_bool(out[column])
            else:
                out[column] = out[column].astype(str)
        except (TypeError, ValueError) as err:
            raise TableError(f"{source}: column {column!r} should hold {kind} values ({err})") from None
    if out["run_id"].duplicated().any():
        dupes = out.loc[out["run_id"].duplicated(), "run_id"].unique()[:5]
        raise TableError(f"{source}: run_id must be unique; repeated: {', '.join(dupes)}")
    bad_lr = ~(np.isfinite(out["lr"]) & (out["lr"] > 0))
    if bad_lr.any():
        raise TableError(f"{source}: lr must be positive and finite; {_first_rows(out, bad_lr, 'lr')}")
    bp = (out["method"] == "bp") & out["feedback_gain"].notna()
    if "feedback_scale" in out:
        bp &= out["feedback_scale"].fillna(1.0) == 1.0
    if "step_rule" in out:
        bp &= out["step_rule"].isna() | (out["step_rule"] == "bp")
    bad_gain = bp & ((out["feedback_gain"] - 1.0).abs() > BP_GAIN_TOLERANCE)
    if bad_gain.any():
        raise TableError(f"{source}: bp's feedback_gain must be 1 (within {BP_GAIN_TOLERANCE:g}); "
                         f"{_first_rows(out, bad_gain, 'feedback_gain')}")
    return out


def _first_rows(table: pd.DataFrame, mask: pd.Series, column: str) -> str:
    bad = table.loc[mask, ["run_id", column]]
    shown = ", ".join(f"{r}: {v!r}" for r, v in zip(bad["run_id"][:5], bad[column][:5]))
    return f"{int(mask.sum())} run(s), e.g. {shown}"


def validate_curves(curves: pd.DataFrame, source: str = "curves table") -> pd.DataFrame:
    """Check a curves table against the contract: its key and logged columns, one row per key."""
    missing = [c for c in (*CURVES_KEY, *CURVES_COLUMNS) if c not in curves.columns]
    if missing:
        raise TableError(f"{source} is missing required column(s): {', '.join(missing)}")
    repeated = curves.duplicated(list(CURVES_KEY))
    if repeated.any():
        first = curves.loc[repeated, list(CURVES_KEY)].iloc[0]
        raise TableError(f"{source}: (run_id, examples) must be unique; repeated: "
                         f"({first['run_id']}, {first['examples']})")
    return curves


def _as_bool(column: pd.Series) -> pd.Series:
    if column.dtype == bool:
        return column
    mapping = {"true": True, "false": False, "1": True, "0": False, "1.0": True, "0.0": False}
    as_text = column.astype(str).str.strip().str.lower()
    unknown = sorted(set(as_text) - set(mapping))
    if unknown:
        raise ValueError(f"not booleans: {unknown[:3]}")
    return as_text.map(mapping).astype(bool)


def write_table(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a table atomically as parquet or CSV, by the path's suffix."""
    path = Path(path)
    if path.suffix == ".parquet":
        return write_atomic(path, lambda tmp: table.to_parquet(tmp, index=False))
    if path.suffix == ".csv":
        return write_atomic(path, lambda tmp: table.to_csv(tmp, index=False))
    raise TableError(f"{path}: unknown table format {path.suffix!r} (expected .parquet or .csv)")


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file (JSON, summaries) atomically."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))
