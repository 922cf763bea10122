"""Several workers on one Optuna study: the trial budget stays exact, and a dead worker's trials (only
a dead worker's) are failed and asked again with the same learning rate. Optuna's public API only.

Workers (processes on one machine with `soap tune --workers N`, or cluster jobs sharing a database) ask
and tell batches of trials. Two mechanisms, each chosen per storage:

Budget. Optuna's MaxTrialsCallback counts finished trials and then asks, so two workers can both take
the last slot. Here a worker counts and asks while holding a study lock, so every slot is reserved
once: a file lock (the `filelock` library) beside a journal or SQLite file, or a PostgreSQL advisory
lock for workers on many machines (the server drops it with the connection of a dead worker).

Liveness. A RUNNING trial whose worker is dead must be redone, and a live worker's never.
- Journal file (the default; no server): each worker holds a file lock of its own for its whole life.
  The kernel releases it the moment the worker dies, SIGKILL included, so its trials are found dead
  at once. JournalStorage has no heartbeats in Optuna 5.
- Database (sqlite:///FILE, postgresql://...): Optuna's heartbeats. While it trains, a worker's thread
  records a heartbeat for each of its trials every `tune.heartbeat_interval` seconds; a trial silent for
  `tune.grace_period` seconds is failed by optuna.storages.fail_stale_trials. Heartbeats work across
  machines; the cost is that a dead worker's trials wait out the grace period.
Either way the failed trial is enqueued again with its learning rate by Optuna's
RetryHeartbeatStaleTrialCallback (the next ask takes it first), so a resumed study asks what an
uninterrupted one would. A trial with no worker tag is failed too: tags are written in the locked
section that asks, so an untagged RUNNING trial comes from a worker killed inside that section. A
result told after a peer failed its trial (a worker silent past the grace period, e.g. paused) is
dropped: the budget stays exact on every storage.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import threading
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

from soap.tuning.errors import TuneError

log = logging.getLogger(__name__)

WORKER_ATTR = "worker"  # user attr of every trial: the id of the worker that asked it
MAX_RETRY = 2  # a learning rate whose workers died this often is given up; its slot is asked afresh


def new_worker_id() -> str:
    """host:pid:token. The token (64 random bits) names the worker's liveness lock."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"


@contextmanager
def _quiet_experimental():
    """Optuna 5 marks heartbeats, their callback and fail_stale_trials experimental; we rely on them
    knowingly (and a test holds them to what we rely on), so their warning would only be noise."""
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def _retry_callback():
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with _quiet_experimental():
        return RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)


def open_storage(location: str | Path, tune: dict | None = None):
    """A JournalStorage for a file path (resumable, no server) or an RDBStorage for a database URL.

    tune: the study config's tune section; on a database it switches heartbeats on (workers need them,
    a reader does not)."""
    from optuna.storages import RDBStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

    location = str(location)
    if "://" in location:
        if tune is None:
            return RDBStorage(location)
        with _quiet_experimental():
            return RDBStorage(location, heartbeat_interval=tune["heartbeat_interval"],
                              grace_period=tune["grace_period"], heartbeat_stale_trial_callback=_retry_callback())
    Path(location).parent.mkdir(parents=True, exist_ok=True)
    # The open(O_EXCL) lock works on every local and network file system, unlike symlinks on some.
    return JournalStorage(JournalFileBackend(location, lock_obj=JournalFileOpenLock(location)))


def _file_lock(path: Path):
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    # No soft fallback: a soft lock outlives a SIGKILLed holder, which is the one thing we rely on.
    return FileLock(path, fallback_to_soft=False)


class _PostgresLock:
    """The study lock as a PostgreSQL advisory lock: across machines, and released by the server when
    the holder's connection drops."""

    NAMESPACE = 0x50A9  # first key of soap's two-key advisory locks

    def __init__(self, url: str):
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        self._engine = sqlalchemy.create_engine(url, poolclass=NullPool)
        # Autocommit: session locks are not transactional, and an idle open transaction blocks vacuum.
        self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self._text = sqlalchemy.text

    @contextmanager
    def exclusive(self, study_name: str):
        key = {"a": self.NAMESPACE,
               "b": int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:4], "big", signed=True)}
        self._conn.execute(self._text("SELECT pg_advisory_lock(:a, :b)"), key)
        try:
            yield
        finally:
            self._conn.execute(self._text("SELECT pg_advisory_unlock(:a, :b)"), key)

    def close(self) -> None:
        self._conn.close()
        self._engine.dispose()


class _FileStudyLock:
    """The study lock as a file lock beside a journal or SQLite file (one lock per file, not per study:
    a shared file serialises a few milliseconds per batch)."""

    def __init__(self, base: Path):
        self._lock = _file_lock(Path(f"{base}.soap-lock"))  # not "<journal>.lock": the journal backend uses that

    @contextmanager
    def exclusive(self, study_name: str):
        with self._lock:
            yield

    def close(self) -> None:
        pass


