"""Phase 1: tune each method's learning rate the same way (STUDY.md), with Optuna's public API.

- soap.tuning.study: the objective. One study per (dataset, method, repeat), batched ask/tell through
  the population trainer (StudyWorker), several repeats' studies in lockstep in one population
  (run_studies), the sampler (TPE or random) and each trial's origin, best.json / trials.csv, and the
  tuned learning rate over repeats.
- soap.tuning.workers: several workers on one study. Storages, the study lock that keeps the trial
  budget exact, and how a dead worker's trials are found and asked again (kernel-released file locks
  beside a journal file; Optuna heartbeats on a database).
- soap.tuning.errors: TuneError, raised by both.
- soap.tuning.cli: `soap tune`, and the launcher of its `--workers N` processes.
"""

from soap.tuning.errors import TuneError
from soap.tuning.study import (BEST_KEYS, ORIGIN_ATTR, StudyWorker, aggregate_repeats, fingerprint,
                               finished_trials, run_studies, run_study, storage_location, study_name, summarize,
                               train_config_values, tune_one, tune_repeats, tuned_lrs, write_study)
from soap.tuning.workers import WORKER_ATTR, open_storage

__all__ = ["BEST_KEYS", "ORIGIN_ATTR", "StudyWorker", "TuneError", "WORKER_ATTR", "aggregate_repeats",
           "fingerprint", "finished_trials", "open_storage", "run_studies", "run_study", "storage_location",
           "study_name", "summarize", "train_config_values", "tune_one", "tune_repeats", "tuned_lrs",
           "write_study"]
