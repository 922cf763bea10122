# Config validation and every input function; the other .smk files hold only rules.

import sys
from pathlib import Path

# A fresh clone works without installing soap: the package beside the Snakefile is imported here, and
# Snakemake hands this sys.path on to every script job.
_REPO = Path(workflow.basedir)
if (_REPO / "soap" / "__init__.py").is_file():
    sys.path.insert(0, str(_REPO))

from soap import pipeline  # noqa: E402  (needs the path set above)

# The one validator (soap/schemas/config.schema.yaml, train keys from soap.config.TrainConfig): stops
# the workflow before any job runs with one line naming the offending key, and fills in defaults.
pipeline.load_study_config(values=config)

DATASETS = config["datasets"]
METHODS = config["methods"]
REPEATS = list(range(config["tune"]["repeats"]))
GRID_LRS = pipeline.grid_lrs(config)
GRID_CHUNKS = list(range(pipeline.n_chunks(config["grid"]["seeds"], config["grid"]["seeds_per_job"])))
TUNED_CHUNKS = list(range(pipeline.n_chunks(config["tuned"]["seeds"], config["tuned"]["seeds_per_job"])))


def _gpus_in_use():
    if config["gpus"] == "auto":  # only counts this machine: on a cluster, set gpus to a number
        from soap.gpu_lease import visible_devices

        return len(visible_devices("auto")) > 0
    return config["gpus"] > 0


# Training jobs ask Snakemake for one GPU each (cap them with --resources gpu=N) and lease it.
GPU_PER_JOB = 1 if _gpus_in_use() else 0
THREADS = config["threads"]


# --- SLURM (workflow/profiles/slurm; soap.slurm): no-ops off a cluster ---------------------------------
# A job asking for more CPUs than any node has would wait in SLURM for ever: threads never exceed the
# largest node's CPUs, and the controller cancels (with an error naming it) a job SLURM can never start.
# A controller killed mid-run leaves its jobs running: a new one waits for them instead of resubmitting.
import os  # noqa: E402

from soap import slurm  # noqa: E402

THREADS = slurm.cap_threads(THREADS, slurm.largest_node(), f"threads={THREADS} (config)")
slurm.wait_for_previous(os.getcwd())


onstart:
    slurm.record_controller(os.getcwd())
    slurm.Watch(os.getcwd()).start()


wildcard_constraints:
    dataset="|".join(DATASETS),
    method="|".join(METHODS),
    repeat=r"\d+",
    chunk=r"\d+",
    phase="grid|tuned",


# --- inputs -----------------------------------------------------------------------------------------


def prepared_data(wildcards):
    return f"results/data/{wildcards.dataset}.pt"


def tune_bests(wildcards):
    """best.json of every (method, repeat) study of one dataset."""
    return tune_outputs("best.json", [wildcards.dataset])


def tune_outputs(name, datasets=DATASETS):
    """One file (best.json, trials.csv) of every tuning study."""
    return expand(
        "results/tune/{dataset}/{method}/r{repeat}/{name}",
        dataset=datasets,
        method=METHODS,
        repeat=REPEATS,
        name=name,
    )


def tuned_lr_files(wildcards=None):
    return expand("results/tune/{dataset}/tuned_lrs.json", dataset=DATASETS)


def population_outputs(name):
    """One file kind (runs.parquet, curves.parquet, meta.json) of every training job of the study."""
    grid = expand(
        "results/train/grid/{dataset}/chunk{chunk}/{name}",
        dataset=DATASETS,
        chunk=GRID_CHUNKS,
        name=name,
    )
    tuned = expand(
        "results/train/tuned/{dataset}/chunk{chunk}/{name}",
        dataset=DATASETS,
        chunk=TUNED_CHUNKS,
        name=name,
    )
    return grid + tuned


# --- params: only what changes results, so unrelated config edits do not rerun training --------------


