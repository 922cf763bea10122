"""One bp_matched job: bp at sign's per-layer gains (input.matched, soap.interventions.matched_members)
on params.seeds."""

import pandas as pd
import torch

from soap.interventions import matched_members
from soap.pipeline import log_to_file, train_job, write_population

log_to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
params, dataset = snakemake.params, snakemake.wildcards.dataset
members = matched_members(pd.read_csv(snakemake.input.matched), dataset, params.seeds)
if not members:
    raise SystemExit(f"no sign grid run to match at seeds {params.seeds}: every one diverged")
result = train_job(
    params.train,
    dataset,
    params.phase,
    members,
    prepared=snakemake.input.data,
    gpus=snakemake.config["gpus"] if snakemake.resources.gpu else 0,
    gpu_lock_dir=snakemake.config["gpu_lock_dir"],
)
write_population(result, snakemake.output.runs, snakemake.output.curves, snakemake.output.meta)
