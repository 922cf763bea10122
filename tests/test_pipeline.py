"""The Snakemake study pipeline, run for real on MNIST with config/quick.yaml in a scratch copy.

One run is SIGKILLed (Snakemake and its jobs, as a crashed machine would be) once the grid job has
finished, then rerun: it must complete, leave finished outputs untouched, and produce tables that
follow the runs-table contract.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pandas as pd
import pytest
from workflows import QUICK, REPO, Workflow, environment, run_snakemake

from soap.pipeline import bp_reference_loss, fill_targets, grid_lrs, grid_members, main_target_losses
from soap.study_config import load_study_config
from soap.tables import validate_runs

METHODS = QUICK["methods"]


def finished_jobs(log: str, rule: str) -> int:
    return log.count(f"(Rule: {rule})")


def finished_outputs(log: str, rule: str) -> list[str]:
    """The output paths of the `rule` jobs that Snakemake's log reports finished."""
    outputs = dict(re.findall(rf"^(?:local)?rule {rule}:\n(?:    .*\n)*?    output: (.*)\n(?:    .*\n)*?    jobid: (\d+)$",
                              log, flags=re.MULTILINE))
    outputs = {jobid: paths for paths, jobid in outputs.items()}
    done = re.findall(rf"^Finished jobid: (\d+) \(Rule: {rule}\)$", log, flags=re.MULTILINE)
    return [path for jobid in done for path in outputs[jobid].split(", ")]


@pytest.fixture(scope="module")
def killed_and_rerun(tmp_path_factory, data_root):
    """Run the quick study, SIGKILL it after the grid job, rerun it; return what was seen."""
    flow = Workflow(tmp_path_factory.mktemp("study"))
    work = flow.root
    args = ("--cores", "2", "--configfile", flow.write_config(data_root))
    first_log = work / "first.log"
    with open(first_log, "w") as log:
        process = flow.snakemake(*args, background=True, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while finished_jobs(first_log.read_text(), "train_grid") == 0:
            assert process.poll() is None, first_log.read_text()
            assert time.monotonic() < deadline, "the grid job did not finish in time"
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)  # Snakemake and every job it started
        process.wait()
    # Outputs of jobs Snakemake had recorded as finished must survive the rerun untouched (the grid jobs
    # of every arm are one rule: those still running when killed are redone, the finished ones never).
    first = first_log.read_text()
    kept = [work / "results/data/mnist.pt", *(work / path for path in finished_outputs(first, "train_grid"))]
    assert len(kept) >= 4  # the data and at least one grid job's three files
    mtimes = {path: path.stat().st_mtime_ns for path in kept}
    assert not (work / "results/runs.parquet").exists()

    unlock = flow.snakemake("--unlock", *args)  # a killed run leaves its lock behind
    assert unlock.returncode == 0, unlock.stderr
    started = time.monotonic()
    rerun = flow.snakemake(*args)
    assert rerun.returncode == 0, rerun.stderr[-5000:]
    return {"work": work, "flow": flow, "mtimes": mtimes, "first": first, "rerun": rerun.stderr,
            "rerun_s": time.monotonic() - started}


def test_rerun_after_kill_completes_and_reuses_finished_outputs(killed_and_rerun):
    work, flow, rerun = killed_and_rerun["work"], killed_and_rerun["flow"], killed_and_rerun["rerun"]
    for path, mtime in killed_and_rerun["mtimes"].items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was rewritten"
    grid_jobs = finished_jobs(killed_and_rerun["first"], "train_grid") + finished_jobs(rerun, "train_grid")
    planned = len(list((work / "results").rglob("train/grid/*/chunk*/runs.parquet")))  # one per grid job
    assert planned >= 2 and grid_jobs == planned  # no finished grid job ran twice
    assert finished_jobs(rerun, "prepare_data") == 0
    assert finished_jobs(rerun, "gather_runs") == 1
    # Every tuning study ended up with its full budget, whether it was resumed or not.
    for method in METHODS:
        best = json.loads((work / f"results/tune/mnist/{method}/r0/best.json").read_text())
        assert best["n_trials"] == QUICK["tune"]["n_trials"]
    nothing = flow.snakemake("-n", "--cores", "2", "--configfile", "config/test.yaml")
    assert "Nothing to be done" in nothing.stdout + nothing.stderr


