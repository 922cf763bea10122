"""The one exception the analysis raises for input it cannot analyse."""

from __future__ import annotations


class AnalysisError(ValueError):
    """A runs table the analysis cannot use; the message names the problem (column, dataset, method)."""
