"""The report's context: every number on the page as a preformatted string, taken from the analysis
stage's outputs (soap.report.inputs). Formatting only: nothing here estimates anything, and the
template holds no numbers of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from soap.analysis.descriptive import finite
from soap.analysis.summary import Interval, Summary
from soap.factorial import EFFECTS
from soap.networks import network_label, network_title
from soap.plots import dataset_label, method_color, order_methods
from soap.plots.verdict import FIGURES as VERDICT_FIGURES
from soap.report.captions import FIGURES
from soap.report.inputs import Inputs, summary_estimates
from soap.rules import REFERENCE
from soap.tables import TableError

COMPARISON_ESTIMANDS = ("fixed_lr", "small_lr", "tuned", "effective_lr")


# --- formatting: the only way numbers reach the page --------------------------------------------------

def fmt_num(x, digits: int = 3) -> str:
    """A float to `digits` significant figures; 'n/a' for None or NaN."""
    return f"{float(x):.{digits}g}" if finite(x) else "n/a"


def fmt_p(x) -> str:
    if not finite(x):
        return "n/a"
    # A simulation- or bootstrap-based p of exactly zero only says "below the method's resolution".
    return "≈ 0" if float(x) == 0 else f"{float(x):.2g}"


def fmt_int(x) -> str:
    """Counts and examples, with thousands separators."""
    return f"{int(round(float(x))):,}" if finite(x) else "n/a"


def fmt_duration(seconds) -> str:
    if not finite(seconds):
        return "n/a"
    minutes, secs = divmod(int(round(float(seconds))), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"


FORMATTERS = (fmt_num, fmt_p, fmt_int, fmt_duration)


def fmt_interval(value: Interval | Mapping | None, digits: int = 3, null: float = 0.0) -> dict:
    """An estimate with its 95% interval as strings, and which side of `null` the interval lies on.

    direction is "below" or "above" when the whole interval is on one side of null, else "neither".
    The p-value shown is the Holm-adjusted one when there is one (p_label says which).
    """
    if isinstance(value, Interval):
        value = dataclasses.asdict(value)
    value = value or {}
    est, lo, hi = value.get("estimate"), value.get("ci_low"), value.get("ci_high")
    direction = "neither"
    if finite(lo) and finite(hi):
        direction = "below" if float(hi) < null else "above" if float(lo) > null else "neither"
    holm = finite(value.get("p_holm"))
    p = value.get("p_holm") if holm else value.get("p_value")
    unit = str(value.get("unit") or "")
    return {"estimate": fmt_num(est, digits), "ci_low": fmt_num(lo, digits), "ci_high": fmt_num(hi, digits),
            "p": fmt_p(p) if finite(p) else None, "p_label": "Holm-adjusted p" if holm else "p",
            "n": (fmt_int(value["n"]) + (f" {unit}" if unit else "")) if finite(value.get("n")) else None,
            "sd": fmt_num(value.get("sd"), 2) if finite(value.get("sd")) else None,
            "note": str(value.get("note") or ""),
            # a paired estimate on fewer than MIN_PAIRS pairs: flagged in the cell, explained below the table
            "few_pairs": str(value.get("note") or "").startswith("only "),
            "direction": direction, "available": finite(est)}


# --- the narrative's context ------------------------------------------------------------------------

def dataset_context(inputs: Inputs, dataset: str) -> dict:
    """Everything the template says about one dataset, as preformatted strings."""
    s = inputs.summary
    rows = summary_estimates(s) if s.estimates else pd.DataFrame(columns=["dataset", "outcome"])
    rows = rows[(rows["outcome"] == s.outcome) & (rows["dataset"] == dataset)]
    tuned_lr = s.tuned_lr.get(dataset, {})
    ttt = s.time_to_target.get(dataset)
    model = s.effective_lr_model.get(dataset)
    edges = s.tuned_lr_edges.get(dataset, {})
    return {
        "name": dataset,
        "label": dataset_label(dataset),
        "network": network_title(inputs.runs[inputs.runs["dataset"] == dataset]),
        "n_seeds": {phase: fmt_int(n) for phase, n in s.n_seeds.get(dataset, {}).items()},
        "epochs": {phase: fmt_num(e) for phase, e in s.epochs.get(dataset, {}).items()},
        "n_diverged": {m: fmt_int(n) for m, n in s.n_diverged.get(dataset, {}).items()},
        "fixed_lr": fmt_num(s.fixed_lr.get(dataset)),
        "small_lr": fmt_num(s.small_lr.get(dataset)),
        "tuned_lr": {m: fmt_num(lr) for m, lr in tuned_lr.items()},
        "tuned_lr_edges": {m: e for m, e in edges.items()},
        "comparisons": comparison_table(rows, tuned_lr, edges),
        "tuning_horizon": tuning_horizon(inputs, dataset),
        "headline": headline(rows),
        "tuned_at_grid_length": _by_method(s, dataset, "tuned_at_grid_length"),
        "poi": {label: {r["method"]: fmt_interval(r, null=0.5)
                        for r in rows[rows["estimand"] == f"poi_{estimand}"].to_dict(orient="records")}
                for estimand, label in (("small_lr", "at the smallest grid lr"), ("tuned", "each at its tuned lr"))
                if (rows["estimand"] == f"poi_{estimand}").any()} if len(rows) else {},
        "effective_lr_model": _model_context(model),
        "mediation": _mediation_context(s.mediation.get(dataset)),
        "mediation_skipped": s.skipped_reason("mediation", dataset),
        "time_to_target": _ttt_context(ttt) if ttt else None,
        "skipped": [{"estimand": k.estimand, "reason": k.reason} for k in s.skipped if k.dataset == dataset],
        "divergence": None if dataset not in s.divergence else {
            "model": s.divergence[dataset].model, "note": s.divergence[dataset].note,
            "coef": {m: fmt_interval(v, null=1.0) for m, v in s.divergence[dataset].coef.items()}},
        "refresh_sensitivity": [{"refresh_period": fmt_int(r["refresh_period"]), "estimand": r["estimand"],
                                 "method": r["method"], **fmt_interval(r)}
                                for r in s.refresh_sensitivity.get(dataset, [])],
        "exclusions": [{"estimand": e.estimand, "method": e.method, "reason": e.reason, "n": fmt_int(e.n)}
                       for e in s.exclusions if e.dataset == dataset],
    }


def tuning_horizon(inputs: Inputs, dataset: str) -> dict | None:
    """How long each tuning trial trained (provenance's tune.epochs), in epochs, in examples and as a
    fraction of the tuned runs' training length: a unit conversion of two recorded lengths, stated beside
    the tuned estimate because an lr tuned on a short horizon is chosen for that horizon. None when the
    provenance does not record tune.epochs."""
    epochs = ((inputs.provenance or {}).get("config") or {}).get("tune", {}).get("epochs")
    if not finite(epochs):
        return None
    runs = inputs.runs
    tuned = runs[(runs["dataset"] == dataset) & (runs["phase"] == "tuned") & ~runs["diverged"].astype(bool)]
    out = {"epochs": fmt_num(epochs), "examples": None, "fraction": None, "tuned_epochs": None}
    if "epochs" in tuned and len(tuned):
        tuned_epochs = float(tuned["epochs"].median())
        per_epoch = float((tuned["examples_seen"] / tuned["epochs"]).median())
        out.update(examples=fmt_int(float(epochs) * per_epoch), fraction=fmt_num(float(epochs) / tuned_epochs, 2),
                   tuned_epochs=fmt_num(tuned_epochs))
    return out


def comparison_table(rows: pd.DataFrame, tuned_lr: Mapping[str, float], edges: Mapping[str, str]) -> list[dict]:
    """One row per method: its tuned lr and, per comparison estimand, its interval against bp."""
    versus_bp = rows[rows["reference"] == REFERENCE] if len(rows) else rows
    table = []
    for method in order_methods(set(versus_bp["method"]) | set(tuned_lr)):
        cells = {}
        for estimand in COMPARISON_ESTIMANDS:
            match = versus_bp[(versus_bp["estimand"] == estimand) & (versus_bp["method"] == method)]
            cells[estimand] = fmt_interval(match.iloc[0].to_dict() if len(match) else None)
        table.append({"method": method, "tuned_lr": fmt_num(tuned_lr.get(method)), "edge": edges.get(method, ""),
                      "cells": cells})
    return table


def _by_method(summary: Summary, dataset: str, estimand: str) -> dict[str, dict]:
    """One estimand's rows of one dataset (any outcome), formatted, by method."""
    return {r.method: fmt_interval(dataclasses.asdict(r)) for r in summary.estimates
            if r.estimand == estimand and r.dataset == dataset}


def headline(rows: pd.DataFrame) -> list[dict]:
    """Per method with both: the contrast at the smallest grid lr (the write-up's regime) beside the
    tuned one, so the page leads with how the verdict changes once the lr is not chosen for bp."""
    out = []
    for method in order_methods(set(rows["method"]) - {REFERENCE} if len(rows) else set()):
        cells = {e: rows[(rows["estimand"] == e) & (rows["method"] == method)] for e in ("small_lr", "tuned")}
        if all(len(c) for c in cells.values()):
            out.append({"method": method, **{e: fmt_interval(c.iloc[0].to_dict()) for e, c in cells.items()}})
    return out


def _model_context(model) -> dict | None:
    if model is None:
        return None
    test = model.interaction
    return {"formula": model.formula, "r2": fmt_num(model.r2), "n": fmt_int(model.n),
            "n_clusters": fmt_int(model.n_clusters),
            "coef": {m: fmt_interval(v) for m, v in model.coef.items()},
            "nominal_formula": model.nominal_formula or "",
            "nominal_coef": {m: fmt_interval(v) for m, v in model.nominal_coef.items()},
            "interaction": None if test is None else {
                "hypothesis": test.hypothesis, "statistic": fmt_num(test.statistic), "df_num": fmt_num(test.df_num),
                "df_denom": fmt_num(test.df_denom), "p": fmt_p(test.p_value) if finite(test.p_value) else None,
                "note": test.note}}


def _mediation_context(block) -> dict | None:
    if block is None:
        return None
    return {"exposure": block.exposure, "control": block.control,
            # one shared lr (fixed_lr design), or every grid lr where both arms are healthy (pooled)
            "lr": fmt_num(block.lr) if block.lr is not None else ", ".join(fmt_num(lr) for lr in block.lrs) or "n/a",
            "design": block.design, "n": fmt_int(block.n), "n_seeds": fmt_int(block.n_seeds),
            "n_sims": fmt_int(block.n_sims), "outcome_model": block.outcome_model,
            "mediator_model": block.mediator_model,
            **{part: fmt_interval(getattr(block, part)) for part in ("acme", "ade", "total", "prop")}}


def _ttt_context(ttt) -> dict:
    return {"target_loss": fmt_num(ttt.target_loss), "phase": ttt.phase,
            "median_examples": {m: (fmt_int(v) if finite(v) else
                                    f"censored (more than {fmt_int(ttt.median_lower_bound.get(m))})")
                                for m, v in ttt.median_examples.items()},
            "ratio": {m: fmt_interval(v, null=1.0) for m, v in ttt.ratio.items()},
            "hazard_ratio": {m: fmt_interval(v, null=1.0) for m, v in ttt.hazard_ratio.items()},
            "hazard_ratio_note": ttt.hazard_ratio_note,
            "ph": {m: fmt_p(t.p_value) for m, t in ttt.proportional_hazards.items() if finite(t.p_value)},
            "sensitivity": _sensitivity_table(ttt.target_sensitivity),
            "n_censored": {m: fmt_int(v) for m, v in ttt.n_censored.items()}}


def _sensitivity_table(rows: list[dict]) -> dict | None:
    """The target-loss sensitivity as {methods: [...], rows: [{target_loss, cells: {method: interval}}]}."""
    if not rows:
        return None
    table = pd.DataFrame(rows)
    methods = order_methods(table["method"].unique())
    return {"methods": methods,
            "rows": [{"target_loss": fmt_num(loss), "multiplier": fmt_num(group["multiplier"].iloc[0]),
                      "cells": {r["method"]: fmt_interval(r, null=1.0) for r in group.to_dict(orient="records")}}
                     for loss, group in table.groupby("target_loss")]}


def provenance_context(provenance: Mapping | None) -> dict | None:
    """provenance.json (soap.pipeline.gather's record) as strings; absent keys read "not recorded"."""
    if provenance is None:
        return None
    device = provenance.get("device")
    if isinstance(device, (list, tuple)):  # one entry per distinct device the jobs ran on
        device = ", ".join(map(str, device))
    return {"versions": {str(k): str(v) for k, v in (provenance.get("versions") or {}).items()},
            "device": str(device or "not recorded"),
            "wall_time": fmt_duration(provenance.get("wall_time_s")),
            "compute_time": fmt_duration(provenance["compute_time_s"]) if "compute_time_s" in provenance else None,
            "jobs": fmt_int(provenance["jobs"]) if "jobs" in provenance else None,
            "started": str(provenance.get("started") or "not recorded"),
            "finished": str(provenance.get("finished") or "not recorded"),
            "config": flatten(provenance.get("config") or {})}


def flatten(tree, prefix: str = "") -> list[tuple[str, str]]:
    """A nested config as (dotted.key, value) rows; lists stay on one row."""
    if isinstance(tree, Mapping):
        rows = []
        for key, value in tree.items():
            rows += flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(tree, (list, tuple)):
        return [(prefix, ", ".join(map(str, tree)))]
    return [(prefix, str(tree))]


def report_context(inputs: Inputs, figure_images: Mapping[str, str], tables: Mapping[str, Path],
                   verdict_images: Mapping[str, str] | None = None) -> dict:
    """The template's whole context: every number a preformatted string from the analysis's outputs.
    figure_images: stem -> data URI; tables: name -> CSV written; verdict_images: the interventions'
    figures, stem -> data URI."""
    s = inputs.summary
    datasets = list(s.datasets or inputs.runs["dataset"].unique())
    network = network_title(inputs.runs)
    return {
        "network": network,
        "outcome": s.outcome.replace("_", " "),
        "methods": list(s.methods or order_methods(inputs.runs["method"].unique())),
        "n_runs": fmt_int(s.n_runs),
        "min_pairs": fmt_int(s.min_pairs),
        "refresh_period": fmt_int(s.refresh_period) if s.refresh_period is not None else None,
        "holm_families": dict(s.holm_families),
        "datasets": [dataset_context(inputs, d) for d in datasets],
        "budget_trials": s.tuning_budget_trials,
        "provenance": provenance_context(inputs.provenance),
        "missing": inputs.missing,
        "figures": [{"stem": spec.stem, "title": f"{spec.title}, {network}", "caption": spec.caption,
                     "src": figure_images.get(spec.stem, "")} for spec in FIGURES],
        "tables": {name: path.name for name, path in tables.items()},
        "colors": {m: method_color(m) for m in order_methods(inputs.runs["method"].unique())},
        "answer": answer_context(inputs),
        "interventions": interventions_context(inputs, verdict_images or {}),
    }


# --- the answer and the verdict stage's tables ---------------------------------------------------------

FACTORIAL_KEY = "interventions.factorial"  # the config key that runs the factorial (and so the answer)
# the decomposition's effects in the factorial's order, as the table's header writes them
EFFECT_HEADERS = {"total": "total", "step": "step effect", "direction_at_r_steps": "direction at r's steps",
                  "direction_at_bp_steps": "direction at bp's steps", "interaction": "interaction"}
assert tuple(EFFECT_HEADERS) == tuple(EFFECTS), "EFFECT_HEADERS must follow soap.factorial.EFFECTS"


def answer_context(inputs: Inputs) -> dict:
    """The opening: answer.json's sentence as the analysis wrote it, or why there is none."""
    answer = inputs.answer
    if answer is None:
        return {"sentence": None, "factorial_key": FACTORIAL_KEY}
    return {"sentence": str(answer["sentence"]), "verdict": str(answer.get("verdict", "")),
            "rule": str(answer.get("rule", "")), "factorial_key": FACTORIAL_KEY}


def _effect_cell(row: Mapping) -> dict:
    # n counts seeds here (the row's unit is the outcome's, shown in the block's title)
    return {**fmt_interval({**row, "unit": "seeds"}), "contrast": str(row.get("contrast") or ""),
            "diverged": fmt_int(row["diverged"]) if finite(row.get("diverged")) and row["diverged"] else None}


def decomposition_context(table: pd.DataFrame | None, runs: pd.DataFrame) -> list[dict]:
    """One block per (dataset, architecture, rule, outcome): its rows per grid lr, each with every
    effect's interval and Holm-adjusted p (soap.analysis.decomposition's table, formatted), named by
    the network of its runs in `runs`."""
    if table is None or table.empty:
        return []
    if "architecture" not in table:
        raise TableError("decomposition table has no architecture column (written before train.architecture "
                         "existed?): rerun the verdict stage")
    blocks = []
    keys = ["dataset", "architecture", "rule", "outcome"]
    for (dataset, architecture, rule, outcome), part in table.groupby(keys, sort=False):
        rows = []
        for lr, at in part.groupby("lr"):
            by_effect = {r["effect"]: r for r in at.to_dict(orient="records")}
            # the interaction needs every cell, so its note names each cell's diverged runs at this lr
            note = by_effect.get("interaction", {}).get("note")
            rows.append({"lr": fmt_num(lr), "note": note if isinstance(note, str) else "",
                         "cells": {e: _effect_cell(by_effect[e]) if e in by_effect else fmt_interval(None)
                                   for e in EFFECT_HEADERS}})
        contrasts = {r["effect"]: str(r["contrast"]) for r in part.to_dict(orient="records")}
        # the main runs name its layers; an architecture the main runs lack is named alone
        network = (network_title(runs[(runs["dataset"] == dataset) & (runs["architecture"] == architecture)])
                   or network_label(architecture, ""))
        blocks.append({"dataset": dataset, "network": network, "rule": rule, "outcome": outcome.replace("_", " "),
                       "unit": str(part["unit"].iloc[0]) if "unit" in part else "",
                       "headers": [{"effect": e, "label": h.replace("r's", f"{rule}'s"),
                                    "contrast": contrasts.get(e, "")}
                                   for e, h in EFFECT_HEADERS.items()], "rows": rows})
    return blocks


def verdict_rows(table: pd.DataFrame | None) -> list[dict]:
    """verdict.csv's rows, the primary first, each labelled primary or secondary (Holm-adjusted)."""
    if table is None or table.empty:
        return []
    primary = table["primary"].astype(str).str.lower() == "true"
    ordered = pd.concat([table[primary], table[~primary]])
    out = []
    for row in ordered.to_dict(orient="records"):
        is_primary = str(row["primary"]).lower() == "true"
        out.append({"primary": is_primary, "kind": "primary" if is_primary else "secondary",
                    "dataset": str(row["dataset"]), "row": str(row["row"]), "contrast": str(row["contrast"]),
                    "outcome": str(row["outcome"]).replace("_", " "), "unit": str(row.get("unit") or ""),
                    "estimate": fmt_num(row["estimate"]), "ci_low": fmt_num(row["ci_low"]),
                    "ci_high": fmt_num(row["ci_high"]), "margin": fmt_num(row.get("null")),
                    "p": fmt_p(row.get("p")), "p_holm": fmt_p(row.get("p_holm")),
                    "predicted": str(row.get("predicted") or ""), "verdict": str(row["verdict"]),
                    "n": fmt_int(row.get("n"))})
    return out


def descriptive_rows(table: pd.DataFrame | None) -> list[dict]:
    """descriptive.csv's rows: an estimate and interval each, no verdict."""
    if table is None or table.empty:
        return []
    return [{"dataset": str(r["dataset"]), "row": str(r["row"]), "contrast": str(r["contrast"]),
             "outcome": str(r["outcome"]).replace("_", " "), "unit": str(r.get("unit") or ""),
             "lr": fmt_num(r.get("lr")), "estimate": fmt_num(r["estimate"]), "ci_low": fmt_num(r["ci_low"]),
             "ci_high": fmt_num(r["ci_high"]), "n": fmt_int(r.get("n")),
             "note": r["note"] if isinstance(r.get("note"), str) else ""}
            for r in table.to_dict(orient="records")]


def interventions_context(inputs: Inputs, images: Mapping[str, str]) -> dict:
    """The answer's section after the opening: the decomposition, verdict and descriptive tables, and the
    verdict stage's figures (stem -> data URI) in FIGURES' order."""
    return {"decomposition": decomposition_context(inputs.decomposition, inputs.runs),
            "verdict": verdict_rows(inputs.verdict), "descriptive": descriptive_rows(inputs.descriptive),
            "figures": [{"stem": stem, "caption": caption, "src": images[stem]}
                        for stem, caption in VERDICT_FIGURES.items() if stem in images]}
