"""One training job whose members the workflow lists in params.members (a grid chunk of any arm, a dose
chunk); params.phase names the phase."""

import torch

from soap.pipeline import log_to_file, train_job, write_population

log_to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
result = train_job(
    snakemake.params.train,
    snakemake.wildcards.dataset,
    snakemake.params.phase,
    snakemake.params.members,
    prepared=snakemake.input.data,
    gpus=snakemake.config["gpus"] if snakemake.resources.gpu else 0,
    gpu_lock_dir=snakemake.config["gpu_lock_dir"],
)
write_population(result, snakemake.output.runs, snakemake.output.curves, snakemake.output.meta)
