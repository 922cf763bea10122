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
- Resume. Storage is a JournalStorage file per study (no server), a SQLite file, or a PostgreSQL URL.
  Finished trials are kept and only the remainder is asked; RUNNING trials whose worker has died are
  marked FAIL and asked again. The sampler is re-seeded from (seed, finished trials) for every batch,
  so a resumed single-worker study asks exactly what an uninterrupted one would have.
- Parallel workers (processes, or cluster jobs on a shared PostgreSQL) may run one study together and
  end with exactly n_trials finished trials. Optuna's MaxTrialsCallback counts and then asks, so two
  workers can both ask the last slot; here a worker counts and asks while holding a study lock (a
  flock beside a journal or SQLite file, a PostgreSQL advisory lock), so slots are reserved
  atomically. Each worker also holds a liveness lock for its whole life (its own flock'd file, or a
  session advisory lock) and tags its trials with its id: a RUNNING trial is stale exactly when its
  worker's lock is free, which the kernel or the server guarantees as soon as the worker dies, SIGKILL
  included. Optuna's heartbeats would need a grace period longer than the longest silent stretch of a
  live worker (a whole population's training), and JournalStorage has none in optuna 5. Workers that
  run out of slots wait for their peers' trials, so a peer's death is made good before anyone reports.
  With several workers the learning rates asked depend on timing: only a single worker is replayable.
- The study name carries a hash of everything the objective depends on, so changing the training
  setup or the search range starts a fresh study instead of mixing incompatible trials.
- A method's tuned learning rate over repeats is, by default, the geometric median of the repeats'
  best learning rates: each repeat's best is a noisy argmin, and the median is robust to one unlucky
  study, whereas best-of-repeats (`tune.aggregate: best`) would pick the repeat with the luckiest seed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import secrets
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from soap.config import ConfigError
from soap.tables import write_atomic, write_text

log = logging.getLogger(__name__)

# What best.json and the report read; a trial's own columns come from Study.trials_dataframe().
BEST_KEYS = ("lr", "value", "n_trials")


class TuneError(ConfigError):
    """A study that cannot give a learning rate (e.g. every trial diverged: the range is too high)."""


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


# --- coordination of the workers of one study ---------------------------------------------------------

WORKER_ATTR = "worker"  # user attr of every trial: the id of the worker that asked it
POLL_S = 1.0  # how often a worker with no slot left looks again for finished or stale trials


class _FileLocks:
    """Study lock and worker liveness as flock'd files beside a journal or SQLite file.

    flock is released by the kernel when its holder dies, and works across the nodes of an NFS mount
    (Linux maps it onto NFS byte-range locks).
    """

    def __init__(self, base: Path):
        self.study_lock = Path(f"{base}.soap-lock")  # not "<journal>.lock": optuna's own lock file
        self.worker_dir = Path(f"{base}.soap-workers")
        self._fd = -1
        self._path: Path | None = None

    def _worker_path(self, worker: str) -> Path:
        return self.worker_dir / f"{worker.rsplit(':', 1)[-1]}.lock"

    def register(self, worker: str) -> None:
        self.worker_dir.mkdir(parents=True, exist_ok=True)
        self._path = self._worker_path(worker)
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh random name: never held
        os.write(self._fd, f"{worker}\n".encode())

    @contextmanager
    def exclusive(self, study_name: str):
        # One lock per file, not per study: a shared journal serialises a few milliseconds per batch.
        self.study_lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.study_lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def alive(self, workers: set[str]) -> set[str]:
        """The workers of `workers` whose liveness lock is held; dead ones' files are removed."""
        live = set()
        for worker in workers:
            path = self._worker_path(worker)
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                live.add(worker)
            else:
                path.unlink(missing_ok=True)  # under the study lock, so no other reaper races this
            finally:
                os.close(fd)
        return live

    def close(self) -> None:
        if self._fd >= 0:
            if self._path is not None:
                self._path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = -1


class _PostgresLocks:
    """Study lock and worker liveness as PostgreSQL advisory locks, for workers on many nodes.

    A session advisory lock lives exactly as long as its connection: when a worker dies, its
    connection drops and the server releases its locks.
    """

    NAMESPACE = 0x50A9  # first key of soap's two-key study locks; workers use the one-key (bigint) form

    def __init__(self, url: str):
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        self._engine = sqlalchemy.create_engine(url, poolclass=NullPool)
        # Autocommit: session locks are not transactional, and an idle open transaction blocks vacuum.
        self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self._text = sqlalchemy.text

    @staticmethod
    def _key(worker: str) -> int:
        return int(worker.rsplit(":", 1)[-1], 16) >> 1  # 63 bits: a non-negative bigint

    def register(self, worker: str) -> None:
        self._conn.execute(self._text("SELECT pg_advisory_lock(:k)"), {"k": self._key(worker)})

    @contextmanager
    def exclusive(self, study_name: str):
        key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:4], "big", signed=True)
        self._conn.execute(self._text("SELECT pg_advisory_lock(:a, :b)"), {"a": self.NAMESPACE, "b": key})
        try:
            yield
        finally:
            self._conn.execute(self._text("SELECT pg_advisory_unlock(:a, :b)"), {"a": self.NAMESPACE, "b": key})

    def alive(self, workers: set[str]) -> set[str]:
        # A bigint lock shows in pg_locks as classid = high 32 bits, objid = low 32 bits, objsubid = 1.
        held = {row[0] for row in self._conn.execute(self._text(
            "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks WHERE locktype = 'advisory' "
            "AND objsubid = 1 AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"))}
        return {w for w in workers if self._key(w) in held}

    def close(self) -> None:
        self._conn.close()  # releases the liveness lock
        self._engine.dispose()


