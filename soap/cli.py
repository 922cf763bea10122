"""The `soap` command: train a population, prepare data, tune, analyse, report.

Each subcommand parses its arguments here and calls one library function; errors in user input
(config, data, tables) end with one line naming the problem and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from soap.tuning.cli import add_tune_arguments

log = logging.getLogger("soap")


def train_command(args: argparse.Namespace) -> None:
    from soap.config import load_train_config
    from soap.pipeline import write_population
    from soap.population import train_population

    overrides = list(args.overrides) + ([f"device={args.device}"] if args.device else [])
    config = load_train_config(args.config, overrides)
    result = train_population(config, progress=not args.quiet)
    out = Path(args.out)
    write_population(result, out / "runs.parquet", out / "curves.parquet", out / "meta.json")
    log.info("%d runs (%d diverged) in %.1f s, %.0f run-examples/s -> %s", len(result.runs),
             int(result.runs["diverged"].sum()), result.meta["wall_time_s"], result.meta["run_examples_per_s"], out)


def prepare_data_command(args: argparse.Namespace) -> None:
    from soap.config import data_root
    from soap.data import prepare_dataset

    path = prepare_dataset(args.dataset, args.data_root or data_root("data"), args.out, download=not args.no_download,
                           val_size=args.val_size, split_seed=args.split_seed)
    log.info("prepared %s -> %s", args.dataset, path)


def schema_command(args: argparse.Namespace) -> None:
    import yaml

    from soap.study_config import study_schema

    print(yaml.safe_dump(study_schema(), sort_keys=False, width=100), end="")


def tune_command(args: argparse.Namespace) -> None:
    from soap.tuning.cli import run_tune_command

    run_tune_command(args)


def analyze_command(args: argparse.Namespace) -> None:
    from soap.analysis.outputs import run_analysis

    run_analysis(args.runs, args.out, fixed_lr=args.fixed_lr, seed=args.seed, n_boot=args.n_boot,
                 mediation_design=args.mediation_design, curves_path=args.curves, tune_dir=args.tune,
                 tune_batch=args.tune_batch, lr_range=tuple(args.lr_range) if args.lr_range else None)


def report_command(args: argparse.Namespace) -> None:
    from soap.report import build_report

    out = Path(args.out) if args.out else Path(args.results) / "report.html"
    figures = Path(args.figures) if args.figures else Path(args.results) / "figures"
    build_report(args.results, out, figures)


def verdict_command(args: argparse.Namespace) -> None:
    """The primary test, the verdict, descriptive and decomposition tables and the answer (issue 19)."""
    import pandas as pd

    from soap.analysis.verdict import study_verdict
    from soap.study_config import load_study_config
    from soap.tables import read_table, write_table, write_text

    cfg = load_study_config(args.config or "config.yaml")
    runs = pd.concat([read_table(path) for path in args.runs], ignore_index=True)
    analysis = cfg["analysis"]
    result = study_verdict(runs, analysis["primary"], analysis["equivalence_margin"],
                           cfg["interventions"]["factorial"], datasets=cfg.get("datasets"),
                           source=" + ".join(args.runs), seed=analysis["seed"], n_boot=analysis["n_boot"])
    out = Path(args.out)
    write_table(result.decomposition, out / "decomposition.csv")
    write_table(result.descriptive, out / "descriptive.csv")
    write_table(result.verdict, out / "verdict.csv")
    write_text(json.dumps(result.answer, indent=2) + "\n", out / "answer.json")
    log.info("%s -> %s", result.answer["sentence"], out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soap", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a population; write runs, curves and meta")
    train.add_argument("--config", help="YAML file of TrainConfig keys (see soap/config.py); data_root "
                                        "defaults to $SOAP_DATA_ROOT when set")
    train.add_argument("--out", default="results/train", help="output directory")
    train.add_argument("--device", help="auto, cpu, cuda or cuda:N (overrides the config)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, YAML values")
    train.set_defaults(func=train_command)

    prepare = commands.add_parser("prepare-data", help="load, verify, split and save a dataset once")
    prepare.add_argument("--dataset", required=True, help="mnist, fashion_mnist or synthetic")
    prepare.add_argument("--data-root", default=None,
                         help="torchvision root (MNIST/raw/...); default: $SOAP_DATA_ROOT, else data")
    prepare.add_argument("--out", required=True, help="prepared file to write (.pt)")
    prepare.add_argument("--no-download", action="store_true", help="fail instead of downloading")
    prepare.add_argument("--val-size", type=int, default=10_000)
    prepare.add_argument("--split-seed", type=int, default=0)
    prepare.set_defaults(func=prepare_data_command)

    schema = commands.add_parser("schema", help="print every study-config key with its meaning and default")
    schema.set_defaults(func=schema_command)

    tune = commands.add_parser("tune", help="tune one method's learning rate with Optuna")
    add_tune_arguments(tune)
    tune.set_defaults(func=tune_command)

    analyze = commands.add_parser("analyze", help="estimate the study's estimands from a runs table")
    analyze.add_argument("--runs", required=True, help="runs table (.parquet or .csv)")
    analyze.add_argument("--out", required=True, help="output directory")
    analyze.add_argument("--curves", help="curves table: adds time to target at other target losses")
    analyze.add_argument("--fixed-lr", type=float, help="shared lr for fixed_lr (default: bp's tuned)")
    analyze.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    analyze.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    analyze.add_argument("--mediation-design", choices=("pooled", "fixed_lr"), default="pooled",
                         help="mediation runs: every healthy grid lr (pooled) or the shared lr only")
    analyze.add_argument("--tune", help="tune directory ({dataset}/{method}/r{repeat}/trials.csv): adds the "
                                        "tuning-budget curves and the trials tables")
    analyze.add_argument("--tune-batch", type=int, help="TPE's startup trials per study (config tune.batch)")
    analyze.add_argument("--lr-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                         help="the tuning search range (tune.lr_low, tune.lr_high): marks tuned lrs at its edges")
    analyze.set_defaults(func=analyze_command)

    verdict = commands.add_parser("verdict", help="the primary test, verdict rows, decomposition and answer")
    verdict.add_argument("--runs", required=True, action="append",
                         help="runs table (.parquet or .csv); repeat to concatenate several")
    verdict.add_argument("--out", required=True, help="output directory")
    verdict.add_argument("--config", help="study config (analysis.primary, analysis.equivalence_margin, "
                                          "interventions.factorial); default config.yaml")
    verdict.set_defaults(func=verdict_command)

    report = commands.add_parser("report", help="figures and the self-contained HTML report")
    report.add_argument("--results", default="results", help="results directory of a study")
    report.add_argument("--out", help="HTML file (default: RESULTS/report.html)")
    report.add_argument("--figures", help="figures directory (default: RESULTS/figures)")
    report.set_defaults(func=report_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from soap.errors import USER_ERRORS

    try:
        args.func(args)
    except USER_ERRORS as err:
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
