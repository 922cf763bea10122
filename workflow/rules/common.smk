# Config validation and every input function; the other .smk files hold only rules.

import re
import sys
from pathlib import Path

# A fresh clone works without installing soap: the package beside the Snakefile is imported here, and
# Snakemake hands this sys.path on to every script job.
_REPO = Path(workflow.basedir)
if (_REPO / "soap" / "__init__.py").is_file():
    sys.path.insert(0, str(_REPO))

from soap import interventions, pipeline, verdict_files  # noqa: E402  (needs the path set above)
from soap.study_config import load_study_config, seeds_per_job  # noqa: E402

# The one validator (soap/schemas/config.schema.yaml, train keys from soap.config.TrainConfig): stops
# the workflow before any job runs with one line naming the offending key, and fills in defaults.
load_study_config(values=config)

DATASETS = config["datasets"]
METHODS = config["methods"]
REPEATS = list(range(config["tune"]["repeats"]))
GRID_LRS = pipeline.grid_lrs(config)

# Interventions (issues 10, 19; soap.interventions): every arm off unless config["interventions"] says so.
IV = config["interventions"]
IV_ON = interventions.enabled(config)
IV_OPTIMIZERS = {entry["name"]: entry for entry in IV["optimizers"]}
# The verdict's tables (soap.verdict_files.VERDICT_FILES) in results/interventions/verdict/: the report's inputs.
VERDICT_TABLES = {
    name.split(".")[0]: f"results/interventions/verdict/{name}" for name in verdict_files.VERDICT_FILES
}
IV_CHUNKS = list(range(pipeline.n_chunks(IV["seeds"], IV["seeds_per_job"])))

# Study arms: the main study and, for each extra optimizer, tune -> grid -> tuned again with its own
# methods, lr range and seeds, by the same rules (tune.smk, train.smk). The {arm} wildcard is where an
# arm's files sit below results/ and logs/: "" for the main study (results/tune/..., results/train/...),
# "interventions/{optimizer}/" for an optimizer arm. ARMS maps it to the optimizer (None: the main study).
ARMS = {"": None, **{f"interventions/{name}/": name for name in IV_OPTIMIZERS}}


def _gpus_in_use():
    if config["gpus"] == "auto":  # only counts this machine: on a cluster, set gpus to a number
        from soap.gpu_lease import visible_devices

        return len(visible_devices("auto")) > 0
    return config["gpus"] > 0


# Training jobs ask Snakemake for one GPU each (cap them with --resources gpu=N) and lease it.
GPU_PER_JOB = 1 if _gpus_in_use() else 0
# Seeds per training job: the CPU sizing, or with GPUs many more members per job (seeds_per_gpu_job)
GRID_SEEDS_PER_JOB = seeds_per_job(config["grid"], GPU_PER_JOB > 0)
TUNED_SEEDS_PER_JOB = seeds_per_job(config["tuned"], GPU_PER_JOB > 0)
GRID_CHUNKS = list(range(pipeline.n_chunks(config["grid"]["seeds"], GRID_SEEDS_PER_JOB)))
TUNED_CHUNKS = list(range(pipeline.n_chunks(config["tuned"]["seeds"], TUNED_SEEDS_PER_JOB)))
THREADS = config["threads"]


# --- SLURM (workflow/profiles/slurm; soap.slurm): no-ops off a cluster ---------------------------------
# A job asking for more CPUs than any node has would wait in SLURM for ever: threads never exceed the
# largest node's CPUs, and the controller cancels (with an error naming it) a job SLURM can never start.
# A controller killed mid-run leaves its jobs running: a new one waits for them instead of resubmitting.
import os  # noqa: E402

from soap import slurm  # noqa: E402

# Off a cluster (no SLURM, or one that does not answer sinfo) none of this runs: a local study polls nothing.
SLURM_NODE = slurm.largest_node()
THREADS = slurm.cap_threads(THREADS, SLURM_NODE, f"threads={THREADS} (config)")
if SLURM_NODE is not None:
    slurm.wait_for_previous(os.getcwd())


onstart:
    if SLURM_NODE is not None:
        slurm.record_controller(os.getcwd())
        slurm.Watch(os.getcwd()).start()


wildcard_constraints:
    arm="(?:" + "|".join(re.escape(arm) for arm in ARMS) + ")",  # may be empty: the main study
    dataset="|".join(DATASETS),
    method="|".join(METHODS),
    repeat=r"\d+",
    chunk=r"\d+",
    phase="grid|tuned",


# --- inputs -----------------------------------------------------------------------------------------


