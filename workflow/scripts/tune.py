"""One Optuna study (dataset, method, repeat): resume it to n_trials, write best.json and trials.csv."""

from pathlib import Path

import torch

from soap.gpu_lease import gpu_lease
from soap.pipeline import log_to_file
from soap.tuning import tune_one

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
with gpu_lease(config["gpu_lock_dir"], study_config["gpus"]):
    tune_one(
        study_config,
        w.dataset,
        w.method,
        int(w.repeat),
        Path(snakemake.output.best).parent,
        prepared=snakemake.input.data,
        progress=True,
    )
