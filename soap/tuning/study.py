"""The tuning objective: one Optuna study per (dataset, method, repeat), trained in batches.

Every method gets the same trial budget, the same log-uniform learning-rate range, the same sampler and
the same training budget per trial; the objective is the validation loss at the end of that budget.
Trials are evaluated in batches: ask k trials, train their k learning rates as ONE population
(soap.population), tell each its result. Several workers may share a study (soap.tuning.workers), and
one process may run several repeats' studies in lockstep, their batches trained as one population
(run_studies; the Snakemake job of a (dataset, method) does, to amortise its start-up over all repeats).

Choices, and why:
- Seeds. Repeat r seeds its sampler and trains every trial with seed `tune.seed + r`, a seed no
  evaluation run uses, so tuning never sees the runs it is judged on. Within a study all trials share
  that seed, so trials differ only in learning rate (paired), and the sampler seed does not depend on
  the method, so every method's first batch tries the same learning rates.
- Sampler (`tune.sampler`). tpe: the first `batch` finished trials are drawn at random (TPE's startup),
  later batches by TPE with a constant liar, so the k trials of a batch spread out instead of piling up.
  random: every trial drawn independently, log-uniform. Each trial records its origin (ORIGIN_ATTR:
  "random" or "tpe"; the `origin` column of trials.csv), so i.i.d. trials can be told apart from
  adaptive ones (an expected-best-vs-budget curve needs i.i.d. trials).
- Diverged trials (NaN or exploding loss) are told as PRUNED, not FAIL: they used their budget, they
  count towards n_trials, and TPE ranks pruned trials below every complete one, so it learns to avoid
  that region. FAIL is left for trials that never finished (a crash, a killed worker) and are redone.
- Resume. Finished trials are kept and only the remainder is asked; a dead worker's trials are failed
  and enqueued again with their learning rate. The sampler is re-seeded from the study's progress for
  every batch (its own progress, also in lockstep beside other repeats' studies), so a resumed
  single-worker study asks exactly what an uninterrupted one would have.
  With several workers the learning rates asked depend on timing: only a single worker is replayable.
- The study name carries a hash of everything the objective depends on, so changing the training
  setup, the search range or the sampler starts a fresh study instead of mixing incompatible trials.
- A method's tuned learning rate over repeats is, by default, the geometric median of the repeats'
  best learning rates: each repeat's best is a noisy argmin, and the median is robust to one unlucky
  study, whereas best-of-repeats (`tune.aggregate: best`) would pick the repeat with the luckiest seed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import warnings
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from soap.config import ConfigError
from soap.files import write_atomic
from soap.study_config import device_for, train_config
from soap.tables import write_text
from soap.tuning.errors import TuneError
from soap.tuning.workers import WORKER_ATTR, coordinator, fail_stale_trials, new_worker_id, open_storage

log = logging.getLogger(__name__)

# What best.json and the report read; a trial's own columns come from Study.trials_dataframe().
BEST_KEYS = ("lr", "value", "n_trials")
ORIGIN_ATTR = "origin"  # user attr of every trial: "random" (drawn independently) or "tpe"
POLL_S = 1.0  # how often a worker with no slot left looks again for finished or stale trials


def _population(cfg: dict, dataset: str, members: list[dict], prepared: str | None = None):
    """The TrainConfig of one batch of trials: the study's training setup at the tuning budget."""
    return train_config(cfg["train"], dataset, "tune", members, prepared=prepared, data=cfg["data"],
                        epochs=cfg["tune"]["epochs"], device=device_for(cfg["gpus"]))


def train_config_values(cfg: dict, dataset: str, method: str, repeat: int) -> dict:
    """The training setup a study's objective depends on, as a dict (for its fingerprint)."""
    seed = cfg["tune"]["seed"] + repeat
    return _population(cfg, dataset, [{"method": method, "lr": 1.0, "seed": seed}]).to_dict()