def prepared_data(wildcards):
    return f"results/data/{wildcards.dataset}.pt"


def tune_bests(wildcards):
    """best.json of every (method, repeat) study of one dataset in one arm."""
    return expand(
        "results/{arm}tune/{dataset}/{method}/r{repeat}/best.json",
        arm=wildcards.arm,
        dataset=wildcards.dataset,
        method=arm_methods(wildcards),
        repeat=REPEATS,
    )


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


def arm_optimizer(wildcards):
    """The optimizer arm of a job, or None for the main study."""
    return ARMS[wildcards.arm]


def arm_methods(wildcards):
    return IV["optimizer_methods"] if arm_optimizer(wildcards) else METHODS


def arm_train(wildcards):
    """The `train` block, with the arm's optimizer."""
    optimizer = arm_optimizer(wildcards)
    return {**config["train"], "optimizer": optimizer} if optimizer else config["train"]


def tune_settings(wildcards=None):
    """The `tune` block's keys that change results, with an optimizer arm's own lr range."""
    keys = ("n_trials", "batch", "lr_low", "lr_high", "epochs", "seed", "sampler", "storage")
    settings = {key: config["tune"][key] for key in keys}
    if wildcards is not None and arm_optimizer(wildcards):
        entry = IV_OPTIMIZERS[arm_optimizer(wildcards)]
        settings.update(lr_low=entry["lr_low"], lr_high=entry["lr_high"])
    return settings


def grid_members(wildcards):
    """A grid chunk: the main grid (with its refresh-period axis), or an optimizer arm's own lr grid."""
    optimizer = arm_optimizer(wildcards)
    if optimizer:
        lrs = interventions.optimizer_lrs(IV_OPTIMIZERS[optimizer])
        return pipeline.grid_members(IV["optimizer_methods"], lrs, iv_seeds(wildcards))
    seeds = pipeline.chunk_seeds(
        config["grid"]["seeds"], GRID_SEEDS_PER_JOB, int(wildcards.chunk)
    )
    return pipeline.grid_members(
        METHODS,
        GRID_LRS,
        seeds,
        config["grid"]["refresh_periods"],
        config["train"]["refresh_period"],
    )


def tuned_seeds(wildcards):
    if arm_optimizer(wildcards):
        return iv_seeds(wildcards)
    return pipeline.chunk_seeds(
        config["tuned"]["seeds"], TUNED_SEEDS_PER_JOB, int(wildcards.chunk)
    )


def iv_seeds(wildcards):
    return pipeline.chunk_seeds(IV["seeds"], IV["seeds_per_job"], int(wildcards.chunk))


def dose_members(wildcards):
    return interventions.dose_members(IV["alpha_methods"], IV["alphas"], GRID_LRS, iv_seeds(wildcards))


def factorial_members(wildcards):
    """A factorial chunk: the crossed cells (and r's plain cell when r is not in methods) at the grid lrs;
    the main grid's seeds 0 .. interventions.seeds-1, so every cell pairs with the main grid's bp by seed."""
    return interventions.factorial_members(IV["factorial"], GRID_LRS, iv_seeds(wildcards), trained=METHODS)


def captioned_figures(prefix):
    """{stem: caption file} of the figures whose captions are workflow/report/{prefix}*.rst."""
    captions = sorted((_REPO / "workflow" / "report").glob(f"{prefix}*.rst"))
    return {path.stem: path.name for path in captions}


def report_figures():
    """Every figure of the report (soap.report), named by its caption file (workflow/report/fig*.rst)."""
    return captioned_figures("fig")


def verdict_figures():
    """The interventions' verdict figures, named by their caption files (workflow/report/verdict_*.rst)."""
    return captioned_figures("verdict_")


# --- interventions -------------------------------------------------------------------------------


def intervention_outputs(name):
    """One file kind (runs.parquet, curves.parquet, meta.json) of every intervention training job."""
    jobs = (["train/factorial"] if IV["factorial"] else []) + (["train/dose"] if IV["alphas"] else [])
    jobs += [f"{optimizer}/train/{phase}" for optimizer in IV_OPTIMIZERS for phase in ("grid", "tuned")]
    return expand(
        "results/interventions/{job}/{dataset}/chunk{chunk}/{name}",
        job=jobs,
        dataset=DATASETS,
        chunk=IV_CHUNKS,
        name=name,
    )


def intervention_targets():
    """What `all` asks of the interventions: their runs table and verdict, when any arm is on (the
    factorial alone included: the default study's report answers the question)."""
    if not IV_ON:
        return []
    return ["results/interventions/runs.parquet", *VERDICT_TABLES.values()]

