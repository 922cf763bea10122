"""Statistical analysis of a runs table: the estimands of STUDY.md with intervals and Holm-adjusted p-values."""

from soap.analysis.core import ESTIMANDS, ESTIMATES_COLUMNS, KM_COLUMNS, AnalysisResult, analyze
from soap.analysis.errors import AnalysisError
from soap.analysis.outputs import load_tuning, run_analysis
from soap.analysis.summary import Summary

__all__ = ["ESTIMANDS", "ESTIMATES_COLUMNS", "KM_COLUMNS", "AnalysisError", "AnalysisResult", "analyze",
           "load_tuning", "run_analysis", "Summary"]