def _readme_report_command() -> list[str]:
    (command,) = re.findall(r"`(snakemake --report \S+)`", (REPO / "README.md").read_text())
    return command.split()[1:]


def test_readme_report_command_builds_the_report_and_needs_pygments(killed_and_rerun, tmp_path):
    """The README's `snakemake --report ...` on the finished quick study, in the test venv.

    Honest about the environment: this venv also holds the test extras, so on its own this would pass
    even if soap did not depend on pygments (pytest brings it). So the same command is run once more
    with pygments made unimportable, and must fail with Snakemake's "pygments must be installed": the
    dependency is needed, and tests/test_install.py checks that soap's metadata pulls it in with the
    README's plain `pip install -e .` (soap -> snakemake[reports] -> pygments). A fresh venv installed
    exactly as the README says would need the network, which CI does not have for this.
    """
    flow, args = killed_and_rerun["flow"], _readme_report_command()
    report = flow.snakemake(*args, "--configfile", "config/test.yaml")
    html = flow.root / args[-1]
    assert report.returncode == 0 and html.stat().st_size > 10_000, report.stderr[-3000:]
    assert "results/report.html" in html.read_text(errors="replace")

    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text("import sys\nsys.modules['pygments'] = None  # as if it were not installed\n")
    env = environment()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    without = flow.snakemake(*args[:-1], "results/without-pygments.html", "--configfile", "config/test.yaml", env=env)
    assert without.returncode != 0 and "pygments must be installed" in without.stdout + without.stderr


def test_runs_table_follows_the_contract(killed_and_rerun):
    results = killed_and_rerun["work"] / "results"
    runs = validate_runs(pd.read_parquet(results / "runs.parquet"))
    n_lrs, seeds = QUICK["grid"]["n_lrs"], QUICK["grid"]["seeds"]
    grid, tuned = runs[runs["phase"] == "grid"], runs[runs["phase"] == "tuned"]
    assert len(grid) == len(METHODS) * n_lrs * seeds
    assert len(tuned) == len(METHODS) * QUICK["tuned"]["seeds"]
    assert sorted(grid["lr"].unique()) == pytest.approx(grid_lrs(load_study_config(values=dict(QUICK))))
    # Paired design: every (method, lr) has the same seeds.
    assert (grid.groupby(["method", "lr"])["seed"].apply(lambda s: tuple(sorted(s))).nunique()) == 1
    # Tuned runs use the tuned lr of their method.
    lrs = json.loads((results / "tune/mnist/tuned_lrs.json").read_text())
    for method, rows in tuned.groupby("method"):
        assert rows["lr"].to_numpy() == pytest.approx(lrs[method]["lr"])
    # The time-to-target columns were filled against one target, computed from bp's tuned runs.
    assert runs["target_loss"].nunique() == 1 and math.isfinite(runs["target_loss"].iloc[0])
    assert (runs["reached_target"] == runs["examples_to_target"].notna()).all()

    curves = pd.read_parquet(results / "curves.parquet")
    assert set(curves["run_id"]) == set(runs["run_id"])
    assert {"run_id", "examples", "train_loss", "train_loss_ema", "val_loss", "val_acc"} <= set(curves.columns)

    provenance = json.loads((results / "provenance.json").read_text())
    assert {"config", "versions", "device", "wall_time_s", "started", "finished"} <= set(provenance)
    assert provenance["config"]["tune"]["n_trials"] == QUICK["tune"]["n_trials"]
    assert (results / "report.html").stat().st_size > 0
    assert (results / "analysis" / "summary.json").is_file()


