"""Whether two results folders hold the same runs and curves tables, bit for bit (issue 18's "Done when").

    python benchmarks/same_tables.py RESULTS_A RESULTS_B

Compares RESULTS_A/{runs,curves}.parquet with RESULTS_B's: the same columns in the same order with the
same dtypes, the same rows after sorting by the table's key (runs: run_id; curves: run_id, examples),
and every value identical: floats bit for bit (NaN equals NaN, but 0.0 does not equal -0.0), other
values by equality (missing equals missing). Prints one line per table, and exits 1 when a table differs
or is missing. Also works on results/interventions, which holds the same two tables.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

KEYS = {"runs.parquet": ["run_id"], "curves.parquet": ["run_id", "examples"]}

# Columns that measure wall-clock time differ between two runs of the same config by nature; they would
# be compared apart and reported, not failed. Neither table has one: the trainer records its timings in
# each job's meta.json and the gather step in provenance.json, which are not compared.
WALL_CLOCK: dict[str, str] = {}


def differing(a: pd.Series, b: pd.Series) -> np.ndarray:
    """Row mask of values that are not identical (float: same bits, or both NaN; else equal or both missing)."""
    if a.dtype.kind == "f" and b.dtype.kind == "f" and a.dtype == b.dtype:
        x, y = a.to_numpy(), b.to_numpy()
        same_bits = x.view(f"u{x.itemsize}") == y.view(f"u{y.itemsize}")
        return ~(same_bits | (np.isnan(x) & np.isnan(y)))
    x, y = a.to_numpy(dtype=object), b.to_numpy(dtype=object)
    missing = pd.isna(a).to_numpy() & pd.isna(b).to_numpy()
    return ~(missing | (x == y).astype(bool))


def compare(path_a: Path, path_b: Path, keys: list[str]) -> tuple[bool, str]:
    """(same, one-line verdict) for one table in two folders."""
    for path in (path_a, path_b):
        if not path.is_file():
            return False, f"missing: {path}"
    a, b = pd.read_parquet(path_a), pd.read_parquet(path_b)
    if list(a.columns) != list(b.columns):
        only_a, only_b = sorted(set(a.columns) - set(b.columns)), sorted(set(b.columns) - set(a.columns))
        return False, f"columns differ (only in A: {only_a}; only in B: {only_b}; or their order)"
    dtypes = [c for c in a.columns if a[c].dtype != b[c].dtype]
    if dtypes:
        return False, f"dtypes differ in {', '.join(f'{c} ({a[c].dtype} vs {b[c].dtype})' for c in dtypes)}"
    if len(a) != len(b):
        return False, f"{len(a)} rows vs {len(b)}"
    for frame, name in ((a, "A"), (b, "B")):
        if frame.duplicated(keys).any():
            return False, f"{name} has rows sharing a key {keys}: sorting cannot pair the rows"
    same_order = a[keys].equals(b[keys])
    a = a.sort_values(keys, kind="stable").reset_index(drop=True)
    b = b.sort_values(keys, kind="stable").reset_index(drop=True)
    if not a[keys].equals(b[keys]):
        return False, f"the key columns {keys} hold different values"
    problems, clock = [], []
    for column in a.columns:
        bad = differing(a[column], b[column])
        if bad.any():
            first = [v.item() if isinstance(v, np.generic) else v for v in a.loc[bad, keys].iloc[0]]
            note = f"{column}: {int(bad.sum())} of {len(a)} values differ (first at {keys} = {first})"
            (clock if column in WALL_CLOCK else problems).append(note)
    size = f"{len(a)} rows x {len(a.columns)} columns"
    order = "same row order" if same_order else "rows in another order"
    clock_note = "; wall-clock columns (not compared): " + "; ".join(clock) if clock else ""
    if problems:
        return False, f"DIFFERENT ({size}): " + "; ".join(problems) + clock_note
    return True, f"identical ({size}, every value bit for bit, {order}){clock_note}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_a", type=Path, help="a results folder (holding runs.parquet, curves.parquet)")
    parser.add_argument("results_b", type=Path, help="the results folder to compare it with")
    args = parser.parse_args(argv)
    all_same = True
    for name, keys in KEYS.items():
        same, verdict = compare(args.results_a / name, args.results_b / name, keys)
        print(f"{name}: {verdict}")
        all_same &= same
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
