"""Phase 1: tune each method's learning rate the same way (STUDY.md).

One Optuna study per (dataset, method, repeat). Every method gets the same trial budget, the same
log-uniform learning-rate range and the same training budget per trial; the objective is the
validation loss at the end of that budget. Trials are evaluated in batches: ask k trials, train their
k learning rates as ONE population (soap.population), tell each its result.

Choices, and why:
- Seeds. Repeat r seeds its sampler and trains every trial with seed `tune.seed + r`, a seed no
  evaluation run uses, so tuning never sees the runs it is judged on. Within a study all trials share
  that seed, so trials differ only in learning rate (paired), and the sampler seed does not depend on
  the method, so every method's first batch tries the same learning rates.
- Diverged trials (NaN or exploding loss) are told as PRUNED, not FAIL: they used their budget, they
  count towards n_trials, and TPE ranks pruned trials below every complete one, so it learns to avoid
  that region. FAIL is left for trials that never finished (a crash, a killed job) and are redone.
- Batches use TPE's constant liar, so the k trials of a batch spread out instead of piling up.
- Resume. Storage is a JournalStorage file per study (no server) or any RDB URL. On restart, RUNNING
  trials are stale (one job owns a study at a time) and are marked FAIL; finished trials are kept and
  only the remainder is asked. The sampler is re-seeded from (seed, finished trials) for every batch,
  so a resumed study asks exactly what an uninterrupted one would have.
- The study name carries a hash of everything the objective depends on, so changing the training
  setup or the search range starts a fresh study instead of mixing incompatible trials.
- A method's tuned learning rate over repeats is, by default, the geometric median of the repeats'
  best learning rates: each repeat's best is a noisy argmin, and the median is robust to one unlucky
  study, whereas best-of-repeats (`tune.aggregate: best`) would pick the repeat with the luckiest seed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import numpy as np

from soap.config import ConfigError
from soap.tables import write_atomic, write_text

log = logging.getLogger(__name__)

# What best.json and the report read; a trial's own columns come from Study.trials_dataframe().
BEST_KEYS = ("lr", "value", "n_trials")


class TuneError(ConfigError):
    """A study that cannot give a learning rate (e.g. every trial diverged: the range is too high)."""


def search_space(trial, low: float, high: float) -> dict:
    """The whole search space: one log-uniform learning rate, identical for every method."""
    return {"lr": trial.suggest_float("lr", low, high, log=True)}


def _population(cfg: dict, dataset: str, members: list[dict], prepared: str | None = None):
    """The TrainConfig of one batch of trials: the study's training setup at the tuning budget."""
    from soap.pipeline import device_for, train_config

    return train_config(cfg["train"], dataset, "tune", members, prepared=prepared, data=cfg["data"],
                        epochs=cfg["tune"]["epochs"], device=device_for(cfg["gpus"]))


def train_config_values(cfg: dict, dataset: str, method: str, repeat: int) -> dict:
    """The training setup a study's objective depends on, as a dict (for its fingerprint)."""
    seed = cfg["tune"]["seed"] + repeat
    return _population(cfg, dataset, [{"method": method, "lr": 1.0, "seed": seed}]).to_dict()


def study_name(dataset: str, method: str, repeat: int, fingerprint: str) -> str:
    return f"soap-{dataset}-{method}-r{repeat}-{fingerprint}"


def fingerprint(train_values: dict, tune: dict) -> str:
    """Short hash of what the objective depends on (not n_trials or batch: more trials may be added)."""
    ignored = {"members", "methods", "lrs", "seeds", "prepared", "data_root", "download", "device",
               "target_loss", "phase"}
    relevant = {
        "train": {k: v for k, v in sorted(train_values.items()) if k not in ignored},
        "tune": {k: tune[k] for k in ("lr_low", "lr_high", "epochs", "seed")},
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:8]


