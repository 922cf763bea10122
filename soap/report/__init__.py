"""The study report: figures (PNG + PDF), the analysis's tables (CSV) and one self-contained HTML page.

inputs (what is read: the pipeline's tables and the analysis stage's outputs), context (every number
as a preformatted string), render (figures, tables, HTML), captions (FIGURES). The report computes no
estimate: every number it shows comes from the analysis stage (soap.analysis).
"""

from soap.report.captions import FIGURES, FigureSpec
from soap.report.context import (COMPARISON_ESTIMANDS, FORMATTERS, fmt_duration, fmt_int, fmt_interval, fmt_num,
                                 fmt_p, report_context)
from soap.report.inputs import Inputs, load_inputs
from soap.report.render import build_report, make_figures, render_html

__all__ = ["COMPARISON_ESTIMANDS", "FIGURES", "FORMATTERS", "FigureSpec", "Inputs", "build_report", "fmt_duration",
           "fmt_int", "fmt_interval", "fmt_num", "fmt_p", "load_inputs", "make_figures", "render_html",
           "report_context"]
