"""The study's runs and curves tables (STUDY.md contract) and its provenance record."""

import json

from soap.pipeline import gather, log_to_file
from soap.tables import write_table, write_text

log_to_file(snakemake.log[0])
runs, curves, provenance = gather(
    snakemake.input.runs,
    snakemake.input.curves,
    snakemake.input.meta,
    target=snakemake.params.target,
    config=snakemake.config,
)
write_table(curves, snakemake.output.curves)
write_text(json.dumps(provenance, indent=2, default=str) + "\n", snakemake.output.provenance)
write_table(runs, snakemake.output.runs)
