"""The report's page: figures drawn and embedded, the analysis's tables copied beside it, the HTML.

``build_report(results_dir, out_html, figures_dir)`` draws every figure of FIGURES (soap.report.captions)
to ``figures_dir`` as ``<stem>.png`` and ``<stem>.pdf``, copies the analysis stage's tables to
``tables_dir`` (default: a ``tables`` folder beside ``out_html``, i.e. ``results/tables/``), and writes
the HTML with the PNGs embedded as base64 data URIs (soap.files.png_data_uri), so the page opens offline
and references nothing outside itself. Figures are called through `make_figures` only.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import jinja2
import matplotlib.pyplot as plt
import pandas as pd

from soap import plots as F
from soap.analysis.inputs import at_lr
from soap.analysis.summary import Interval, Summary
from soap.files import png_data_uri, write_atomic
from soap.networks import network_title
from soap.report.captions import FIGURES
from soap.report.context import COMPARISON_ESTIMANDS, report_context
from soap.report.inputs import Inputs, load_inputs
from soap.rules import REFERENCE
from soap.tables import write_table, write_text

logger = logging.getLogger(__name__)


# --- selecting what each figure shows ---------------------------------------------------------------

def curves_with_runs(curves: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Curves of the given runs with their design columns; rows follow the runs' order."""
    keys = ["run_id", "dataset", "method", "seed", "lr", "phase", "diverged"]
    return runs[keys].merge(curves, on="run_id", how="inner")


def fixed_lr_curves(curves: pd.DataFrame, runs: pd.DataFrame, fixed_lr: Mapping[str, float]) -> pd.DataFrame:
    """Curves of the grid runs at each dataset's shared learning rate (the fixed_lr estimand's runs)."""
    grid = runs[runs["phase"] == "grid"]
    chosen = [at_lr(grid[grid["dataset"] == d], lr) for d, lr in fixed_lr.items() if lr is not None]
    chosen = pd.concat(chosen) if chosen else grid.iloc[:0]
    return curves_with_runs(curves, chosen)


def target_losses(summary: Summary) -> dict[str, float]:
    return {d: v.target_loss for d, v in summary.time_to_target.items() if v.target_loss is not None}


def in_dataset_order(table: pd.DataFrame | None, datasets: list[str]) -> pd.DataFrame | None:
    """Rows sorted (stably) by the summary's dataset order, so every figure facets datasets alike."""
    if table is None or "dataset" not in table:
        return table
    rank = {d: i for i, d in enumerate(datasets)}
    return table.sort_values("dataset", key=lambda col: col.map(rank).fillna(len(rank)), kind="stable")


def levels_by_dataset(table: pd.DataFrame | None) -> dict[str, dict[str, float]]:
    """analysis/reference_levels.csv as {dataset: {outcome: level}}, the rule comparison's reading."""
    if table is None:
        return {}
    return {d: dict(zip(rows["outcome"], rows["level"].astype(float))) for d, rows in table.groupby("dataset")}


