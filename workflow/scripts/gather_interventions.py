"""The interventions' runs and curves tables and provenance record, timed to the main study's target
loss per dataset (input.main, soap.pipeline.main_target_losses)."""

import pandas as pd

from soap.pipeline import gather, log_to_file, main_target_losses, write_gathered

log_to_file(snakemake.log[0])
gathered = gather(
    snakemake.input.runs,
    snakemake.input.curves,
    snakemake.input.meta,
    target=main_target_losses(pd.read_parquet(snakemake.input.main)),
    config=snakemake.config,
)
write_gathered(*gathered, snakemake.output.runs, snakemake.output.curves, snakemake.output.provenance)
