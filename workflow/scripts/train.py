"""One training job: a whole population (grid chunk or tuned chunk) on one leased device."""

import json

import torch

from soap.gpu_lease import gpu_lease
from soap.pipeline import device_for, label_tuned_repeats, log_to_file, train_config, tuned_members, write_population
from soap.population import train_population

log_to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
if snakemake.rule == "train_grid":
    phase, members = "grid", snakemake.params.members
else:
    tuned = json.loads(open(snakemake.input.lrs).read())
    lr_source = snakemake.params.lr_source
    phase, members = "tuned", tuned_members(snakemake.params.methods, tuned, snakemake.params.seeds, lr_source)

gpus = snakemake.config["gpus"] if snakemake.resources.gpu else 0
config = train_config(
    snakemake.params.train,
    snakemake.wildcards.dataset,
    phase,
    members,
    prepared=snakemake.input.data,
    epochs=snakemake.params.get("epochs"),  # the tuned phase may train longer than the grid
    device=device_for(gpus),
)
with gpu_lease(snakemake.config["gpu_lock_dir"], gpus):
    result = train_population(config)
if phase == "tuned":
    result.runs = label_tuned_repeats(result.runs, tuned, lr_source)
write_population(result, snakemake.output.runs, snakemake.output.curves, snakemake.output.meta)
