"""Every repeat's Optuna study of one (dataset, method), in lockstep: resume each to n_trials, write its
best.json and trials.csv."""

from pathlib import Path

import torch

from soap.gpu_lease import gpu_lease
from soap.pipeline import log_to_file
from soap.tuning import tune_repeats

log_to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
config = snakemake.config
study_config = {
    "train": snakemake.params.train,
    # how workers on a database detect a dead peer: not a params entry, as it does not change results
    "tune": {**snakemake.params.tune, **{k: config["tune"][k] for k in ("heartbeat_interval", "grace_period")}},
    "data": config["data"],
    "gpus": config["gpus"] if snakemake.resources.gpu else 0,
}
w = snakemake.wildcards
# The outputs follow params.repeats (expand over REPEATS): repeat i writes in best[i]'s directory.
out_dirs = [Path(best).parent for best in snakemake.output.best]
with gpu_lease(config["gpu_lock_dir"], study_config["gpus"]):
    tune_repeats(
        study_config,
        w.dataset,
        w.method,
        snakemake.params.repeats,
        out_dirs,
        prepared=snakemake.input.data,
        progress=True,
    )