def study_name(dataset: str, method: str, repeat: int, fingerprint: str) -> str:
    return f"soap-{dataset}-{method}-r{repeat}-{fingerprint}"


def fingerprint(train_values: dict, tune: dict) -> str:
    """Short hash of what the trials depend on (not n_trials or batch: more trials may be added)."""
    ignored = {"members", "methods", "lrs", "seeds", "prepared", "data_root", "download", "device",
               "target_loss", "phase"}
    relevant = {
        "train": {k: v for k, v in sorted(train_values.items()) if k not in ignored},
        "tune": {k: tune[k] for k in ("lr_low", "lr_high", "epochs", "seed", "sampler")},
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:8]


def finished_trials(study) -> list:
    """Trials that used their budget: complete ones, and diverged ones told as pruned."""
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def batch_sampler(kind: str, seed: int, progress: tuple[int, ...], n_startup: int):
    """The sampler of one batch and the origin of the trials it draws.

    A fresh sampler per batch, seeded by progress = (finished, running, waiting): a resumed study asks
    what an uninterrupted one would, and two workers asking at different moments draw differently.
    """
    import optuna

    batch_seed = int(np.random.SeedSequence([seed, *progress]).generate_state(1)[0])
    if kind == "random" or progress[0] < n_startup:
        return optuna.samplers.RandomSampler(seed=batch_seed), "random"
    return optuna.samplers.TPESampler(seed=batch_seed, n_startup_trials=0, constant_liar=True), "tpe"


class StudyWorker:
    """This process's worker on one study: reserve its next batch of trials, then tell their results.

    The one place trials are asked and told, whether a process works on one study (run_study, perhaps
    beside peer workers on a shared storage) or on several in lockstep (run_studies). Use it as a context
    manager; it holds the storage's coordinator until closed.
    """

    def __init__(self, cfg: dict, dataset: str, method: str, repeat: int, location: str | Path):
        import optuna
        from optuna.distributions import FloatDistribution

        tune = self.tune = cfg["tune"]
        self.method, self.seed = method, tune["seed"] + repeat
        self.name = study_name(dataset, method, repeat,
                               fingerprint(train_config_values(cfg, dataset, method, repeat), tune))
        # the whole search space: one log-uniform learning rate, identical for every method
        self._distributions = {"lr": FloatDistribution(tune["lr_low"], tune["lr_high"], log=True)}
        location, self._me = str(location), new_worker_id()
        storage = open_storage(location, tune)
        self._coord = coordinator(storage, location, self._me)
        self._batch = ExitStack()  # the reserved trials' heartbeats, from reserve() until tell()
        self._trials: list = []
        try:
            with self._coord.exclusive(self.name):  # two workers creating one study at once would both insert it
                self.study = optuna.create_study(study_name=self.name, storage=storage, direction="minimize",
                                                 load_if_exists=True)
                self.study.set_user_attr("settings", {
                    "dataset": dataset, "method": method, "repeat": repeat, "seed": self.seed,
                    **{k: tune[k] for k in ("lr_low", "lr_high", "epochs", "sampler")}})
        except BaseException:
            self._coord.close()
            raise

    def __enter__(self) -> StudyWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._batch.close()
        self._coord.close()

    def finished(self) -> int:
        return len(finished_trials(self.study))

    def reserve(self) -> list[dict] | None:
        """Ask this study's next batch (at most tune.batch trials) and return its population members;
        [] if peers hold the last slots (ask again later: a dead peer's trials are redone), None once
        the study has n_trials finished trials and nothing is running."""
        from optuna.trial import TrialState

        tune, study = self.tune, self.study
        # Count and ask under the study lock: no two workers reserve the same slot.
        with self._coord.exclusive(self.name):
            fail_stale_trials(study, self._coord)
            count = {state: len(study.get_trials(deepcopy=False, states=(state,)))
                     for state in (TrialState.RUNNING, TrialState.WAITING)}
            done, running = len(finished_trials(study)), count[TrialState.RUNNING]
            k = min(tune["batch"], tune["n_trials"] - done - running)
            if k <= 0:
                return None if running == 0 else []
            study.sampler, origin = batch_sampler(tune["sampler"], self.seed,
                                                  (done, running, count[TrialState.WAITING]),
                                                  n_startup=tune["batch"])
            with warnings.catch_warnings():
                # Optuna expects heartbeats with optimize(); we record them (coord.keep_alive).
                warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used")
                self._trials = [study.ask(self._distributions) for _ in range(k)]
            # Heartbeat, then tag: a trial killed before its tag is failed as untagged.
            self._batch.enter_context(self._coord.keep_alive(study, self._trials))
            for trial in self._trials:
                trial.set_user_attr(WORKER_ATTR, self._me)
                if ORIGIN_ATTR not in trial.user_attrs:  # a retried trial keeps its own
                    trial.set_user_attr(ORIGIN_ATTR, origin)
        return [{"method": self.method, "lr": t.params["lr"], "seed": self.seed} for t in self._trials]

    def tell(self, runs) -> None:
        """Tell the reserved trials their runs (rows in the order of reserve()'s members)."""
        try:
            _tell(self.study, self._trials, runs)
        finally:
            self._trials = []
            self._batch.close()