def open_storage(url: str | Path):
    """A JournalStorage for a file path (resumable, no server) or an RDBStorage for a database URL."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    url = str(url)
    if "://" in url:
        return optuna.storages.RDBStorage(url)
    Path(url).parent.mkdir(parents=True, exist_ok=True)
    # The open(O_EXCL) lock works on every local and network file system, unlike symlinks on some.
    return JournalStorage(JournalFileBackend(url, lock_obj=JournalFileOpenLock(url)))


def fail_stale_trials(study) -> int:
    """Mark RUNNING trials as FAIL: with one job per study, any left are from a killed process."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    if stale:
        log.warning("%s: %d stale RUNNING trial(s) from an interrupted run marked FAIL", study.study_name,
                    len(stale))
    return len(stale)


def finished_trials(study) -> list:
    """Trials that used their budget: complete ones, and diverged ones told as pruned."""
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def _batch_sampler(seed: int, n_finished: int, n_startup: int):
    import optuna

    # A fresh sampler per batch, seeded by progress: a resumed study asks what an uninterrupted one would.
    batch_seed = int(np.random.SeedSequence([seed, n_finished]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=batch_seed, n_startup_trials=n_startup, constant_liar=True)


def run_study(cfg: dict, dataset: str, method: str, repeat: int, storage, *, data=None,
              prepared: str | None = None, progress: bool = False):
    """Run (or resume) the study of one (dataset, method, repeat) until it has tune.n_trials finished
    trials; return the optuna Study. `cfg`: the study config's train, tune, data and gpus sections."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    from soap import population as trainer  # looked up at call time, so tests can wrap the trainer

    tune = cfg["tune"]
    seed = tune["seed"] + repeat
    name = study_name(dataset, method, repeat,
                      fingerprint(train_config_values(cfg, dataset, method, repeat), tune))
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize", load_if_exists=True)
    study.set_user_attr("settings", {"dataset": dataset, "method": method, "repeat": repeat, "seed": seed,
                                     **{k: tune[k] for k in ("lr_low", "lr_high", "epochs")}})
    fail_stale_trials(study)
    distributions = {"lr": FloatDistribution(tune["lr_low"], tune["lr_high"], log=True)}

    while (done := len(finished_trials(study))) < tune["n_trials"]:
        k = min(tune["batch"], tune["n_trials"] - done)
        study.sampler = _batch_sampler(seed, done, n_startup=tune["batch"])
        trials = [study.ask(distributions) for _ in range(k)]
        members = [{"method": method, "lr": t.params["lr"], "seed": seed} for t in trials]
        config = _population(cfg, dataset, members, prepared=prepared)
        data = data if data is not None else trainer.load_splits(config)  # once, for every batch
        runs = trainer.train_population(config, data=data, progress=progress).runs
        # Rows follow the population's order, which is the order the trials were asked in.
        for trial, row in zip(trials, runs.itertuples()):
            assert math.isclose(row.lr, trial.params["lr"]), "population order differs from trial order"
            for key in ("val_acc", "feedback_gain", "final_train_loss"):
                trial.set_user_attr(key, float(getattr(row, key)))
            trial.set_user_attr("diverged", bool(row.diverged))
            if row.diverged or not math.isfinite(row.val_loss):
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, float(row.val_loss))
        log.info("%s: %d/%d trials finished", name, len(finished_trials(study)), tune["n_trials"])
    return study


def summarize(study) -> dict:
    """best.json: the best learning rate, its validation loss, and how many trials were finished."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise TuneError(f"{study.study_name}: every trial diverged; lower tune.lr_high")
    best = min(complete, key=lambda t: t.value)
    return {"lr": float(best.params["lr"]), "value": float(best.value), "n_trials": len(finished_trials(study))}


def write_study(study, best_path, trials_path) -> dict:
    """Write best.json and trials.csv (every trial, Study.trials_dataframe()) atomically."""
    summary = summarize(study)
    frame = study.trials_dataframe()
    write_atomic(trials_path, lambda tmp: frame.to_csv(tmp, index=False))
    write_text(json.dumps(summary, indent=2) + "\n", best_path)
    return summary


def tune_one(cfg: dict, dataset: str, method: str, repeat: int, out_dir, *, storage_url=None,
             prepared: str | None = None, progress: bool = False) -> dict:
    """Run or resume one study and write out_dir/best.json and out_dir/trials.csv."""
    out_dir = Path(out_dir)
    storage = open_storage(storage_url or cfg["tune"]["storage"] or out_dir / "study.journal")
    study = run_study(cfg, dataset, method, repeat, storage, prepared=prepared, progress=progress)
    summary = write_study(study, out_dir / "best.json", out_dir / "trials.csv")
    log.info("%s: best lr %.4g (val loss %.4f, %d trials)", study.study_name, summary["lr"], summary["value"],
             summary["n_trials"])
    return summary


def aggregate_repeats(bests: list[dict], how: str = "median") -> dict:
    """One tuned learning rate from the repeats' best.json records.

    median: the geometric median of the best learning rates (the median of log lr; for an even count
    the geometric mean of the middle two). best: the lr of the repeat with the lowest validation loss.
    """
    if not bests:
        raise TuneError("no tuning repeats to aggregate")
    lrs = [float(b["lr"]) for b in bests]
    if how == "median":
        lr = float(math.exp(np.median(np.log(lrs))))
    elif how == "best":
        lr = float(min(bests, key=lambda b: b["value"])["lr"])
    else:
        raise ConfigError(f"tune.aggregate must be median or best, got {how!r}")
    return {"lr": lr, "aggregate": how, "repeat_lrs": lrs, "repeat_values": [float(b["value"]) for b in bests]}


def tuned_lrs(best_paths: dict[str, list], how: str = "median") -> dict:
    """{method: [best.json paths of its repeats]} -> {method: aggregate_repeats(...)}."""
    return {method: aggregate_repeats([json.loads(Path(p).read_text()) for p in paths], how)
            for method, paths in best_paths.items()}


# --- `soap tune` ------------------------------------------------------------------------------------

def add_tune_arguments(parser) -> None:
    parser.add_argument("--method", required=True, help="feedback rule to tune, e.g. sign")
    parser.add_argument("--dataset", default="mnist", help="mnist, fashion_mnist or synthetic")
    parser.add_argument("--config", action="append", default=None,
                        help="study config (default config.yaml); repeat to override key by key, as "
                             "snakemake --configfile does: --config config.yaml --config config/quick.yaml")
    parser.add_argument("--repeat", type=int, default=0, help="repeat index: seeds the sampler and the trials")
    parser.add_argument("--out", default=None,
                        help="output directory (default: results/tune/{dataset}/{method}/r{repeat})")
    parser.add_argument("--prepared", default=None, help="prepared dataset file (default: load from data.root)")
    parser.add_argument("--storage", default=None, help="Optuna storage URL or journal file (default: config)")
    parser.add_argument("--gpus", default=None, help="lease a GPU: auto, 0 or a count (default: config)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_tune_command(args) -> dict:
    from soap.gpu_lease import gpu_lease
    from soap.pipeline import load_study_config

    cfg = load_study_config(args.config or ["config.yaml"])
    if args.gpus is not None:
        cfg["gpus"] = 0 if args.gpus == "0" else args.gpus
    if args.method not in cfg["methods"]:
        log.warning("%s is not among the config's methods %s; tuning it anyway", args.method, cfg["methods"])
    out = args.out or f"results/tune/{args.dataset}/{args.method}/r{args.repeat}"
    with gpu_lease(cfg["gpu_lock_dir"], cfg["gpus"]):
        return tune_one(cfg, args.dataset, args.method, args.repeat, out, storage_url=args.storage,
                        prepared=args.prepared, progress=not args.quiet)


main_tune = run_tune_command
