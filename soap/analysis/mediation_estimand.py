"""The mediation estimand's rows: sign over sign_scaled through feedback gain (ACME, ADE, total).

The model itself is soap.analysis.mediation (fit_mediation); this module turns its fit into the
estimates table's rows, the exclusions and summary.json's mediation block.
"""

from __future__ import annotations

import soap.analysis.mediation as mediation
from soap.analysis.rows import Collector, rng_for
from soap.analysis.summary import Interval, MediationSummary, json_safe


def mediation_estimand_rows(out: Collector, grid, grid_at_lr, dataset, shared_lr, outcome, n_sims, seed,
                            summary, model_texts, design) -> None:
    """The mediation rows (ACME, ADE, total, proportion) of sign over sign_scaled through log feedback
    gain, for one dataset and outcome; for the primary outcome (`summary` given) also its exclusions,
    skipped reasons and summary block."""
    where = "grid runs" if design == "pooled" else "grid runs at the shared learning rate"
    if not {mediation.EXPOSURE, mediation.CONTROL} <= set((grid if design == "pooled" else grid_at_lr)["method"]):
        if summary is not None:
            out.skip("mediation", dataset, f"no {mediation.EXPOSURE} and {mediation.CONTROL} {where}")
        return
    if design == "pooled":
        rows, excluded = mediation.pooled_rows(grid, outcome)
    else:
        rows, excluded = mediation.mediation_rows(grid_at_lr, outcome)
    if summary is not None:  # counted once, for the primary outcome; both arms together
        out.exclude("mediation", dataset, f"{mediation.EXPOSURE}, {mediation.CONTROL}", excluded)
    fit = mediation.fit_mediation(rows, outcome, n_sims, rng_for(seed, "mediation", dataset, outcome), design)
    if isinstance(fit, str):
        if summary is not None:
            out.skip("mediation", dataset, fit)
        return
    model_texts[f"mediation/{dataset}/{outcome}"] = fit.text
    unit = "runs (seeds as fixed effects)"
    interval = "parametric simulation + seed sampling, t (Satterthwaite)"
    if summary is not None:
        summary.mediation[dataset] = MediationSummary(
            exposure=mediation.EXPOSURE, control=mediation.CONTROL, design=fit.design,
            lr=shared_lr if fit.design == "fixed_lr" else None, lrs=list(fit.lrs), outcome_model=fit.outcome_formula,
            mediator_model=fit.mediator_formula, n=fit.n, n_seeds=fit.n_seeds, n_sims=fit.n_sims,
            **{part: Interval(**json_safe(fit.effects[part]), n=fit.n, unit=unit,
                              interval="simulation percentile" if part == "prop" else interval)
               for part in mediation.PARTS})
    for key, effect in fit.effects.items():
        out.row(f"mediation_{key}", dataset, mediation.EXPOSURE, mediation.CONTROL, outcome, effect, fit.n, unit,
                "simulation percentile" if key == "prop" else interval)
