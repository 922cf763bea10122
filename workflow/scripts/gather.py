"""The study's runs and curves tables (STUDY.md contract) and provenance record; time to target at
params.target ("auto": bp's tuned median after one epoch, or a loss)."""

from soap.pipeline import gather, log_to_file, write_gathered

log_to_file(snakemake.log[0])
gathered = gather(
    snakemake.input.runs,
    snakemake.input.curves,
    snakemake.input.meta,
    target=snakemake.params.target,
    config=snakemake.config,
)
write_gathered(*gathered, snakemake.output.runs, snakemake.output.curves, snakemake.output.provenance)
