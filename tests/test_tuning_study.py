"""soap.tuning.study: batched ask/tell through the population trainer, resume after a kill, aggregation.

Studies train on the synthetic dataset (soap.data.synthetic_dataset): real training, a second each.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import signal

import numpy as np
import pandas as pd
import pytest

import soap.population
from soap import tuning
from soap.study_config import load_study_config

from helpers import die_on_training

# spawn, not fork: a forked child of a process that has run torch can deadlock in its thread pool.
CTX = mp.get_context("spawn")


def study_config(**tune) -> dict:
    values = {
        "datasets": ["synthetic"],
        "train": {"hidden": [16], "epochs": 0.25, "log_every": 128, "eval_every": 256, "eval_subset": 256},
        "tune": {"n_trials": 5, "batch": 2, "lr_low": 1e-3, "lr_high": 3.0, "epochs": 0.25, **tune},
        "gpus": 0,
    }
    return load_study_config(values=values)


def journal_study(path, cfg, method="fa", repeat=0):
    import optuna

    train = tuning.train_config_values(cfg, "synthetic", method, repeat)
    name = tuning.study_name("synthetic", method, repeat, tuning.fingerprint(train, cfg["tune"]))
    return optuna.load_study(study_name=name, storage=tuning.open_storage(path))


def test_batches_train_as_one_population_and_finish_the_requested_trials(tmp_path, monkeypatch):
    sizes = []
    train = soap.population.train_population

    def recording(config, **kwargs):
        sizes.append(len(config.population()))
        assert {m.seed for m in config.population()} == {100_000}  # tuning seed: tune.seed + repeat
        return train(config, **kwargs)

    monkeypatch.setattr(soap.population, "train_population", recording)
    summary = tuning.tune_one(study_config(), "synthetic", "fa", 0, tmp_path)

    assert sizes == [2, 2, 1]  # ask k, train k as one population, tell k; the last batch is the remainder
    assert summary["n_trials"] == 5
    best = json.loads((tmp_path / "best.json").read_text())
    assert set(best) == set(tuning.BEST_KEYS) and best == summary
    trials = pd.read_csv(tmp_path / "trials.csv")
    assert len(trials) == 5 and (trials["state"] == "COMPLETE").all()
    assert trials["params_lr"].between(1e-3, 3.0).all()
    assert best["value"] == trials["value"].min()
    assert best["lr"] == pytest.approx(trials.loc[trials["value"].idxmin(), "params_lr"])
    assert (tmp_path / "study.journal").is_file()


def test_diverged_trials_are_pruned_and_use_the_budget(tmp_path):
    # Learning rates this large make the loss explode within a few steps.
    cfg = study_config(lr_low=1e4, lr_high=1e6, n_trials=3, batch=3)
    study = tuning.run_study(cfg, "synthetic", "bp", 0, tmp_path / "s.journal")
    assert [t.state.name for t in study.trials] == ["PRUNED"] * 3
    assert all(t.user_attrs["diverged"] for t in study.trials)
    with pytest.raises(tuning.TuneError, match="every trial diverged"):
        tuning.summarize(study)


def _tune_then_die(storage_path, cfg):
    """Finish one batch, then get SIGKILLed while the second batch is training."""
    die_on_training(2)
    tuning.run_study(cfg, "synthetic", "fa", 0, storage_path)


def test_resume_after_kill_keeps_finished_trials_and_fails_stale_ones(tmp_path):
    cfg = study_config(n_trials=6, batch=2)
    journal = tmp_path / "study.journal"
    killed = CTX.Process(target=_tune_then_die, args=(journal, cfg))
    killed.start()
    killed.join(timeout=120)
    assert killed.exitcode == -signal.SIGKILL

    before = journal_study(journal, cfg).trials
    assert [t.state.name for t in before] == ["COMPLETE", "COMPLETE", "RUNNING", "RUNNING"]

    resumed = tuning.run_study(cfg, "synthetic", "fa", 0, journal)
    states = [t.state.name for t in resumed.trials]
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"] + ["COMPLETE"] * 4
    for old, new in zip(before[:2], resumed.trials[:2]):  # finished trials are untouched
        assert (new.params, new.value) == (old.params, old.value)
    assert len(tuning.finished_trials(resumed)) == 6
    # The dead worker's trials were enqueued again: the next two trials redo their lrs, same origin.
    for failed, retried in zip(resumed.trials[2:4], resumed.trials[4:6]):
        assert retried.params == failed.params
        assert retried.user_attrs[tuning.ORIGIN_ATTR] == failed.user_attrs[tuning.ORIGIN_ATTR]

    # Per-batch seeding: the resumed study asks exactly what an uninterrupted one asks.
    straight = tuning.run_study(cfg, "synthetic", "fa", 0, tmp_path / "straight.journal")
    complete = [t.params["lr"] for t in resumed.trials if t.state.name == "COMPLETE"]
    assert complete == pytest.approx([t.params["lr"] for t in straight.trials])


def test_rerunning_a_finished_study_asks_nothing(tmp_path, monkeypatch):
    cfg = study_config(n_trials=2, batch=2)
    tuning.tune_one(cfg, "synthetic", "fa", 0, tmp_path)

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished study trained again")

    monkeypatch.setattr(soap.population, "train_population", must_not_train)
    assert tuning.tune_one(cfg, "synthetic", "fa", 0, tmp_path)["n_trials"] == 2


def test_changed_search_range_starts_a_new_study():
    cfg, other = study_config(), study_config(lr_high=1.0)
    train = tuning.train_config_values(cfg, "synthetic", "fa", 0)
    assert tuning.fingerprint(train, cfg["tune"]) != tuning.fingerprint(train, other["tune"])
    more = study_config(n_trials=50, batch=10)  # a bigger budget continues the same study
    assert tuning.fingerprint(train, cfg["tune"]) == tuning.fingerprint(train, more["tune"])


def test_aggregate_repeats():
    bests = [{"lr": 0.01, "value": 0.5}, {"lr": 1.0, "value": 0.4}, {"lr": 0.1, "value": 0.6}]
    assert tuning.aggregate_repeats(bests, "median")["lr"] == pytest.approx(0.1)
    assert tuning.aggregate_repeats(bests, "best")["lr"] == 1.0
    # Even count: the geometric mean of the middle two.
    assert tuning.aggregate_repeats(bests[:2], "median")["lr"] == pytest.approx(math.sqrt(0.01 * 1.0))
    with pytest.raises(tuning.TuneError):
        tuning.aggregate_repeats([], "median")


def test_rdb_storage_holds_every_study_and_resumes(tmp_path, postgres_url):
    cfg = study_config(n_trials=2, batch=2)
    for method in ("bp", "fa"):
        tuning.tune_one(cfg, "synthetic", method, 0, tmp_path / method, storage_url=postgres_url)
    import optuna

    names = sorted(s.study_name for s in optuna.get_all_study_summaries(tuning.open_storage(postgres_url)))
    assert [n.rsplit("-", 1)[0] for n in names] == ["soap-synthetic-bp-r0", "soap-synthetic-fa-r0"]
    more = study_config(n_trials=4, batch=2)  # a bigger budget resumes the same study
    assert tuning.tune_one(more, "synthetic", "fa", 0, tmp_path / "fa", storage_url=postgres_url)["n_trials"] == 4
    assert len(pd.read_csv(tmp_path / "fa" / "trials.csv")) == 4


class _Objective:
    """Stands in for the trainer: a run's validation loss is a known function of its lr (no training)."""

    def __init__(self, best_log_lr: float):
        self.best = best_log_lr

    def __call__(self, config, **kwargs):
        lrs = [m.lr for m in config.population()]
        loss = [(math.log10(lr) - self.best) ** 2 for lr in lrs]
        runs = pd.DataFrame({"lr": lrs, "val_loss": loss, "diverged": False, "val_acc": 0.5,
                             "feedback_gain": 1.0, "final_train_loss": loss})
        return type("Result", (), {"runs": runs})()


