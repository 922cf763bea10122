"""The report section of the intervention arms (issue 10): the verdict table (soap.analysis.verdict) in
plain words and as a table, with the captioned figures of soap.plots.verdict embedded."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from soap.files import png_data_uri
from soap.plots.verdict import FIGURES


def report_section(verdict_dir) -> str:
    """The report's "Interventions" section (HTML): what the data support and do not, the verdict table and
    the figures embedded (the report is one self-contained file); empty without a verdict table."""

    path = Path(verdict_dir) / "verdict.csv"
    if not path.is_file():
        return ""
    verdict = pd.read_csv(path)
    parts = ["<h2>Interventions: is the advantage learning rate?</h2>", f"<p>{html.escape(summary(verdict))}</p>"]
    if len(verdict):
        shown = verdict[["dataset", "row", "contrast", "outcome", "estimate", "ci_low", "ci_high", "margin",
                         "tost_p", "predicted", "verdict", "n"]]
        parts.append(shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, classes="table"))
    for stem, caption in FIGURES.items():
        png = Path(verdict_dir) / f"{stem}.png"
        if png.is_file():
            src = png_data_uri(png)
            parts.append(f'<figure id="{stem}"><img src="{src}" alt="{stem}"><figcaption>{html.escape(caption)} '
                         f"(<code>interventions/verdict/{stem}.png</code>)</figcaption></figure>")
    return "\n".join(parts)


def summary(verdict: pd.DataFrame) -> str:
    """Plain words: which predictions the data support, which they contradict, which they leave open."""
    if verdict.empty:
        return "No intervention arm produced a verdict row (arms off, or too few seeds)."
    words = []
    for kind in ("supported", "contradicted", "inconclusive"):
        rows = verdict[verdict["verdict"] == kind]
        if len(rows):
            listed = "; ".join(f"{r.row} {r.contrast} ({r.outcome})" for r in rows.itertuples())
            words.append(f"{kind.capitalize()} ({len(rows)}): {listed}.")
    words.append("Supported means the data show what 'the advantage is learning rate' predicts (equivalence "
                 "within the pre-declared margin by TOST, or a 95% interval excluding the null where a "
                 "difference is predicted); inconclusive means neither equivalence nor a difference was shown, "
                 "which is not evidence of equivalence.")
    return " ".join(words)
