"""The study's (or the interventions') runs and curves tables (STUDY.md contract) and provenance record."""

import json

import pandas as pd

from soap.pipeline import gather, log_to_file
from soap.tables import write_table, write_text

log_to_file(snakemake.log[0])
if hasattr(snakemake.input, "main"):  # the interventions: the main study's target loss, per dataset
    main = pd.read_parquet(snakemake.input.main)
    target = main.groupby("dataset")["target_loss"].first().to_dict()
else:
    target = snakemake.params.target
runs, curves, provenance = gather(
    snakemake.input.runs,
    snakemake.input.curves,
    snakemake.input.meta,
    target=target,
    config=snakemake.config,
)
write_table(curves, snakemake.output.curves)
write_text(json.dumps(provenance, indent=2, default=str) + "\n", snakemake.output.provenance)
write_table(runs, snakemake.output.runs)
