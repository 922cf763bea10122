# The soap study: tune -> grid and tuned runs -> runs table -> analysis -> report (STUDY.md).
#
#   snakemake --cores 2                              # the study in config.yaml
#   snakemake --cores 2 --configfile config/quick.yaml   # a 3-minute smoke test
#   snakemake --cores 2 tune_all                     # phase 1 only: every method's tuned lr
#   snakemake --cores 16 --resources gpu=4           # 4 training jobs at once, one GPU each
#   snakemake --workflow-profile workflow/profiles/slurm  # every job an sbatch job, one GPU each
#   snakemake --report results/snakemake-report.html  # Snakemake's own report, with captions
#
# Stages live in workflow/rules/*.smk; every computation lives in the soap package.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/analyze.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/interventions.smk"


rule all:
    input:
        "results/runs.parquet",
        "results/curves.parquet",
        "results/provenance.json",
        "results/analysis",
        "results/report.html",
        intervention_targets(),
    default_target: True
