"""soap.tuning.workers, several workers on one Optuna study: exactly n_trials finished, none lost or duplicated, and a dead
worker's trials (only its) redone by its live peers, with their learning rates. On a journal file, on
SQLite and on a real PostgreSQL server (heartbeats every second, stale after 2 s).

Studies train on the synthetic dataset; a sleep in the trainer makes workers overlap on 2 cores.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

import soap.population
from soap import tuning
from soap.study_config import load_study_config

CTX = mp.get_context("spawn")  # as test_tuning_study: no fork after torch
REPO = Path(__file__).resolve().parents[1]
TRAIN = {"hidden": [16], "epochs": 0.25, "log_every": 128, "eval_every": 256, "eval_subset": 256}


def study_config(**tune) -> dict:
    values = {"datasets": ["synthetic"], "train": TRAIN, "gpus": 0,
              "tune": {"n_trials": 8, "batch": 2, "lr_low": 1e-3, "lr_high": 3.0, "epochs": 0.25,
                       "heartbeat_interval": 1, "grace_period": 2, **tune}}
    return load_study_config(values=values)


_OPENED: dict = {}


def load(storage, cfg, method="fa"):
    import optuna

    train = tuning.train_config_values(cfg, "synthetic", method, 0)
    name = tuning.study_name("synthetic", method, 0, tuning.fingerprint(train, cfg["tune"]))
    # One storage object per location: a new RDBStorage per poll would open a new connection pool.
    opened = _OPENED.setdefault(str(storage), tuning.open_storage(storage))
    try:
        return optuna.load_study(study_name=name, storage=opened)
    except KeyError:  # not created yet
        return None


def _worker(storage, cfg, hang: bool, train_s: float):
    """A worker whose trainer takes train_s longer, or (hang) never returns: killed from outside."""
    import torch

    torch.set_num_threads(1)
    train = soap.population.train_population

    def slow(config, **kwargs):
        time.sleep(600 if hang else train_s)
        return train(config, **kwargs)

    soap.population.train_population = slow
    tuning.run_study(cfg, "synthetic", "fa", 0, storage, poll_s=0.2)


def _wait_for(condition, what: str, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _by_worker(trials, state: str) -> Counter:
    return Counter(t.user_attrs.get(tuning.WORKER_ATTR) for t in trials if t.state.name == state)


@pytest.fixture(params=["journal", "sqlite", "postgresql"])
def storage(request, tmp_path):
    """Each way of telling a dead worker: its kernel-released file lock (journal), or Optuna's heartbeats
    with a file study lock (SQLite) or an advisory study lock (PostgreSQL)."""
    if request.param == "journal":
        return tmp_path / "study.journal"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/study.db"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def processes():
    """Worker processes a test starts; any still alive when it ends (a failed assertion) are killed,
    so a failure ends the test instead of waiting on a worker that hangs by design."""
    started: list = []
    yield started
    for process in started:
        if process.is_alive():
            process.kill()
        process.join(timeout=30)


def test_dead_worker_trials_are_redone_and_live_peers_are_left_alone(storage, tmp_path, processes):
    cfg = study_config(n_trials=8, batch=2)
    # The doomed worker reserves a batch first and hangs in training, alive.
    doomed = CTX.Process(target=_worker, args=(storage, cfg, True, 0))
    processes.append(doomed)
    doomed.start()

    def doomed_running():
        study = load(storage, cfg)
        return study is not None and len(_by_worker(study.trials, "RUNNING")) == 1

    _wait_for(doomed_running, "the doomed worker's first batch")
    peers = [CTX.Process(target=_worker, args=(storage, cfg, False, 0.3)) for _ in range(2)]
    processes.extend(peers)
    for peer in peers:
        peer.start()

    # Both peers finish trials while the doomed worker is alive: its trials must stay RUNNING.
    def both_peers_finished_some():
        trials = load(storage, cfg).trials
        return len(_by_worker(trials, "COMPLETE") + _by_worker(trials, "PRUNED")) == 2

    _wait_for(both_peers_finished_some, "both peers to finish a batch")
    trials = load(storage, cfg).trials
    doomed_trials = [t for t in trials if f":{doomed.pid}:" in t.user_attrs.get(tuning.WORKER_ATTR, "")]
    assert [t.state.name for t in doomed_trials] == ["RUNNING", "RUNNING"]
    assert "FAIL" not in {t.state.name for t in trials}

    os.kill(doomed.pid, signal.SIGKILL)
    doomed.join(timeout=30)
    for peer in peers:
        peer.join(timeout=180)
        assert peer.exitcode == 0

    trials = load(storage, cfg).trials
    assert len(tuning.finished_trials(load(storage, cfg))) == 8  # exactly the requested number
    assert [t.number for t in trials] == list(range(len(trials)))  # no duplicated or missing numbers
    failed = [t for t in trials if t.state.name == "FAIL"]
    # Only the dead worker's two trials failed, and they were asked again: 8 finished + 2 failed.
    assert [t.number for t in failed] == [t.number for t in doomed_trials] and len(trials) == 10
    finished_lrs = [t.params["lr"] for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    for dead in failed:  # redone with the same learning rate
        assert finished_lrs.count(dead.params["lr"]) == 1
    finished_by = _by_worker(trials, "COMPLETE") + _by_worker(trials, "PRUNED")
    assert len(finished_by) == 2 and sum(finished_by.values()) == 8
    if isinstance(storage, Path):  # every liveness lock file is gone: peers' at exit, the dead one's reaped
        assert not any((tmp_path / "study.journal.soap-workers").iterdir())


def test_soap_tune_with_three_workers_finishes_exactly_the_requested_trials(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"train": TRAIN, "gpus": 0,
                                      "tune": {"n_trials": 7, "batch": 2, "epochs": 0.25}}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "soap.cli", "tune", "--method", "fa", "--dataset", "synthetic", "--config",
         str(config), "--out", str(tmp_path / "out"), "--workers", "3", "--quiet"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"3 workers, 7 trials: {time.monotonic() - started:.1f} s")

    study = load(tmp_path / "out" / "study.journal", load_study_config([config]))
    states = Counter(t.state.name for t in study.trials)
    assert sum(states[s] for s in ("COMPLETE", "PRUNED")) == 7 and len(study.trials) == 7  # none failed
    assert [t.number for t in study.trials] == list(range(7))
    assert len({t.params["lr"] for t in study.trials}) == 7  # workers asking at once still draw apart
    best = json.loads((tmp_path / "out" / "best.json").read_text())
    assert best["n_trials"] == 7
