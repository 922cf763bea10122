"""The study report: figures, tables and a self-contained HTML page built from synthetic results.

The fixtures write a small results directory shaped like the pipeline's (runs and curves tables,
analysis outputs, tuning trials, provenance) from soap.synthetic's runs table, so the report is tested
on the same contract the pipeline fills.
"""

from __future__ import annotations

import html as html_lib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from soap import report
from soap.analysis import run_analysis
from soap.synthetic import SyntheticSpec, generate_runs
from soap.tables import TableError

# The analysis's models on a handful of synthetic runs warn (Cox convergence, normality tests on few
# residuals); they are the analysis tests' concern, not the report's.
pytestmark = [pytest.mark.filterwarnings("ignore:Maximum Likelihood optimization failed"),
              pytest.mark.filterwarnings("ignore:omni_normtest is not valid")]

REPO = Path(__file__).resolve().parents[1]
METHODS = ("bp", "fa", "sign", "sign_scaled")
SUFFIXES = (".png", ".pdf")

# Distinctive values written into summary.json, which the narrative must then show instead of the old.
N_RUNS_NEW = 8765
TUNED_FA_NEW = {"estimate": 0.9876, "ci_low": 0.9012, "ci_high": 1.0345, "p_holm": 0.00321}


# --- synthetic results --------------------------------------------------------------------------------

def _curves(runs: pd.DataFrame, n_points: int = 16) -> pd.DataFrame:
    """Decaying loss curves and alignment traces for each run; bp has zero angle and unit cosine."""
    rng = np.random.default_rng(1)
    frames = []
    for run in runs.itertuples():
        # Logged at fixed intervals, so seeds line up; a diverged run's curve stops where it diverged.
        examples = np.arange(0, run.examples_seen + 1, 250_000 / (n_points - 1))
        floor = 0.1 if np.isnan(run.final_train_loss) else run.final_train_loss
        scale = 250_000 / (3 + 2 * rng.random())
        loss = floor + (2.3 - floor) * np.exp(-examples / scale)
        aligned = run.method == "bp"
        angle = 0.0 if aligned else 80 - 30 * (1 - np.exp(-examples / scale))
        cos = 1.0 if aligned else 0.1 + 0.6 * (1 - np.exp(-examples / scale))
        frame = pd.DataFrame({"run_id": run.run_id, "examples": examples,
                              "train_loss": loss * np.exp(0.05 * rng.standard_normal(len(examples))),
                              "train_loss_ema": loss, "val_loss": loss + 0.02, "val_acc": 1 - loss / 3})
        for layer in range(3):
            frame[f"angle_l{layer}"] = angle + layer * 3
        for layer in range(2):
            frame[f"cos_l{layer}"] = cos - layer * 0.05
            frame[f"norm_ratio_l{layer}"] = run.feedback_gain
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _tuning(root: Path, runs: pd.DataFrame) -> None:
    rng = np.random.default_rng(2)
    for (dataset, method), rows in runs[runs["phase"] == "tuned"].groupby(["dataset", "method"]):
        best_lr = float(rows["lr"].iloc[0])
        for repeat in range(2):
            lr = np.exp(rng.uniform(np.log(1e-4), np.log(1.0), 12))
            value = 0.1 + 0.03 * np.log(lr / best_lr) ** 2 + 0.01 * rng.random(12)
            study = root / "tune" / dataset / method / f"r{repeat}"
            study.mkdir(parents=True)
            pd.DataFrame({"number": range(12), "value": value, "state": "COMPLETE", "params_lr": lr,
                          "datetime_start": "2025-01-01 00:00:00"}).to_csv(study / "trials.csv", index=False)
            best = int(np.argmin(value))
            (study / "best.json").write_text(json.dumps({"lr": lr[best], "value": value[best], "n_trials": 12}))


