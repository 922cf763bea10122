"""Snakemake script: build the study report with soap.report.build_report.

params: results_dir (default: the folder of input.runs), figures_dir and tables_dir (default: figures/
and tables/ beside output.html). Figures and tables are written there whatever outputs the rule names.
"""

import logging
import sys
from pathlib import Path

from soap.report import build_report

sm = snakemake  # noqa: F821 (injected by Snakemake)
sys.stderr = open(sm.log[0], "a")  # tracebacks and warnings go to the rule's log
logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")

html = Path(sm.output.html)
build_report(
    results_dir=sm.params.get("results_dir", Path(sm.input.runs).parent),
    out_html=html,
    figures_dir=sm.params.get("figures_dir", html.parent / "figures"),
    tables_dir=sm.params.get("tables_dir", html.parent / "tables"),
)