def run_studies(cfg: dict, dataset: str, method: str, repeats: list[int], locations: list, *, data=None,
                prepared: str | None = None, progress: bool = False, poll_s: float = POLL_S) -> list:
    """Run (or resume) the studies of several repeats of one (dataset, method) in lockstep until each
    has tune.n_trials finished trials; return their optuna Studies, in the order of `repeats`.

    Each round every unfinished study reserves its next batch exactly as it would alone, the union of
    the batches trains as ONE population (each member keeps its own repeat's seed, hence its own data
    order), and each study is told its own members' runs. A population member trains exactly as alone,
    so every study asks and records what it would in a process of its own, while the trainer runs one
    population of R batches instead of R small ones. `cfg`: the study config's train, tune, data and
    gpus sections; `locations[i]`: repeat i's journal file, sqlite:///FILE or postgresql://... URL.
    """
    from soap import population as trainer  # looked up at call time, so tests can wrap the trainer

    if len(set(repeats)) != len(repeats):
        raise TuneError(f"repeats {list(repeats)}: each repeat may appear once (one worker per study and process)")
    n_trials = cfg["tune"]["n_trials"]
    with ExitStack() as stack:
        workers = [stack.enter_context(StudyWorker(cfg, dataset, method, repeat, location))
                   for repeat, location in zip(repeats, locations, strict=True)]
        active, rounds = list(workers), 0
        while active:
            reserved = [(worker, worker.reserve()) for worker in active]
            active = [worker for worker, members in reserved if members is not None]
            batches = [(worker, members) for worker, members in reserved if members]
            if not batches:
                if active:
                    time.sleep(poll_s)  # peers hold the last slots: wait, and redo them if a peer dies
                continue
            members = [member for _, batch in batches for member in batch]
            config = _population(cfg, dataset, members, prepared=prepared)
            data = data if data is not None else trainer.load_splits(config)  # once, for every round
            runs = trainer.train_population(config, data=data, progress=progress).runs
            start = 0
            for worker, batch in batches:  # the population's rows follow the members' order
                worker.tell(runs.iloc[start:start + len(batch)])
                start += len(batch)
            rounds += 1
            log.info("%s-%s round %d (%d trials): finished per study %s", dataset, method, rounds,
                     len(members), ", ".join(f"r{r} {w.finished()}/{n_trials}" for r, w in zip(repeats, workers)))
        return [worker.study for worker in workers]


