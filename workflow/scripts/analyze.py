"""Snakemake script: the analysis stage (soap.analysis.run_analysis) on the runs table.

input: runs (and optionally curves); output: the analysis directory, or named files in it (estimates=.../estimates.csv,
summary=..., models=..., km=...); params (all optional): fixed_lr, seed, n_boot, mediation_design; log: one file.
"""

import logging
import sys
from pathlib import Path

from soap.analysis import run_analysis

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive
log_file = open(snakemake.log[0], "w")
sys.stderr = log_file  # warnings and tracebacks land in the rule's log too
logging.basicConfig(stream=log_file, level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

outputs, params = snakemake.output, snakemake.params
out_dir = Path(outputs.estimates).parent if hasattr(outputs, "estimates") else Path(outputs[0])
run_analysis(
    snakemake.input.runs,
    out_dir,
    fixed_lr=params.get("fixed_lr"),
    seed=int(params.get("seed", 0)),
    n_boot=int(params.get("n_boot", 2000)),
    mediation_design=params.get("mediation_design", "pooled"),
    curves_path=getattr(snakemake.input, "curves", None),
)
