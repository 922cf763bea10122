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
    """Every token any of the report's formatters can make from a summary, provenance or verdict-stage value,
    and the runs table's network description."""
    allowed = set()
    leaves = [leaf for source in (results / "analysis" / "summary.json", results / "provenance.json")
              for leaf in _leaves(json.loads(source.read_text()))]
    verdict = results / "interventions" / "verdict"
    if verdict.is_dir():  # the verdict stage's tables and answer, and the sentence the analysis wrote
        leaves += list(_leaves(json.loads((verdict / "answer.json").read_text())))
        for table in verdict.glob("*.csv"):
            leaves += pd.read_csv(table).to_numpy().ravel().tolist()
    # the network the report names in its headings, as the runs table describes it (soap.networks)
    leaves += pd.read_parquet(results / "runs.parquet")["layers"].unique().tolist()
    for leaf in leaves:
        texts = [str(leaf)]
        if isinstance(leaf, (int, float)) and not isinstance(leaf, bool):
            texts += [fmt(leaf) for fmt in report.FORMATTERS]
        for text in texts:
            allowed.update(NUMBER.findall(text))
    return allowed


def _tuning_horizon_numbers(results: Path) -> set[str]:
    """The tuning horizon's unit conversions, by hand: tune.epochs in examples and as a fraction of the
    tuned runs' epochs (make_results: 250,000 examples per epoch, tuned runs 2 epochs)."""
    epochs = json.loads((results / "provenance.json").read_text())["config"]["tune"]["epochs"]
    return {f"{epochs * 250_000:,.0f}", f"{epochs / 2:.2g}"}


@pytest.mark.parametrize("study", ["report_full", "pure_step"])
def test_narrative_numbers_all_come_from_the_analysis_outputs(study, request):
    built = request.getfixturevalue("report_full") if study == "report_full" else \
        request.getfixturevalue("report_answers")[study]
    results = built[0].parent
    found = set(NUMBER.findall(_narrative(built[1])))
    assert len(found) > 30  # the narrative does quote the analysis
    # "95" is the interval level, the one number the narrative states as a convention.
    assert found - _allowed_numbers(results) - _tuning_horizon_numbers(results) - {"95"} == set()


def test_the_tuning_horizon_stands_beside_the_tuned_estimate(built):
    header = re.search(r"each at its tuned lr<br>(.*?)</th>", built[1], flags=re.DOTALL).group(1)
    expected = "tuned on 0.25 epochs per trial (62,500 examples, 0.12 of the tuned runs' 2 epochs)"
    assert expected in " ".join(header.split())


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


def test_verdict_stage_tables_by_hand():
    verdict = pd.DataFrame({"dataset": "mnist", "row": ["non_inferiority", "primary"], "kind": ["secondary", "primary"],
                            "primary": [False, True],
                            "contrast": ["bp@sign - sign at lr 0.1", "bp@sign - sign at lr 0.01"],
                            "outcome": ["test_acc", "test_loss"], "unit": ["points", "nats"],
                            "estimate": [0.123456, -0.002], "ci_low": [-0.1, -0.01], "ci_high": [0.3, 0.006],
                            "null": [-0.5, 0.015], "p": [0.04, 0.001], "p_holm": [0.08, 0.001],
                            "predicted": "non-inferior", "verdict": ["inconclusive", "supported"], "n": [10, 10]})
    rows = context.verdict_rows(verdict)
    assert [(r["kind"], r["verdict"]) for r in rows] == [("primary", "supported"), ("secondary", "inconclusive")]
    assert (rows[1]["estimate"], rows[1]["p_holm"], rows[1]["margin"], rows[1]["outcome"]) == \
        ("0.123", "0.08", "-0.5", "test acc")
    descriptive = pd.DataFrame({"dataset": ["mnist"], "row": ["optimizer"],
                                "contrast": ["sign - sign_scaled under adam"],
                                "outcome": ["test_loss"], "unit": ["nats"], "lr": [0.01], "estimate": [-0.016],
                                "ci_low": [-0.017], "ci_high": [-0.014], "n": [8], "note": [float("nan")]})
    (row,) = context.descriptive_rows(descriptive)
    assert (row["estimate"], row["note"]) == ("-0.016", "") and "verdict" not in row
    decomposition = pd.DataFrame([{"dataset": "mnist", "architecture": "lenet5", "rule": "sign", "lr": lr, "outcome": "test_loss", "unit": "nats",
                                   "effect": e, "contrast": e, "estimate": 0.5, "ci_low": 0.1, "ci_high": 0.9,
                                   "p": 0.01, "p_holm": 0.04, "n": 5, "diverged": 0, "note": ""}
                                  for lr in (0.01, 0.1) for e in context.EFFECT_HEADERS])
    runs = pd.DataFrame({"dataset": ["mnist", "mnist"], "architecture": ["lenet5", "mlp"],
                         "layers": ["1x32x32-6c5-p2-16c5-p2-120c5-84-10 relu", "784-8-10 tanh"]})
    (block,) = context.decomposition_context(decomposition, runs)
    assert block["network"] == "LeNet-5 1x32x32-6c5-p2-16c5-p2-120c5-84-10 relu"  # its own network's runs only
    assert [r["lr"] for r in block["rows"]] == ["0.01", "0.1"]
    assert [h["label"] for h in block["headers"]][2:4] == ["direction at sign's steps", "direction at bp's steps"]
    cell = block["rows"][0]["cells"]["interaction"]
    assert (cell["estimate"], cell["p"], cell["p_label"], cell["n"], cell["direction"]) == \
        ("0.5", "0.04", "Holm-adjusted p", "5 seeds", "above")
    assert context.decomposition_context(None, runs) == context.verdict_rows(None) == []


def _headings(html: str) -> list[str]:
    return [html_lib.unescape(re.sub(r"<[^>]+>", "", h)) for h in re.findall(r"<h[23][^>]*>(.*?)</h[23]>", html)]


def test_a_lenet5_study_names_lenet5_in_every_figure_and_table_heading(small, built):
    from soap.report.inputs import load_inputs
    from soap.report.render import make_figures

    lenet, mlp = "LeNet-5 1x32x32-6c5-p2-16c5-p2-120c5-84-10 relu", "MLP 784-256-256-10 tanh"
    headings = _headings(small[1])
    figure_headings = [h for h in headings if any(h.startswith(spec.title) for spec in report.FIGURES)]
    table_headings = [h for h in headings if h.startswith(("Results", "Tables", "MNIST"))]
    assert len(figure_headings) == len(report.FIGURES) and len(table_headings) == 3
    # the page's text, its embedded images' base64 left out (any short word turns up in it by chance)
    text = re.sub(r'src="data:[^"]*"', "", small[1])
    assert all(lenet in h for h in figure_headings + table_headings) and "MLP" not in text
    figures = make_figures(load_inputs(small[0].parent))
    assert {fig.get_suptitle() for fig, _ in figures.values()} == {lenet}
    # the MLP study names its own network, read from its runs
    assert any(h.startswith("Results") and mlp in h for h in _headings(built[1]))
    assert "LeNet" not in re.sub(r'src="data:[^"]*"', "", built[1])
