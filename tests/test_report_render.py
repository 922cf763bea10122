"""soap.report.render: the figures drawn and embedded, the analysis's tables copied beside the page, and
the page itself (self-contained, escaped, drawn by a real browser)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from study_results import build, make_results
from soap import report

# The analysis's models on a handful of synthetic runs warn (Cox convergence, normality tests on few
# residuals); they are the analysis tests' concern, not the report's.
pytestmark = [pytest.mark.filterwarnings("ignore:Maximum Likelihood optimization failed"),
              pytest.mark.filterwarnings("ignore:omni_normtest is not valid")]

REPO = Path(__file__).resolve().parents[1]
SUFFIXES = (".png", ".pdf")


@pytest.fixture
def built(report_full):
    return report_full


def test_every_figure_is_written_as_png_and_pdf(built):
    figures = built[0].parent / "figures"
    for spec in report.FIGURES:
        for suffix in SUFFIXES:
            path = figures / f"{spec.stem}{suffix}"
            assert path.exists() and path.stat().st_size > 1000, path
    assert (figures / "fig01_bp_vs_fa.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (figures / "fig01_bp_vs_fa.pdf").read_bytes()[:5] == b"%PDF-"


def test_tables_are_written_as_csv(built):
    tables = built[0].parent / "tables"
    for name in ("estimates", "km", "runs_overview", "tuned_lr", "tuning_trials", "tuning_best"):
        assert len(pd.read_csv(tables / f"{name}.csv")) > 0, name
    overview = pd.read_csv(tables / "runs_overview.csv")
    assert overview["n_runs"].sum() == len(pd.read_parquet(built[0].parent / "runs.parquet"))


def test_html_is_self_contained(built):
    html = built[1]
    external = re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:|//)|url\(\s*["']?\s*(?:https?:|//)"""
                          r"""|@import""", html, flags=re.IGNORECASE)
    assert external == []
    images = re.findall(r"<img[^>]*src=\"([^\"]*)\"", html)
    assert len(images) == len(report.FIGURES)
    assert all(src.startswith("data:image/png;base64,") and len(src) > 1000 for src in images)
    # In-page anchors are the only links.
    assert all(href.startswith("#") for href in re.findall(r"href=\"([^\"]*)\"", html))


def test_values_are_escaped(built):
    assert "cpu (synthetic &lt;test&gt;)" in built[1] and "<test>" not in built[1]


def _browser() -> str | None:
    return next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)


def test_report_renders_in_headless_chromium(built, tmp_path):
    # Not skipped silently: CI installs chromium (apt-get install chromium); opt out only explicitly.
    if os.environ.get("SOAP_SKIP_BROWSER") == "1":
        pytest.skip("SOAP_SKIP_BROWSER=1")
    browser = _browser()
    assert browser, "headless Chromium not found: apt-get install chromium (or set SOAP_SKIP_BROWSER=1)"
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,4000",
                    built[0].as_uri()], check=True, timeout=90, capture_output=True)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (4000, 1280)
    assert pixels[..., :3].std() > 0.05  # text and figures, not a blank page
    # The figures are drawn, not broken-image icons: some rows far down the page are not white.
    assert (pixels[2000:, :, :3] < 0.9).any()


def test_forest_has_one_panel_with_its_own_axis_per_estimand(tmp_path):
    results = make_results(tmp_path / "results", tuning=False)
    inputs = report.load_inputs(results)
    fig, axes = report.make_figures(inputs)["fig06_forest"]
    assert axes.shape == (1, len(report.COMPARISON_ESTIMANDS))
    limits = [ax.get_xlim() for ax in axes[0]]
    assert len(set(limits)) == len(limits)  # each panel scales to its own estimates



def test_tables_are_the_analysis_tables_byte_for_byte(built):
    # The report shows the analysis's tables; it recomputes none of them.
    results = built[0].parent
    written = sorted(p.name for p in (results / "tables").glob("*.csv"))
    assert "rule_comparison.csv" in written and "tuning_budget.csv" in written
    for name in written:
        assert (results / "tables" / name).read_bytes() == (results / "analysis" / name).read_bytes(), name


def test_interventions_section_shows_the_verdict_table_and_its_figures(tmp_path):
    results = make_results(tmp_path / "results", methods=("bp", "fa"), tuning=False)
    verdict_dir = results / "interventions" / "verdict"
    verdict_dir.mkdir(parents=True)
    pd.DataFrame({"dataset": ["mnist"], "row": ["c"], "contrast": ["sign - sign_scaled under adam"],
                  "outcome": ["test_loss"], "estimate": [0.0123456], "ci_low": [-0.02], "ci_high": [0.04],
                  "margin": [0.05], "tost_p": [0.001234], "predicted": ["equivalent"], "verdict": ["supported"],
                  "n": [8]}).to_csv(verdict_dir / "verdict.csv", index=False)
    shutil.copy(_any_png(tmp_path), verdict_dir / "verdict_c_optimizers.png")
    _, html = build(results)
    assert "Interventions: is the advantage learning rate?" in html
    assert "Supported (1): c sign - sign_scaled under adam (test_loss)." in html
    assert "<td>0.01235</td>" in html and "<td>0.001234</td>" in html and "<td>8</td>" in html
    images = re.findall(r"<img[^>]*src=\"([^\"]*)\"", html)
    assert len(images) == len(report.FIGURES) + 1  # the verdict figure, embedded too
    assert "(<code>interventions/verdict/verdict_c_optimizers.png</code>)" in html


def _any_png(tmp_path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = tmp_path / "any.png"
    fig.savefig(path)
    plt.close(fig)
    return path
