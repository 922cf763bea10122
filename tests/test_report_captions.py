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