def _locks_for(storage):
    """The study lock and liveness locks that go with a storage (JournalStorage or RDBStorage)."""
    from optuna.storages import JournalStorage, RDBStorage

    if isinstance(storage, JournalStorage):
        path = getattr(getattr(storage, "_backend", None), "_file_path", None)
        if path is None:
            raise TuneError("JournalStorage without a file backend: tuning needs a journal file to lock")
        return _FileLocks(Path(path))
    if isinstance(storage, RDBStorage):
        from sqlalchemy.engine import make_url

        url = make_url(storage.url)
        if url.get_backend_name() == "postgresql":
            return _PostgresLocks(storage.url)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            return _FileLocks(Path(url.database))
        raise TuneError(f"tune.storage {url.get_backend_name()}: only a journal file, SQLite or PostgreSQL "
                        "can coordinate workers")
    raise TuneError(f"unsupported Optuna storage {type(storage).__name__}")


def new_worker_id() -> str:
    """host:pid:token. The token (64 random bits) names the worker's liveness lock."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"


def fail_stale_trials(study, locks, me: str | None = None) -> int:
    """Mark FAIL the RUNNING trials whose worker is dead; call it holding the study lock.

    A trial with no worker tag is stale too: tags are written in the same locked section that creates
    the trial, so an untagged RUNNING trial comes from a worker killed inside that section.
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    owners = {t.user_attrs.get(WORKER_ATTR) for t in running} - {None, me}
    live = locks.alive(owners) | {me}
    stale = [t for t in running if t.user_attrs.get(WORKER_ATTR) not in live]
    for trial in stale:
        try:
            study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except UpdateFinishedTrialError:  # its worker finished it after all
            pass
    if stale:
        log.warning("%s: %d stale RUNNING trial(s) of dead worker(s) marked FAIL: %s", study.study_name,
                    len(stale), sorted(t.number for t in stale))
    return len(stale)


def finished_trials(study) -> list:
    """Trials that used their budget: complete ones, and diverged ones told as pruned."""
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def _batch_sampler(seed: int, n_finished: int, n_running: int, n_startup: int):
    import optuna

    # A fresh sampler per batch, seeded by progress: a resumed study asks what an uninterrupted one would.
    # Peers' running trials enter the seed, so two workers asking at the same progress draw differently.
    entropy = [seed, n_finished] + ([n_running] if n_running else [])
    batch_seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=batch_seed, n_startup_trials=n_startup, constant_liar=True)


