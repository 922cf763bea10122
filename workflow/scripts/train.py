"""One training job: a whole population (grid chunk, tuned chunk or an intervention arm) on one leased device.

Members come from params.members (grid, dose), input.lrs (each method at its tuned lr on params.seeds)
or input.matched (bp_matched at sign's per-layer gains on params.seeds); params.phase names the phase.
"""

import json

import pandas as pd
import torch

from soap.gpu_lease import gpu_lease
from soap.interventions import matched_members
from soap.pipeline import device_for, label_tuned_repeats, log_to_file, train_config, tuned_members, write_population
from soap.population import train_population

log_to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
params, dataset = snakemake.params, snakemake.wildcards.dataset
if hasattr(snakemake.input, "matched"):
    members = matched_members(pd.read_csv(snakemake.input.matched), dataset, params.seeds)
    if not members:
        raise SystemExit(f"no sign grid run to match at seeds {params.seeds}: every one diverged")
elif hasattr(snakemake.input, "lrs"):
    tuned = json.loads(open(snakemake.input.lrs).read())
    lr_source = params.lr_source
    members = tuned_members(params.methods, tuned, params.seeds, lr_source)
else:
    members = params.members

gpus = snakemake.config["gpus"] if snakemake.resources.gpu else 0
config = train_config(
    params.train,
    dataset,
    params.phase,
    members,
    prepared=snakemake.input.data,
    epochs=params.get("epochs"),  # the tuned phase may train longer than the grid
    device=device_for(gpus),
)
with gpu_lease(snakemake.config["gpu_lock_dir"], gpus):
    result = train_population(config)
if params.phase == "tuned":
    result.runs = label_tuned_repeats(result.runs, tuned, lr_source)
write_population(result, snakemake.output.runs, snakemake.output.curves, snakemake.output.meta)
