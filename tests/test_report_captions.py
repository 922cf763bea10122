"""soap.report.captions: the report's figures and Snakemake's captions say the same words."""

from __future__ import annotations

from pathlib import Path

from soap import report

REPO = Path(__file__).resolve().parents[1]


def test_every_figure_has_a_snakemake_caption():
    captions = {p.stem: p.read_text() for p in (REPO / "workflow" / "report").glob("fig*.rst")}
    assert set(captions) == {spec.stem for spec in report.FIGURES}
    for spec in report.FIGURES:  # the same words in the HTML report and in Snakemake's
        assert captions[spec.stem].strip() == f"**{spec.title}.** {spec.caption}"
    assert (REPO / "workflow" / "report" / "workflow.rst").read_text().strip()


# Findings that fixed text used to state whatever the data (issue 19): captions describe what is drawn.
FIXED_FINDINGS = ("wins by its step size", "their differences are learning rate", "larger effective step wins",
                  "difference is learning rate")


def test_no_caption_states_a_finding():
    from soap.plots.verdict import FIGURES as VERDICT_FIGURES

    captions = [spec.caption for spec in report.FIGURES] + list(VERDICT_FIGURES.values())
    captions += [p.read_text() for p in (REPO / "workflow" / "report").glob("*.rst")]
    template = (REPO / "soap" / "templates" / "report.html").read_text()
    for text in [*captions, template]:
        assert not [phrase for phrase in FIXED_FINDINGS if phrase in " ".join(text.split())], text[:80]


def test_the_diagram_caption_says_where_lr_and_the_gain_act():
    caption = next(spec.caption for spec in report.FIGURES if spec.stem == "fig05_causal_diagram")
    assert "sets every layer's step, the output layer's alone" in caption and "hidden layers' step" in caption