def make_results(root: Path, datasets=("mnist",), methods=METHODS, tuning=True, provenance=True) -> Path:
    """A results directory in the pipeline's layout, small enough to report on in a few seconds."""
    spec = SyntheticSpec(datasets=tuple(datasets),
                         direct_effect={m: SyntheticSpec().direct_effect[m] for m in methods},
                         grid_lrs=tuple(np.logspace(-4, 0, 5)), grid_seeds=3, tuned_seeds=3,
                         diverge_elr=5.0)  # sign survives the shared lr (mediation runs) but not lr = 1
    runs = generate_runs(spec, seed=0)
    runs.loc[runs["phase"] == "tuned", "examples_seen"] *= 2  # tuned runs train longer, as in the study
    runs["refresh_period"] = 1000
    runs["architecture"] = "784-256-256-10 tanh"
    root.mkdir(parents=True, exist_ok=True)
    runs.to_parquet(root / "runs.parquet", index=False)
    _curves(runs).to_parquet(root / "curves.parquet", index=False)
    if tuning:
        _tuning(root, runs)
    # The analysis stage itself writes summary.json, estimates.csv, km.csv and the report's tables: the
    # report is tested on the contract as it is, not on a copy of it (few resamples, to stay fast).
    run_analysis(root / "runs.parquet", root / "analysis", n_boot=50, curves_path=root / "curves.parquet",
                 tune_dir=root / "tune", tune_batch=4, lr_range=(1e-4, 1.0))
    if provenance:
        (root / "provenance.json").write_text(json.dumps({
            "config": {"seeds": {"grid": 3, "tuned": 3}, "budget": {"epochs": 5}, "methods": list(methods),
                       "tune": {"batch": 4, "lr_low": 1e-4, "lr_high": 1.0},
                       "model": {"hidden": [256, 256], "activation": "tanh"}},
            "versions": {"soap": "0.1.0", "torch": "2.5.1", "python": "3.11.9"},
            "device": ["cpu (synthetic <test>)"], "wall_time_s": 3723.0, "compute_time_s": 7021.5,
            "jobs": 12, "runs": len(runs), "started": "2025-01-01T00:00:00",
            "finished": "2025-01-01T01:02:03", "gathered": "2025-01-01T01:02:04"}))
    return root


def build(results: Path) -> tuple[Path, str]:
    out = report.build_report(results, results / "report.html", results / "figures")
    return out, out.read_text()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    """Every input present, two datasets."""
    return build(make_results(tmp_path_factory.mktemp("full") / "results", datasets=("mnist", "fashion_mnist")))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, str]:
    """Only the required inputs (and estimates.csv), no sign runs: a partial study."""
    results = make_results(tmp_path_factory.mktemp("small") / "results", methods=("bp", "fa"), tuning=False,
                           provenance=False)
    (results / "analysis" / "km.csv").unlink()
    return build(results)


# --- tests ---------------------------------------------------------------------------------------------

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


def _narrative(html: str) -> str:
    sections = re.findall(r'<section class="narrative".*?</section>', html, flags=re.DOTALL)
    # Entities unescaped: "&#39;" (an escaped quote in a formula) holds no number of the study's.
    return html_lib.unescape(re.sub(r"<[^>]+>", " ", " ".join(sections)))


NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?(?:e[+-]?\d+)?")


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


def test_missing_optional_inputs_degrade_to_explanations(small):
    out, html = small
    for spec in report.FIGURES:
        assert (out.parent / "figures" / f"{spec.stem}.png").stat().st_size > 1000
    assert "provenance.json</code> is missing" in html
    assert "km.csv" in html and "trials.csv" in html
    assert "not run for this dataset (no sign and sign_scaled" in html  # the analysis's reason


def test_required_input_missing_names_the_file(tmp_path):
    results = make_results(tmp_path / "results", tuning=False)
    (results / "analysis" / "summary.json").unlink()
    with pytest.raises(FileNotFoundError, match="summary.json"):
        build(results)


def test_curves_table_breaking_the_contract_is_named(tmp_path):
    results = make_results(tmp_path / "results", tuning=False)
    curves = pd.read_parquet(results / "curves.parquet")
    curves.drop(columns=["val_loss"]).to_parquet(results / "curves.parquet", index=False)
    with pytest.raises(TableError, match=r"curves.parquet is missing required column\(s\): val_loss"):
        build(results)
    pd.concat([curves, curves.iloc[:1]]).to_parquet(results / "curves.parquet", index=False)
    with pytest.raises(TableError, match=r"\(run_id, examples\) must be unique"):
        build(results)


def test_values_are_escaped(built):
    assert "cpu (synthetic &lt;test&gt;)" in built[1] and "<test>" not in built[1]


def test_every_figure_has_a_snakemake_caption():
    captions = {p.stem: p.read_text() for p in (REPO / "workflow" / "report").glob("fig*.rst")}
    assert set(captions) == {spec.stem for spec in report.FIGURES}
    for spec in report.FIGURES:  # the same words in the HTML report and in Snakemake's
        assert captions[spec.stem].strip() == f"**{spec.title}.** {spec.caption}"
    assert (REPO / "workflow" / "report" / "workflow.rst").read_text().strip()


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


def test_forest_has_one_panel_with_its_own_axis_per_estimand(tmp_path):
    results = make_results(tmp_path / "results", tuning=False)
    inputs = report.load_inputs(results)
    fig, axes = report.make_figures(inputs)["fig06_forest"]
    assert axes.shape == (1, len(report.COMPARISON_ESTIMANDS))
    limits = [ax.get_xlim() for ax in axes[0]]
    assert len(set(limits)) == len(limits)  # each panel scales to its own estimates