def _lrs(tmp_path, monkeypatch, name, sampler, best_log_lr, n_trials=24):
    monkeypatch.setattr(soap.population, "train_population", _Objective(best_log_lr))
    cfg = study_config(n_trials=n_trials, batch=4, sampler=sampler)
    tuning.tune_one(cfg, "synthetic", "fa", 0, tmp_path / name)
    trials = pd.read_csv(tmp_path / name / "trials.csv")
    return trials["params_lr"].to_numpy(), trials["origin"].tolist()


def test_random_sampler_draws_independently_of_results_and_records_its_origin(tmp_path, monkeypatch):
    """tune.sampler=random: the same lrs whatever the objective (drawn without looking at results),
    log-uniform over the range; tpe: its first batch is random, later batches follow the objective."""
    from scipy import stats

    low, high = study_config()["tune"]["lr_low"], study_config()["tune"]["lr_high"]
    rand_a, origin_a = _lrs(tmp_path, monkeypatch, "ra", "random", best_log_lr=-2.5, n_trials=200)
    rand_b, origin_b = _lrs(tmp_path, monkeypatch, "rb", "random", best_log_lr=0.3, n_trials=200)
    assert rand_a == pytest.approx(rand_b) and set(origin_a) == set(origin_b) == {"random"}
    u = (np.log(rand_a) - np.log(low)) / (np.log(high) - np.log(low))
    assert stats.kstest(u, "uniform").pvalue > 0.01  # log-uniform
    # Independent draws: no dependence between consecutive trials (a TPE study would fail this).
    assert abs(stats.spearmanr(u[:-1], u[1:]).statistic) < 0.2

    tpe_a, origin = _lrs(tmp_path, monkeypatch, "ta", "tpe", best_log_lr=-2.5)
    tpe_b, _ = _lrs(tmp_path, monkeypatch, "tb", "tpe", best_log_lr=0.3)
    assert origin == ["random"] * 4 + ["tpe"] * 20  # TPE's startup batch is marked random
    assert tpe_a[:4] == pytest.approx(tpe_b[:4]) and tpe_a[4:] != pytest.approx(tpe_b[4:])
    # TPE concentrates near each objective's optimum.
    assert abs(np.median(np.log10(tpe_a[4:])) + 2.5) < abs(np.median(np.log10(tpe_b[4:])) + 2.5)


def test_sampler_choice_starts_a_new_study():
    cfg, other = study_config(sampler="tpe"), study_config(sampler="random")
    train = tuning.train_config_values(cfg, "synthetic", "fa", 0)
    assert tuning.fingerprint(train, cfg["tune"]) != tuning.fingerprint(train, other["tune"])