def grid_members(wildcards):
    seeds = pipeline.chunk_seeds(
        config["grid"]["seeds"], config["grid"]["seeds_per_job"], int(wildcards.chunk)
    )
    return pipeline.grid_members(
        METHODS,
        GRID_LRS,
        seeds,
        config["grid"]["refresh_periods"],
        config["train"]["refresh_period"],
    )


def tuned_seeds(wildcards):
    return pipeline.chunk_seeds(
        config["tuned"]["seeds"], config["tuned"]["seeds_per_job"], int(wildcards.chunk)
    )


def tune_settings(wildcards=None):
    keys = ("n_trials", "batch", "lr_low", "lr_high", "epochs", "seed", "sampler", "storage")
    return {key: config["tune"][key] for key in keys}


def report_figures():
    """Every figure of the report, named by its caption file (workflow/report/fig*.rst)."""
    captions = sorted((_REPO / "workflow" / "report").glob("fig*.rst"))
    return {path.stem: path.name for path in captions}


# --- interventions (issue 10; soap.interventions): every arm off unless config["interventions"] says so ---

from soap import interventions  # noqa: E402
from soap.intervention_figures import FIGURES as VERDICT_FIGURES  # noqa: E402

IV = config["interventions"]
IV_ON = interventions.enabled(config)
IV_OPTIMIZERS = {entry["name"]: entry for entry in IV["optimizers"]}
IV_CHUNKS = list(range(pipeline.n_chunks(IV["seeds"], IV["seeds_per_job"])))


def iv_seeds(wildcards):
    return pipeline.chunk_seeds(IV["seeds"], IV["seeds_per_job"], int(wildcards.chunk))


def dose_members(wildcards):
    return interventions.dose_members(IV["alpha_methods"], IV["alphas"], GRID_LRS, iv_seeds(wildcards))


def optimizer_train(wildcards):
    """The `train` block with this optimizer."""
    return {**config["train"], "optimizer": wildcards.optimizer}


def optimizer_tune(wildcards):
    """tune_settings() with this optimizer's own learning-rate range."""
    entry = IV_OPTIMIZERS[wildcards.optimizer]
    return {**tune_settings(), "lr_low": entry["lr_low"], "lr_high": entry["lr_high"]}


def optimizer_grid_members(wildcards):
    lrs = interventions.optimizer_lrs(IV_OPTIMIZERS[wildcards.optimizer])
    return pipeline.grid_members(IV["optimizer_methods"], lrs, iv_seeds(wildcards))


def optimizer_tune_bests(wildcards):
    return expand(
        "results/interventions/tune/{optimizer}/{dataset}/{method}/r{repeat}/best.json",
        optimizer=wildcards.optimizer,
        dataset=wildcards.dataset,
        method=IV["optimizer_methods"],
        repeat=REPEATS,
    )


def grid_runs_of(wildcards):
    """The main grid's runs tables of one dataset (sign's per-layer gains for bp_matched)."""
    return expand(
        "results/train/grid/{dataset}/chunk{chunk}/runs.parquet",
        dataset=wildcards.dataset,
        chunk=GRID_CHUNKS,
    )


def intervention_outputs(name):
    """One file kind (runs.parquet, curves.parquet, meta.json) of every intervention training job."""
    arms = (["dose"] if IV["alphas"] else []) + (["matched"] if IV["bp_matched"] else [])
    arms += [f"{optimizer}/{phase}" for optimizer in IV_OPTIMIZERS for phase in ("grid", "tuned")]
    return expand(
        "results/interventions/train/{arm}/{dataset}/chunk{chunk}/{name}",
        arm=arms,
        dataset=DATASETS,
        chunk=IV_CHUNKS,
        name=name,
    )


def intervention_targets():
    """What `all` asks of the interventions: their runs table and verdict, when any arm is on."""
    if not IV_ON:
        return []
    return ["results/interventions/runs.parquet", "results/interventions/verdict/verdict.csv"]
