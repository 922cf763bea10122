"""One tuned-phase job: each of params.methods at its tuned lr (input.lrs, soap.pipeline.tuned_members) on
params.seeds, trained for params.epochs; the runs record which tuning repeat gave each lr."""

import json

import torch

from soap.pipeline import label_tuned_repeats, log_to_file, train_job, tuned_members, write_population

log_to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
params = snakemake.params
tuned = json.loads(open(snakemake.input.lrs).read())
result = train_job(
    params.train,
    snakemake.wildcards.dataset,
    params.phase,
    tuned_members(params.methods, tuned, params.seeds, params.lr_source),
    prepared=snakemake.input.data,
    gpus=snakemake.config["gpus"] if snakemake.resources.gpu else 0,
    gpu_lock_dir=snakemake.config["gpu_lock_dir"],
    epochs=params.epochs,  # the tuned phase may train longer than the grid
)
result.runs = label_tuned_repeats(result.runs, tuned, params.lr_source)
write_population(result, snakemake.output.runs, snakemake.output.curves, snakemake.output.meta)
