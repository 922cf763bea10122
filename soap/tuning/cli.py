"""`soap tune`: one method's study from the command line, alone or as one of several worker processes
on this machine (`--workers N`; the workers coordinate through soap.tuning.workers)."""

from __future__ import annotations

import logging
import os

from soap.config import ConfigError

log = logging.getLogger(__name__)


def add_tune_arguments(parser) -> None:
    parser.add_argument("--method", required=True, help="feedback rule to tune, e.g. sign")
    parser.add_argument("--dataset", default="mnist", help="mnist, fashion_mnist or synthetic")
    parser.add_argument("--config", action="append", default=None,
                        help="study config (default config.yaml); repeat to override key by key, as "
                             "snakemake --configfile does: --config config.yaml --config config/quick.yaml")
    parser.add_argument("--repeat", type=int, default=0, help="repeat index: seeds the sampler and the trials")
    parser.add_argument("--out", default=None,
                        help="output directory (default: results/tune/{dataset}/{method}/r{repeat})")
    parser.add_argument("--prepared", default=None,
                        help="prepared dataset file (default: load from $SOAP_DATA_ROOT, else data.root)")
    parser.add_argument("--storage", default=None,
                        help="journal file, sqlite:///FILE or postgresql://... URL (default: config, else "
                             "OUT/study.journal); concurrent `soap tune` runs on one storage share the study")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes on this machine sharing the study (each leases its own GPU)")
    parser.add_argument("--gpus", default=None, help="lease a GPU: auto, 0 or a count (default: config)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_tune_command(args) -> dict:
    from soap.gpu_lease import gpu_lease
    from soap.rules import RULES
    from soap.study_config import load_study_config
    from soap.tuning.study import storage_location, tune_one

    cfg = load_study_config(args.config or ["config.yaml"])
    if args.gpus is not None:
        cfg["gpus"] = 0 if args.gpus == "0" else args.gpus
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


def _worker(cfg: dict, dataset: str, method: str, repeat: int, location: str, prepared: str | None) -> None:
    """One of `soap tune --workers N`'s processes: lease a device, then work on the shared study."""
    import torch

    from soap.gpu_lease import gpu_lease
    from soap.tuning.study import run_study

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s worker {os.getpid()}: %(message)s")
    torch.set_num_threads(1)  # N workers share the machine's cores
    with gpu_lease(cfg["gpu_lock_dir"], cfg["gpus"]):
        run_study(cfg, dataset, method, repeat, location, prepared=prepared)


def run_workers(cfg: dict, dataset: str, method: str, repeat: int, location: str, workers: int, *,
                prepared: str | None = None) -> list[int]:
    """Run `workers` processes on one study until it is finished; return their exit codes."""
    import multiprocessing as mp

    # spawn: each worker initialises its own CUDA context and leases its own device.
    ctx = mp.get_context("spawn")
    processes = [ctx.Process(target=_worker, args=(cfg, dataset, method, repeat, str(location), prepared))
                 for _ in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    codes = [process.exitcode for process in processes]
    if any(codes):
        log.warning("tuning workers exited with %s; the study is finished by whoever remains", codes)
    return codes
