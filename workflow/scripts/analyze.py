"""The analysis stage (soap.analysis.run_analysis) on the runs table.

input: runs, curves (time to target at other target losses), trials and best (the tuning studies,
read from params.tune_dir); output: the analysis directory; params: fixed_lr, seed, n_boot,
mediation_design, tune_dir, tune_batch, lr_range; log: one file.
"""

from pathlib import Path

from soap.analysis.outputs import run_analysis
from soap.pipeline import log_to_file

log_to_file(snakemake.log[0])
run_analysis(
    snakemake.input.runs,
    Path(snakemake.output.analysis),
    fixed_lr=snakemake.params.fixed_lr,
    seed=int(snakemake.params.seed),
    n_boot=int(snakemake.params.n_boot),
    mediation_design=snakemake.params.mediation_design,
    curves_path=snakemake.input.curves,
    tune_dir=snakemake.params.tune_dir,
    tune_batch=int(snakemake.params.tune_batch),
    lr_range=tuple(float(x) for x in snakemake.params.lr_range),
)
