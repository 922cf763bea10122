"""Datasets as facets: every per-dataset figure is one file whatever the number of datasets.

A figure either puts its datasets side by side (one panel each) or gives each dataset its own row(s)
of panels, when its columns already mean something else (estimands, outcomes, layers). With no
dataset at all it still gets one panel, for the "no data" message.
"""

from __future__ import annotations

from collections.abc import Iterable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from soap.plots.panels import no_data

NO_DATASET = "(none)"  # the facet of a figure with nothing to show


def datasets_of(table: pd.DataFrame | None) -> list[str]:
    """The datasets of a table in order of first appearance (the caller orders the rows)."""
    if table is None or table.empty or "dataset" not in table:
        return []
    return list(dict.fromkeys(table["dataset"].dropna()))


def dataset_facets(datasets: Iterable[str], columns: int | None = None, rows_per_dataset: int = 1,
           panel: tuple[float, float] = (5.6, 4.2), **subplots) -> tuple[plt.Figure, np.ndarray, list[str]]:
    """The figure, its axes (always 2-d) and the datasets they show, in the given order.

    ``columns=None``: one panel per dataset, side by side (axes of shape (1, n)). Otherwise each dataset
    gets ``rows_per_dataset`` rows of ``columns`` panels, datasets top to bottom (axes of shape
    (n * rows_per_dataset, columns)). ``panel`` is one panel's (width, height) in inches; the rest of
    ``subplots`` goes to plt.subplots (sharex=...).
    """
    datasets = list(datasets) or [NO_DATASET]
    if columns is None:
        nrows, ncols = 1, len(datasets)
    else:
        nrows, ncols = rows_per_dataset * len(datasets), columns
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows), squeeze=False,
                             layout="constrained", **subplots)
    return fig, axes, datasets


def dataset_panels(table: pd.DataFrame | None, message: str, *columns: str, select=None, **facet_kw):
    """Side-by-side facets of the table's datasets: ``(fig, axes, panels)``, ``panels`` the
    ``(ax, dataset, rows)`` of each dataset with rows to draw (after ``select``, a filter of one
    dataset's rows); the other panels say ``message``. ``facet_kw`` goes to :func:`dataset_facets`."""
    fig, axes, datasets = dataset_facets(datasets_of(table), **facet_kw)
    panels = []
    for ax, dataset in zip(axes[0], datasets):
        rows = dataset_rows(table, dataset, *columns)
        if rows is not None and select is not None:
            rows = select(rows)
        if rows is None or rows.empty:
            no_data(ax, message)
        else:
            panels.append((ax, dataset, rows))
    return fig, axes, panels


def dataset_grid(table: pd.DataFrame | None, column: str, values: list, message, **facet_kw):
    """One row of panels per dataset of the table, one column per value of ``column``:
    ``(fig, axes, datasets, panels)``, ``panels`` the ``(ax, dataset, c, rows)`` of each cell (c its
    column) with rows to draw; the other cells say ``message(value)``."""
    fig, axes, datasets = dataset_facets(datasets_of(table), columns=len(values), **facet_kw)
    panels = []
    for d, dataset in enumerate(datasets):
        for c, value in enumerate(values):
            rows = None if table is None else table[(table["dataset"] == dataset) & (table[column] == value)]
            if rows is None or rows.empty:
                no_data(axes[d, c], message(value))
            else:
                panels.append((axes[d, c], dataset, c, rows))
    return fig, axes, datasets, panels


def dataset_rows(table: pd.DataFrame | None, dataset: str, *columns: str) -> pd.DataFrame | None:
    """The table's rows of one dataset; None when there is no table or it lacks one of ``columns``
    (the figure then says what is missing)."""
    if not has_columns(table, "dataset", *columns):
        return None
    return table[table["dataset"] == dataset]


def has_columns(table: pd.DataFrame | None, *columns: str) -> bool:
    """The table exists, has rows, and has every one of ``columns``."""
    return table is not None and not table.empty and all(c in table.columns for c in columns)