def test_invalid_config_stops_before_any_job_and_names_the_key(workflow, data_root):
    config = workflow.write_config(data_root, tune={**QUICK["tune"], "n_trial": 5})
    result = workflow.snakemake("-n", "--configfile", config)
    message = result.stdout + result.stderr
    assert result.returncode != 0
    assert "tune: Additional properties are not allowed ('n_trial' was unexpected)" in message

    workflow.write_config(data_root, grid={**QUICK["grid"], "seeds": 0})
    result = workflow.snakemake("--cores", "1", "--configfile", config)
    message = result.stdout + result.stderr
    assert result.returncode != 0 and "grid.seeds: 0 is less than the minimum of 1" in message
    workflow.write_config(data_root, train={**QUICK["train"], "ema_beta": 1.5})  # a key from TrainConfig
    result = workflow.snakemake("-n", "--configfile", config)
    assert "train.ema_beta: 1.5 is greater than or equal to the maximum of 1" in result.stdout + result.stderr
    assert not (workflow.root / "results").exists()


def test_lint_and_dry_run_of_the_default_study():
    lint = run_snakemake(REPO, "--lint")
    assert lint.returncode == 0 and "Congratulations" in lint.stdout + lint.stderr
    dry = run_snakemake(REPO, "-n")
    assert dry.returncode == 0, dry.stderr
    for rule in ("prepare_data", "tune_study", "tuned_lrs", "train_grid", "train_tuned", "gather_runs",
                 "analyze", "report"):
        assert rule in dry.stdout + dry.stderr


@pytest.mark.parametrize("configfile,factorial_jobs", [
    (None, 2),  # config.yaml: sign's crossed cells at 5 seeds, 3 per job
    ("config/quick.yaml", 1),
    ("config/interventions.yaml", 2),  # sign, sign_scaled, fa at 6 seeds, 3 per job
    ("config/full.yaml", 8),  # 2 datasets x 20 seeds, 5 per job
])
def test_every_shipped_config_plans_the_factorial_and_the_verdict_and_no_bp_matched(configfile, factorial_jobs):
    dry = run_snakemake(REPO, "-n", "--quiet", "rules", *(["--configfile", configfile] if configfile else []))
    assert dry.returncode == 0, dry.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", dry.stdout, flags=re.MULTILINE))
    assert int(counts["train_factorial"]) == factorial_jobs
    assert int(counts["verdict"]) == 1 and int(counts["report"]) == 1
    assert not [rule for rule in counts if "matched" in rule]


def test_the_verdict_rule_writes_the_verdict_files_and_the_issues_decomposition_path():
    dry = run_snakemake(REPO, "-n", "--forceall", "verdict")
    assert dry.returncode == 0, dry.stderr[-3000:]
    (block,) = re.findall(r"^rule verdict:\n((?:    .*\n)+)", dry.stdout, flags=re.MULTILINE)
    outputs = re.search(r"output: (.*)", block).group(1).split(", ")
    assert {"results/interventions/verdict/verdict.csv", "results/interventions/verdict/descriptive.csv",
            "results/interventions/verdict/decomposition.csv", "results/interventions/verdict/answer.json",
            "results/tables/decomposition.csv"} <= set(outputs)


def test_the_verdict_rule_answers_from_a_main_and_an_interventions_runs_table(tmp_path):
    """The verdict stage alone, on a synthetic factorial world (bp and sign as the main grid's runs, the
    crossed cells as the interventions' table): every verdict file, the issue's decomposition path, and a
    primary row, through soap.verdict_files, the writer `soap verdict` uses."""
    from soap.synthetic_factorial import FACTORIAL_WORLDS, generate_factorial_runs

    (tmp_path / "flow").mkdir()
    flow = Workflow(tmp_path / "flow")
    runs = generate_factorial_runs(replace(FACTORIAL_WORLDS["pure_step"], seeds=5), seed=0)
    crossed = runs["method"] != runs["step_rule"]
    (flow.root / "results" / "interventions").mkdir(parents=True)
    runs[~crossed].to_parquet(flow.root / "results" / "runs.parquet")
    runs[crossed].to_parquet(flow.root / "results" / "interventions" / "runs.parquet")
    done = flow.snakemake("--cores", "1", "--allowed-rules", "verdict", "--rerun-triggers", "mtime",
                          "--", "results/interventions/verdict/verdict.csv")
    assert done.returncode == 0, done.stderr[-3000:]
    out = flow.root / "results" / "interventions" / "verdict"
    verdict = pd.read_csv(out / "verdict.csv")
    assert verdict["primary"].sum() == 1
    assert verdict.loc[verdict["primary"], "contrast"].item().startswith("bp@sign - sign at lr ")
    assert json.loads((out / "answer.json").read_text())["rule"] == "sign"
    assert pd.read_csv(flow.root / "results" / "tables" / "decomposition.csv").equals(
        pd.read_csv(out / "decomposition.csv"))