def run_study(cfg: dict, dataset: str, method: str, repeat: int, location: str | Path, *, data=None,
              prepared: str | None = None, progress: bool = False, poll_s: float = POLL_S):
    """Run (or resume, or join as one more worker) the study of one (dataset, method, repeat) until it
    has tune.n_trials finished trials; return the optuna Study. `cfg`: the study config's train, tune,
    data and gpus sections. `location`: a journal file, sqlite:///FILE or postgresql://... URL."""
    (study,) = run_studies(cfg, dataset, method, [repeat], [location], data=data, prepared=prepared,
                           progress=progress, poll_s=poll_s)
    return study


def _tell(study, trials: list, runs) -> None:
    """Tell each trial its run's validation loss (PRUNED if it diverged), with the run's other numbers."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    # Rows follow the population's order, which is the order the trials were asked in.
    for trial, row in zip(trials, runs.itertuples()):
        assert math.isclose(row.lr, trial.params["lr"]), "population order differs from trial order"
        try:
            for key in ("val_acc", "feedback_gain", "final_train_loss"):
                trial.set_user_attr(key, float(getattr(row, key)))
            trial.set_user_attr("diverged", bool(row.diverged))
            if row.diverged or not math.isfinite(row.val_loss):
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, float(row.val_loss))
        except UpdateFinishedTrialError:
            # This worker was taken for dead (silent past the grace period) and a peer failed the trial
            # and asked it again: this result is surplus.
            log.warning("%s: trial %d was failed by a peer; its result is dropped", study.study_name,
                        trial.number)


def summarize(study) -> dict:
    """best.json: the best learning rate, its validation loss, and how many trials were finished."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise TuneError(f"{study.study_name}: every trial diverged; lower tune.lr_high")
    best = min(complete, key=lambda t: t.value)
    return {"lr": float(best.params["lr"]), "value": float(best.value), "n_trials": len(finished_trials(study))}


def trials_table(study):
    """Every trial (Study.trials_dataframe()), with the origin of its learning rate as column `origin`."""
    frame = study.trials_dataframe()
    return frame.rename(columns={f"user_attrs_{ORIGIN_ATTR}": "origin"})


def write_study(study, best_path, trials_path) -> dict:
    """Write best.json and trials.csv atomically."""
    summary = summarize(study)
    frame = trials_table(study)
    write_atomic(trials_path, lambda tmp: frame.to_csv(tmp, index=False))
    write_text(json.dumps(summary, indent=2) + "\n", best_path)
    return summary


def storage_location(cfg: dict, out_dir, storage_url=None) -> str:
    """Where a study lives: the given URL, else tune.storage, else out_dir/study.journal."""
    return str(storage_url or cfg["tune"]["storage"] or Path(out_dir) / "study.journal")


def tune_repeats(cfg: dict, dataset: str, method: str, repeats: list[int], out_dirs: list, *, storage_url=None,
                 prepared: str | None = None, progress: bool = False) -> list[dict]:
    """Run or resume the studies of several repeats in lockstep (run_studies) and write each one's
    best.json and trials.csv in its out_dir (out_dirs[i] for repeats[i]); return their summaries."""
    out_dirs = [Path(d) for d in out_dirs]
    studies = run_studies(cfg, dataset, method, list(repeats),
                          [storage_location(cfg, d, storage_url) for d in out_dirs], prepared=prepared,
                          progress=progress)
    summaries = []
    for study, out_dir in zip(studies, out_dirs, strict=True):
        summary = write_study(study, out_dir / "best.json", out_dir / "trials.csv")
        log.info("%s: best lr %.4g (val loss %.4f, %d trials)", study.study_name, summary["lr"],
                 summary["value"], summary["n_trials"])
        summaries.append(summary)
    return summaries


def tune_one(cfg: dict, dataset: str, method: str, repeat: int, out_dir, *, storage_url=None,
             prepared: str | None = None, progress: bool = False) -> dict:
    """Run, resume or join one study and write out_dir/best.json and out_dir/trials.csv."""
    (summary,) = tune_repeats(cfg, dataset, method, [repeat], [out_dir], storage_url=storage_url,
                              prepared=prepared, progress=progress)
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
