"""soap.report.context: every number on the page comes from the analysis's outputs through the
formatters, the template types none, and the formatters and sections by hand."""

from __future__ import annotations

import html as html_lib
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from study_results import build
from soap import report
from soap.report import context

# The analysis's models on a handful of synthetic runs warn (Cox convergence, normality tests on few
# residuals); they are the analysis tests' concern, not the report's.
pytestmark = [pytest.mark.filterwarnings("ignore:Maximum Likelihood optimization failed"),
              pytest.mark.filterwarnings("ignore:omni_normtest is not valid")]

REPO = Path(__file__).resolve().parents[1]

# Distinctive values written into summary.json, which the narrative must then show instead of the old.
N_RUNS_NEW = 8765
TUNED_FA_NEW = {"estimate": 0.9876, "ci_low": 0.9012, "ci_high": 1.0345, "p_holm": 0.00321}
NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?(?:e[+-]?\d+)?")


@pytest.fixture
def built(report_full):
    return report_full


@pytest.fixture
def small(report_small):
    return report_small


def _narrative(html: str) -> str:
    sections = re.findall(r'<section class="narrative".*?</section>', html, flags=re.DOTALL)
    # Entities unescaped: "&#39;" (an escaped quote in a formula) holds no number of the study's.
    return html_lib.unescape(re.sub(r"<[^>]+>", " ", " ".join(sections)))


def _leaves(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _leaves(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _leaves(value)
    else:
        yield tree


def _allowed_numbers(results: Path) -> set[str]:
    """Every token any of the report's formatters can make from a summary or provenance value."""
    allowed = set()
    for source in (results / "analysis" / "summary.json", results / "provenance.json"):
        for leaf in _leaves(json.loads(source.read_text())):
            texts = [str(leaf)]
            if isinstance(leaf, (int, float)) and not isinstance(leaf, bool):
                texts += [fmt(leaf) for fmt in report.FORMATTERS]
            for text in texts:
                allowed.update(NUMBER.findall(text))
    return allowed


def test_narrative_numbers_all_come_from_the_analysis_outputs(built):
    results = built[0].parent
    found = set(NUMBER.findall(_narrative(built[1])))
    assert len(found) > 30  # the narrative does quote the analysis
    # "95" is the interval level, the one number the narrative states as a convention.
    assert found - _allowed_numbers(results) - {"95"} == set()


def test_template_types_no_numbers():
    text = (REPO / "soap" / "templates" / "report.html").read_text()
    text = re.sub(r"<style>.*?</style>", "", text, flags=re.DOTALL)
    text = re.sub(r"\{[{%#].*?[}%#]\}", "", text, flags=re.DOTALL)
    text = re.sub(r"<[^>]+>", "", text)
    assert re.findall(r"\d+", text.replace("95%", "")) == []


def _tuned_fa(summary: dict) -> dict:
    return next(row for row in summary["estimates"] if (row["estimand"], row["method"], row["outcome"])
                == ("tuned", "fa", summary["outcome"]) and row["dataset"] == summary["datasets"][0])


def test_changing_summary_changes_the_narrative(small, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(small[0].parent, results)
    path = results / "analysis" / "summary.json"
    summary = json.loads(path.read_text())
    old_cell = "{} [{}, {}]".format(*(report.fmt_num(_tuned_fa(summary)[k]) for k in ("estimate", "ci_low", "ci_high")))
    old_runs = f"{report.fmt_int(summary['n_runs'])} runs"
    assert old_cell in small[1] and old_runs in small[1]
    summary["n_runs"] = N_RUNS_NEW
    _tuned_fa(summary).update(TUNED_FA_NEW)
    path.write_text(json.dumps(summary))
    _, after = build(results)
    assert f"{N_RUNS_NEW:,} runs" in after and old_runs not in after
    assert "0.988 [0.901, 1.03]" in after and old_cell not in after
    assert "Holm-adjusted p = 0.0032" in after


def test_narrative_shows_the_small_lr_regime_the_imprecision_and_the_exclusions(built):
    html = _narrative(built[1])
    assert "a learning rate chosen for bp" in html and "too small for bp: the write-up's regime" in html
    assert "Headline." in html
    assert "SD " in html and "ACME and ADE are estimated far less precisely" in html
    assert "Runs left out, by estimand, method and reason" in html
    assert "Holm families" in html and "tests: effective_lr" in html
    assert "seeds per phase grid 3, tuned 3" in " ".join(html.split())
    # Tuning budget: TPE's startup trials (provenance's tune.batch = 4), said in the page.
    assert "TPE's startup trials (the first 4 of each study" in html
    assert "The ratio at other target losses" in html
    assert "Probability of improvement" in html and "each at its tuned lr:" in html
    assert "The tuned comparison at the grid's training length" in html


def test_formatters_by_hand():
    assert report.fmt_num(0.0123456) == "0.0123" and report.fmt_num(1234.5, 2) == "1.2e+03"
    assert report.fmt_num(None) == report.fmt_num(float("nan")) == report.fmt_num("x") == "n/a"
    assert report.fmt_p(0.0) == "≈ 0" and report.fmt_p(0.01234) == "0.012" and report.fmt_p(None) == "n/a"
    assert report.fmt_int(1234567.4) == "1,234,567"
    assert report.fmt_duration(3723) == "1 h 02 min 03 s" and report.fmt_duration(61) == "1 min 01 s"


def test_an_interval_says_which_side_of_the_null_it_lies_on():
    below = report.fmt_interval({"estimate": -0.5, "ci_low": -0.7, "ci_high": -0.2, "p_value": 0.01, "p_holm": 0.03})
    assert (below["direction"], below["p"], below["p_label"]) == ("below", "0.03", "Holm-adjusted p")
    above = report.fmt_interval({"estimate": 1.3, "ci_low": 1.2, "ci_high": 1.5, "p_value": 0.2}, null=1.0)
    assert (above["direction"], above["p"], above["p_label"]) == ("above", "0.2", "p")
    neither = report.fmt_interval({"estimate": 0.1, "ci_low": -0.1, "ci_high": 0.3, "note": "only 3 pairs (< 6)"})
    assert neither["direction"] == "neither" and neither["few_pairs"] and neither["p"] is None
    assert report.fmt_interval(None) == {**report.fmt_interval({}), "available": False}


def test_verdict_words_and_cells_by_hand():
    verdict = pd.DataFrame({"dataset": ["mnist", "mnist"], "row": ["a", "c"], "contrast": ["dose", "adam"],
                            "outcome": ["test_loss", "test_acc"], "estimate": [0.123456, 2.0], "n": [8, 9],
                            "verdict": ["supported", "inconclusive"]})
    words = context.verdict_summary(verdict)
    assert words.startswith("Supported (1): a dose (test_loss). Inconclusive (1): c adam (test_acc).")
    assert "Contradicted" not in words
    assert context.verdict_summary(verdict.iloc[:0]).startswith("No intervention arm produced a verdict row")
    section = context.interventions_context(verdict, {"verdict_a_dose": "data:image/png;base64,AAAA"})
    assert section["columns"] == ["dataset", "row", "contrast", "outcome", "estimate", "verdict", "n"]
    assert section["rows"][0] == ["mnist", "a", "dose", "test_loss", "0.1235", "supported", "8"]
    assert [f["stem"] for f in section["figures"]] == ["verdict_a_dose"]
    assert context.interventions_context(None, {}) is None