def test_optimizer_arm_reuses_the_main_rules_and_the_parse_imports_no_plotting(tmp_path):
    """config/quick.yaml's signsgd arm is planned by the main study's own rules (tune_study, tuned_lrs,
    train_grid, train_tuned) under results/interventions/signsgd/, the main study's paths stay where they
    were, and parsing the DAG imports no figure module and no plotting library (python -X importtime)."""
    (tmp_path / "flow").mkdir()
    flow = Workflow(tmp_path / "flow")
    dry = subprocess.run([sys.executable, "-X", "importtime", "-m", "snakemake", "-n", "--configfile",
                          flow.write_config(tmp_path / "data")], cwd=flow.root, env=environment(),
                         capture_output=True, text=True, timeout=600)
    assert dry.returncode == 0, dry.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in dry.stderr.splitlines() if line.startswith("import time:")}
    plotting = sorted(m for m in imported if m.split(".")[0] == "matplotlib" or "figures" in m
                      or m.startswith(("soap.plots", "soap.report")))
    assert not plotting, plotting
    jobs = re.findall(r"^rule (\w+):\n(?:    .*\n)*?    output: ([^,\n]+)", dry.stdout, flags=re.MULTILINE)
    arm = sorted((rule, out) for rule, out in jobs if out.startswith("results/interventions/signsgd/"))
    assert arm == sorted([("tune_study", f"results/interventions/signsgd/tune/mnist/{m}/r0/best.json")
                          for m in ("bp", "sign", "sign_scaled")] + [
        ("tuned_lrs", "results/interventions/signsgd/tune/mnist/tuned_lrs.json"),
        ("train_grid", "results/interventions/signsgd/train/grid/mnist/chunk0/runs.parquet"),
        ("train_tuned", "results/interventions/signsgd/train/tuned/mnist/chunk0/runs.parquet")])
    main = {rule: out for rule, out in jobs if not out.startswith("results/interventions/")}
    assert main["train_grid"] == "results/train/grid/mnist/chunk0/runs.parquet"
    assert main["train_tuned"] == "results/train/tuned/mnist/chunk0/runs.parquet"
    assert main["tuned_lrs"] == "results/tune/mnist/tuned_lrs.json"
    assert not any(rule.endswith("_optimizer") for rule, _ in jobs)


def test_interventions_are_timed_to_the_main_studys_target_per_dataset():
    main = pd.DataFrame({"dataset": ["mnist", "mnist", "fashion_mnist"], "method": ["bp", "fa", "bp"],
                         "target_loss": [0.3, 0.3, 0.5]})
    assert main_target_losses(main) == {"mnist": 0.3, "fashion_mnist": 0.5}


def _bp_tuned_fixture():
    runs = pd.DataFrame({
        "run_id": ["a", "b", "c", "d"], "phase": ["tuned", "tuned", "tuned", "grid"], "dataset": "mnist",
        "method": ["bp", "bp", "fa", "bp"], "diverged": False, "examples_seen": 200, "epochs": 2.0,
    })
    # One epoch is 100 examples: bp's losses there are 0.5 and 0.7, so the target is their median 0.6.
    curves = pd.DataFrame({
        "run_id": ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["d"] * 3,
        "examples": [50, 100, 200] * 4,
        "train_loss_ema": [0.9, 0.5, 0.3, 1.0, 0.7, 0.4, 1.0, 0.8, 0.61, 0.2, 0.1, 0.1],
    })
    return runs, curves


def test_default_target_is_bp_tuned_median_after_one_epoch():
    runs, curves = _bp_tuned_fixture()
    assert bp_reference_loss(runs, curves) == pytest.approx(0.6)
    filled = fill_targets(runs, curves, "auto").set_index("run_id")
    assert filled["target_loss"].eq(0.6).all()
    assert filled["examples_to_target"].fillna(-1).to_dict() == {"a": 100.0, "b": 200.0, "c": -1, "d": 50.0}
    assert filled["reached_target"].to_dict() == {"a": True, "b": True, "c": False, "d": True}
    fixed = fill_targets(runs, curves, 0.35).set_index("run_id")
    assert fixed["examples_to_target"]["a"] == 200.0 and not fixed["reached_target"]["c"]