def make_figures(inputs: Inputs) -> dict[str, tuple]:
    """Every figure of FIGURES as {stem: (fig, axes)}, each titled with the network of the runs."""
    s = inputs.summary
    datasets = list(s.datasets or inputs.runs["dataset"].unique())
    runs = in_dataset_order(inputs.runs, datasets)
    trials, km, estimates = (in_dataset_order(inputs.table(t), datasets) for t in ("tuning_trials", "km", "estimates"))
    outcome = s.outcome
    if estimates is not None and "outcome" in estimates:
        estimates = estimates[estimates["outcome"] == outcome]
    fixed = {d: lr for d, lr in s.fixed_lr.items() if lr is not None}
    targets = target_losses(s)
    fixed_curves = fixed_lr_curves(inputs.curves, runs, fixed)
    ratios = {d: {**dataclasses.asdict(v.ratio.get("fa") or Interval()), "phase": v.phase}
              for d, v in s.time_to_target.items()}
    grid = runs[runs["phase"] == "grid"]
    tuned_curves = curves_with_runs(inputs.curves, runs[runs["phase"] == "tuned"])
    mediation = {d: dataclasses.asdict(m) for d, m in s.mediation.items()}
    skipped = {d: s.skipped_reason("mediation", d) for d in datasets if s.skipped_reason("mediation", d)}
    made = {
        "fig01_bp_vs_fa": F.plot_bp_vs_fa(fixed_curves, targets, ratios, fixed),
        "fig02_fixed_lr_curves": F.plot_fixed_lr_curves(fixed_curves, fixed, targets),
        "fig03_lr_response": F.plot_lr_response(grid, s.tuned_lr, fixed, outcome),
        "fig04_effective_lr_response": F.plot_effective_lr_response(grid, outcome),
        "fig05_causal_diagram": F.plot_causal_diagram(),
        "fig06_forest": F.plot_forest(estimates, COMPARISON_ESTIMANDS, REFERENCE, outcome),
        "fig07_mediation": F.plot_mediation(mediation, outcome, skipped),
        "fig08_time_to_target": F.plot_km(km, targets, {d: v.phase for d, v in s.time_to_target.items()}),
        "fig09_alignment": F.plot_alignment(tuned_curves),
        "fig10_tuning": F.plot_tuning(trials, inputs.table("tuning_best")),
        "fig11_grid_contrasts": F.plot_grid_contrasts(estimates, REFERENCE, outcome, s.tuned_lr),
        "fig12_divergence": F.plot_divergence(in_dataset_order(inputs.table("divergence"), datasets)),
        "fig13_tuning_budget": F.plot_tuning_budget(in_dataset_order(inputs.table("tuning_budget"), datasets),
                                                    s.tuning_budget_trials),
        # every outcome: the comparison shows accuracy beside loss
        "fig14_rule_comparison": F.plot_rule_comparison(in_dataset_order(inputs.estimates, datasets),
                                                        levels_by_dataset(inputs.table("reference_levels")),
                                                        REFERENCE),
    }
    assert list(made) == [spec.stem for spec in FIGURES], "FIGURES and make_figures disagree"
    network = network_title(runs)
    for fig, _axes in made.values():
        F.title_network(fig, network)
    return made


# --- files ------------------------------------------------------------------------------------------

def write_tables(inputs: Inputs, tables_dir: Path) -> dict[str, Path]:
    """The analysis's tables beside the report, byte for byte (a table the report only holds in memory,
    estimates from summary.json, is written)."""
    written = {}
    for name, table in inputs.tables.items():
        target = tables_dir / f"{name}.csv"
        source = inputs.table_paths.get(name)
        if source is None:
            written[name] = write_table(table, target)
        else:
            written[name] = write_atomic(target, lambda tmp, src=source: shutil.copyfile(src, tmp))
    return written


def embed_verdict_figures(inputs: Inputs) -> dict[str, str]:
    """The interventions' figures (stem -> data URI) that the verdict step drew."""
    if inputs.verdict_dir is None:
        return {}
    return {png.stem: png_data_uri(png) for png in sorted(inputs.verdict_dir.glob("verdict_*.png"))}


def render_html(context: Mapping) -> str:
    template_text = resources.files("soap").joinpath("templates", "report.html").read_text()
    # Autoescape: method names, config values and paths are data and must not become markup.
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    return env.from_string(template_text).render(**context)


def build_report(results_dir: str | Path, out_html: str | Path, figures_dir: str | Path,
                 tables_dir: str | Path | None = None) -> Path:
    """Build the report from results_dir: figures to figures_dir, CSVs to tables_dir, HTML to out_html.

    tables_dir defaults to ``<out_html's folder>/tables``. Returns the HTML's path.
    """
    out_html, figures_dir = Path(out_html), Path(figures_dir)
    tables_dir = Path(tables_dir) if tables_dir is not None else out_html.parent / "tables"
    inputs = load_inputs(results_dir)
    images = {}
    for stem, (fig, _axes) in make_figures(inputs).items():
        png, _pdf = F.save_figure(fig, figures_dir / stem)
        plt.close(fig)
        images[stem] = png_data_uri(png)
        logger.info("figure written: %s.{png,pdf}", figures_dir / stem)
    tables = write_tables(inputs, tables_dir)
    logger.info("tables written to %s: %s", tables_dir, ", ".join(sorted(tables)))
    write_text(render_html(report_context(inputs, images, tables, embed_verdict_figures(inputs))), out_html)
    logger.info("report written: %s", out_html)
    return out_html
