"""soap.tuning.run_studies: several repeats' studies in lockstep, their batches trained as one population,
write exactly what one process per repeat writes (trial by trial), and resume from their journals.

Studies train on the synthetic dataset (soap.data.synthetic_dataset): real training, a second each.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import signal
from collections import Counter

import pandas as pd
import pytest

import soap.population
from soap import tuning
from soap.study_config import load_study_config

from helpers import die_on_training

CTX = mp.get_context("spawn")  # as test_tuning_study: no fork after torch
REPEATS = [0, 1, 2]
# What a trial is: its learning rate, result and state, and what was recorded with it. Not its times
# or its worker's id, which differ between any two runs.
TRIAL_COLUMNS = ["number", "params_lr", "value", "state", "origin", "user_attrs_diverged", "user_attrs_val_acc",
                 "user_attrs_feedback_gain", "user_attrs_final_train_loss"]


def study_config(**tune) -> dict:
    # tpe: after the first (random) batch every learning rate asked depends on the values told so far,
    # so one value told to the wrong trial changes every later trial of its study.
    values = {
        "datasets": ["synthetic"],
        "train": {"hidden": [16], "epochs": 0.25, "log_every": 128, "eval_every": 256, "eval_subset": 256},
        "tune": {"n_trials": 5, "batch": 2, "lr_low": 1e-3, "lr_high": 3.0, "epochs": 0.25, "sampler": "tpe",
                 **tune},
        "gpus": 0,
    }
    return load_study_config(values=values)


def _record_populations(monkeypatch) -> list:
    populations = []
    train = soap.population.train_population

    def recording(config, **kwargs):
        populations.append([(m.seed, m.lr) for m in config.population()])
        return train(config, **kwargs)

    monkeypatch.setattr(soap.population, "train_population", recording)
    return populations


def _outputs(out_dir) -> tuple[dict, pd.DataFrame]:
    return json.loads((out_dir / "best.json").read_text()), pd.read_csv(out_dir / "trials.csv")[TRIAL_COLUMNS]


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    """Today's plan: one process (here one call) per repeat."""
    root = tmp_path_factory.mktemp("alone")
    for repeat in REPEATS:
        tuning.tune_one(study_config(), "synthetic", "fa", repeat, root / f"r{repeat}")
    return {repeat: _outputs(root / f"r{repeat}") for repeat in REPEATS}


def _assert_same_as_alone(root, alone):
    for repeat in REPEATS:
        best, trials = _outputs(root / f"r{repeat}")
        assert best == alone[repeat][0], repeat
        pd.testing.assert_frame_equal(trials, alone[repeat][1], check_exact=True, obj=f"r{repeat} trials.csv")


def test_lockstep_studies_write_exactly_what_one_job_per_repeat_writes(tmp_path, monkeypatch, caplog, alone):
    populations = _record_populations(monkeypatch)
    with caplog.at_level(logging.INFO, logger="soap.tuning.study"):
        summaries = tuning.tune_repeats(study_config(), "synthetic", "fa", REPEATS,
                                        [tmp_path / f"r{r}" for r in REPEATS])

    # Each round is ONE population: every study's batch (2, 2, then the remainder 1), on its own seed.
    assert [len(p) for p in populations] == [6, 6, 3]
    per_seed = [Counter(seed for seed, _ in p) for p in populations]
    assert per_seed == [{100_000 + r: k for r in REPEATS} for k in (2, 2, 1)]  # seed tune.seed + repeat
    _assert_same_as_alone(tmp_path, alone)
    assert summaries == [alone[r][0] for r in REPEATS]
    rounds = [r.getMessage() for r in caplog.records if " round " in r.getMessage()]
    assert len(rounds) == 3
    assert rounds[-1].endswith("finished per study r0 5/5, r1 5/5, r2 5/5")
    assert "r0 2/5, r1 2/5, r2 2/5" in rounds[0]


def test_finished_and_part_done_studies_resume_to_the_same_trials(tmp_path, monkeypatch, alone):
    # r0 finished, r1 with 2 of its 5 trials (a smaller budget continues the same study), r2 not begun.
    tuning.tune_one(study_config(), "synthetic", "fa", 0, tmp_path / "r0")
    tuning.tune_one(study_config(n_trials=2), "synthetic", "fa", 1, tmp_path / "r1")
    populations = _record_populations(monkeypatch)
    tuning.tune_repeats(study_config(), "synthetic", "fa", REPEATS, [tmp_path / f"r{r}" for r in REPEATS])
    # r0 trains nothing; r1 is a batch behind r2 until r1 runs out of trials.
    assert [sorted({seed for seed, _ in p}) for p in populations] == [[100_001, 100_002]] * 2 + [[100_002]]
    _assert_same_as_alone(tmp_path, alone)


def _lockstep_then_die(root):
    """Finish one round, then get SIGKILLed while the second trains."""
    die_on_training(2)
    tuning.tune_repeats(study_config(), "synthetic", "fa", REPEATS, [root / f"r{r}" for r in REPEATS])


def test_a_killed_lockstep_job_redone_finishes_every_study_from_its_journal(tmp_path, alone):
    killed = CTX.Process(target=_lockstep_then_die, args=(tmp_path,))
    killed.start()
    killed.join(timeout=300)
    assert killed.exitcode == -signal.SIGKILL
    assert not any((tmp_path / f"r{r}" / "best.json").exists() for r in REPEATS)

    studies = tuning.run_studies(study_config(), "synthetic", "fa", REPEATS,
                                 [tmp_path / f"r{r}" / "study.journal" for r in REPEATS])
    for repeat, study in zip(REPEATS, studies):
        states = [t.state.name for t in study.trials]
        # the killed round's trials failed and asked again, with their learning rates
        assert states == ["COMPLETE"] * 2 + ["FAIL"] * 2 + ["COMPLETE"] * 3, repeat
        complete = [t.params["lr"] for t in study.trials if t.state.name == "COMPLETE"]
        assert complete == alone[repeat][1]["params_lr"].tolist(), repeat


def test_a_repeat_named_twice_is_refused(tmp_path):
    with pytest.raises(tuning.TuneError, match=r"repeats \[0, 1, 0\]: each repeat may appear once"):
        tuning.run_studies(study_config(), "synthetic", "fa", [0, 1, 0], [tmp_path / f"{i}.journal" for i in range(3)])