def test_refresh_periods_are_a_grid_axis_for_the_rules_that_refresh():
    members = grid_members(["bp", "fa", "sign", "stale_bp"], [0.1, 1.0], [0, 1], [640, 6400, 64000], 6400)
    by_method = {m: [x.get("refresh_period", 6400) for x in members if x["method"] == m]
                 for m in ("bp", "fa", "sign", "stale_bp")}
    assert by_method["bp"] == by_method["fa"] == [6400] * 4  # B never refreshed: T changes nothing
    for method in ("sign", "stale_bp"):
        assert sorted(by_method[method]) == sorted([640] * 4 + [6400] * 4 + [64000] * 4)
    # The default period keeps the plain run id (no refresh_period key); the others carry theirs.
    assert not any("refresh_period" in x for x in members if x.get("refresh_period", 6400) == 6400)
    assert grid_members(["sign"], [0.1], [0], None, 6400) == [{"method": "sign", "lr": 0.1, "seed": 0}]


def test_report_reruns_when_a_tuning_file_it_reads_changes(killed_and_rerun):
    """The analysis reads every study's trials.csv and best.json (soap.analysis.outputs) into the tables
    the report shows, so they are its declared inputs: a changed one makes Snakemake plan the analysis
    and the report again, and nothing upstream."""
    flow = killed_and_rerun["flow"]
    trials = flow.root / "results/tune/mnist/sign/r0/trials.csv"
    content, stat = trials.read_bytes(), trials.stat()
    try:
        # A new content, not only a new mtime: Snakemake compares checksums of small inputs.
        trials.write_bytes(content + b"\n")
        plan = flow.snakemake("-n", "--cores", "2", "--configfile", "config/test.yaml")
        jobs = set(re.findall(r"^rule (\w+):", plan.stdout + plan.stderr, flags=re.MULTILINE))
        assert jobs == {"analyze", "report", "all"}, plan.stdout[-3000:]
    finally:
        trials.write_bytes(content)
        os.utime(trials, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_gather_flags_a_paired_contrast_whose_arms_ran_on_different_device_types():
    from soap.pipeline import method_device_types, mixed_device_contrasts

    jobs = [pd.DataFrame({"method": ["bp", "fa"]}), pd.DataFrame({"method": ["sign"]}),
            pd.DataFrame({"method": ["fa"]})]
    metas = [{"device": "cpu (2 threads)", "device_type": "cpu"},
             {"device": "cuda:0 (NVIDIA H200)"},  # an older meta: typed by its device line
             {"device": "cpu (1 threads)", "device_type": "cpu"}]
    types = method_device_types(jobs, metas)
    assert types == {"bp": ["cpu"], "fa": ["cpu"], "sign": ["cuda"]}
    assert mixed_device_contrasts(types) == [
        "paired contrast sign - bp mixes device types: sign ran on cuda, bp on cpu"]
    assert mixed_device_contrasts({"bp": ["cuda"], "fa": ["cuda"]}) == []
    assert mixed_device_contrasts({"bp": ["cuda"], "fa": ["cpu", "cuda"]}) != []


def test_a_jobs_log_keeps_its_own_lines_and_only_fonttools_warnings(tmp_path):
    # matplotlib's PDF backend logs each subsetted font through fontTools at INFO: ~150 lines a figure
    log = tmp_path / "job.log"
    script = ("import logging; from soap.pipeline import log_to_file; log_to_file(r'%s'); "
              "logging.getLogger('fontTools.subset').info('glyphs pruned'); "
              "logging.getLogger('fontTools.ttLib').warning('a broken font'); "
              "logging.getLogger('soap.report.render').info('figure written')") % log
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO)
    lines = log.read_text().splitlines()
    assert [line.split(" ", 3)[2:] for line in lines] == [["WARNING", "fontTools.ttLib: a broken font"],
                                                         ["INFO", "soap.report.render: figure written"]]