def run_study(cfg: dict, dataset: str, method: str, repeat: int, storage, *, data=None,
              prepared: str | None = None, progress: bool = False, poll_s: float = POLL_S):
    """Run (or resume, or join as one more worker) the study of one (dataset, method, repeat) until it
    has tune.n_trials finished trials; return the optuna Study. `cfg`: the study config's train, tune,
    data and gpus sections. `storage`: an optuna storage or its URL / journal path."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    from soap import population as trainer  # looked up at call time, so tests can wrap the trainer

    if isinstance(storage, (str, Path)):
        storage = open_storage(storage)
    tune = cfg["tune"]
    seed = tune["seed"] + repeat
    name = study_name(dataset, method, repeat,
                      fingerprint(train_config_values(cfg, dataset, method, repeat), tune))
    # the whole search space: one log-uniform learning rate, identical for every method
    distributions = {"lr": FloatDistribution(tune["lr_low"], tune["lr_high"], log=True)}
    locks, me = _locks_for(storage), new_worker_id()
    locks.register(me)
    try:
        with locks.exclusive(name):  # two workers creating the same study at once would both insert it
            study = optuna.create_study(study_name=name, storage=storage, direction="minimize",
                                        load_if_exists=True)
            study.set_user_attr("settings", {"dataset": dataset, "method": method, "repeat": repeat,
                                             "seed": seed,
                                             **{k: tune[k] for k in ("lr_low", "lr_high", "epochs")}})
        while True:
            # Count and ask under the study lock: no two workers reserve the same slot.
            with locks.exclusive(name):
                fail_stale_trials(study, locks, me)
                done = len(finished_trials(study))
                running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
                k = min(tune["batch"], tune["n_trials"] - done - running)
                if k > 0:
                    study.sampler = _batch_sampler(seed, done, running, n_startup=tune["batch"])
                    trials = [study.ask(distributions) for _ in range(k)]
                    for trial in trials:
                        trial.set_user_attr(WORKER_ATTR, me)
            if k <= 0:
                if running == 0:
                    break
                time.sleep(poll_s)  # peers hold the last slots: wait, and redo them if a peer dies
                continue
            members = [{"method": method, "lr": t.params["lr"], "seed": seed} for t in trials]
            config = _population(cfg, dataset, members, prepared=prepared)
            data = data if data is not None else trainer.load_splits(config)  # once, for every batch
            runs = trainer.train_population(config, data=data, progress=progress).runs
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
                    # Only if this worker's liveness lock was lost (a dropped database connection): a
                    # peer failed the trial and asked its slot again, so this result is surplus.
                    log.warning("%s: trial %d was failed by a peer; its result is dropped", name, trial.number)
            log.info("%s: %d/%d trials finished", name, len(finished_trials(study)), tune["n_trials"])
    finally:
        locks.close()
    return study


def _worker(cfg: dict, dataset: str, method: str, repeat: int, storage_url: str, prepared: str | None) -> None:
    """One of `soap tune --workers N`'s processes: lease a device, then work on the shared study."""
    import torch

    from soap.gpu_lease import gpu_lease

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s worker {os.getpid()}: %(message)s")
    torch.set_num_threads(1)  # N workers share the machine's cores
    with gpu_lease(cfg["gpu_lock_dir"], cfg["gpus"]):
        run_study(cfg, dataset, method, repeat, storage_url, prepared=prepared)


def run_workers(cfg: dict, dataset: str, method: str, repeat: int, storage_url: str, workers: int, *,
                prepared: str | None = None) -> list[int]:
    """Run `workers` processes on one study until it is finished; return their exit codes."""
    import multiprocessing as mp

    # spawn: each worker initialises its own CUDA context and leases its own device.
    ctx = mp.get_context("spawn")
    processes = [ctx.Process(target=_worker, args=(cfg, dataset, method, repeat, str(storage_url), prepared))
                 for _ in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    codes = [process.exitcode for process in processes]
    if any(codes):
        log.warning("tuning workers exited with %s; the study is finished by whoever remains", codes)
    return codes


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


def storage_location(cfg: dict, out_dir, storage_url=None) -> str:
    """Where a study lives: the given URL, else tune.storage, else out_dir/study.journal."""
    return str(storage_url or cfg["tune"]["storage"] or Path(out_dir) / "study.journal")


def tune_one(cfg: dict, dataset: str, method: str, repeat: int, out_dir, *, storage_url=None,
             prepared: str | None = None, progress: bool = False) -> dict:
    """Run, resume or join one study and write out_dir/best.json and out_dir/trials.csv."""
    out_dir = Path(out_dir)
    storage = open_storage(storage_location(cfg, out_dir, storage_url))
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
    parser.add_argument("--storage", default=None,
                        help="journal file, sqlite:///FILE or postgresql://... URL (default: config, else "
                             "OUT/study.journal); concurrent `soap tune` runs on one storage share the study")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes on this machine sharing the study (each leases its own GPU)")
    parser.add_argument("--gpus", default=None, help="lease a GPU: auto, 0 or a count (default: config)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_tune_command(args) -> dict:
    from soap.gpu_lease import gpu_lease
    from soap.pipeline import load_study_config

    cfg = load_study_config(args.config or ["config.yaml"])
    if args.gpus is not None:
        cfg["gpus"] = 0 if args.gpus == "0" else args.gpus
    from soap.rules import RULES

    if args.method not in RULES:
        raise ConfigError(f"--method {args.method!r}: unknown method; known: {', '.join(RULES)}")
    if args.method not in cfg["methods"]:
        log.warning("%s is not among the config's methods %s; tuning it anyway", args.method, cfg["methods"])
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    out = args.out or f"results/tune/{args.dataset}/{args.method}/r{args.repeat}"
    if args.workers > 1:  # each worker leases its own device; this process only waits, then reports
        run_workers(cfg, args.dataset, args.method, args.repeat, storage_location(cfg, out, args.storage),
                    args.workers, prepared=args.prepared)
    # After the workers this finds the study finished and writes its files; had they all died, it finishes it.
    with gpu_lease(cfg["gpu_lock_dir"], cfg["gpus"]):
        return tune_one(cfg, args.dataset, args.method, args.repeat, out, storage_url=args.storage,
                        prepared=args.prepared, progress=not args.quiet)