class JournalCoordinator:
    """Journal file: a study lock beside it, and a kernel-released liveness lock per worker."""

    def __init__(self, path: Path, me: str):
        self._study_lock = _FileStudyLock(path)
        self._workers = Path(f"{path}.soap-workers")
        self._me = me
        self._mine = _file_lock(self._worker_path(me))
        self._mine.acquire(blocking=False)  # a fresh random name: never held
        self.retry = _retry_callback()

    def _worker_path(self, worker: str) -> Path:
        return self._workers / f"{worker.rsplit(':', 1)[-1]}.lock"

    def exclusive(self, study_name: str):
        return self._study_lock.exclusive(study_name)

    def _alive(self, worker: str) -> bool:
        from filelock import Timeout

        path = self._worker_path(worker)
        if not path.exists():
            return False
        probe = _file_lock(path)
        try:
            probe.acquire(blocking=False)
        except Timeout:
            return True
        try:
            path.unlink(missing_ok=True)  # under the study lock, so no other reaper races this
        finally:
            probe.release()
        return False

    def fail_dead(self, study, running: list) -> list[int]:
        owners = {t.user_attrs.get(WORKER_ATTR) for t in running} - {None, self._me}
        dead = {w for w in owners if not self._alive(w)}
        return _fail(study, [t for t in running if t.user_attrs.get(WORKER_ATTR) in dead], self.retry)

    def keep_alive(self, study, trials):
        return nullcontext()  # the liveness lock is held for the worker's whole life

    def close(self) -> None:
        self._worker_path(self._me).unlink(missing_ok=True)
        self._mine.release()
        self._study_lock.close()


class DatabaseCoordinator:
    """sqlite:// or postgresql://: a study lock, and Optuna's heartbeats for liveness."""

    def __init__(self, storage, url: str):
        from sqlalchemy.engine import make_url

        backend, database = make_url(url).get_backend_name(), make_url(url).database
        if storage.get_heartbeat_interval() is None:
            raise TuneError("a database storage shared by workers needs heartbeats (open_storage(url, tune))")
        if backend == "postgresql":
            self._study_lock = _PostgresLock(url)
        elif backend == "sqlite" and database not in (None, "", ":memory:"):
            self._study_lock = _FileStudyLock(Path(database))
        else:
            raise TuneError(f"tune.storage {backend}: only a journal file, SQLite or PostgreSQL can "
                            "coordinate workers")
        self._storage = storage
        self.retry = _retry_callback()

    def exclusive(self, study_name: str):
        return self._study_lock.exclusive(study_name)

    def fail_dead(self, study, running: list) -> list[int]:
        from optuna.storages import fail_stale_trials
        from optuna.trial import TrialState

        with _quiet_experimental():
            fail_stale_trials(study)  # FAILs trials past the grace period; the storage's callback retries them
        # Peers may have finished some of `running` meanwhile (they tell without the lock): FAIL ones only.
        failed = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        return [t.number for t in running if t.number in failed]

    @contextmanager
    def keep_alive(self, study, trials):
        """Heartbeats for `trials` while the block runs: the first now (the caller holds the study lock,
        so no peer sees these trials without one), then every heartbeat_interval from a thread."""
        study_id = self._storage.get_study_id_from_name(study.study_name)
        ids = [self._storage.get_trial_id_from_study_id_trial_number(study_id, t.number) for t in trials]
        self._beat(ids)
        stop = threading.Event()

        def beat():
            while not stop.wait(self._storage.get_heartbeat_interval()):
                self._beat(ids)

        thread = threading.Thread(target=beat, name="soap-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _beat(self, ids: list[int]) -> None:
        import sqlalchemy.exc

        for trial_id in ids:
            try:
                self._storage.record_heartbeat(trial_id)
            except sqlalchemy.exc.SQLAlchemyError as err:  # a dropped connection: try again next beat
                log.warning("heartbeat of trial id %d not recorded: %s", trial_id, err)

    def close(self) -> None:
        self._study_lock.close()


def _fail(study, trials: list, retry) -> list[int]:
    """Tell `trials` FAIL (unless their worker finished them after all) and enqueue them again."""
    from optuna.trial import TrialState

    failed = []
    for trial in trials:
        frozen = study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        if frozen.state == TrialState.FAIL:
            with _quiet_experimental():
                retry(study, frozen)
            failed.append(trial.number)
    return failed


def coordinator(storage, location: str, me: str):
    """The study lock and liveness test that go with a storage opened by open_storage(location, tune)."""
    if "://" in location:
        return DatabaseCoordinator(storage, location)
    return JournalCoordinator(Path(location), me)


def fail_stale_trials(study, coord) -> list[int]:
    """Fail (and enqueue again) the RUNNING trials whose worker is dead; call it holding the study lock."""
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    untagged = [t for t in running if t.user_attrs.get(WORKER_ATTR) is None]
    failed = _fail(study, untagged, coord.retry) if untagged else []
    failed += coord.fail_dead(study, [t for t in running if t.number not in failed])
    if failed:
        log.warning("%s: stale RUNNING trial(s) of dead worker(s) failed and enqueued again: %s",
                    study.study_name, sorted(failed))
    return failed

