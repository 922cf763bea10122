"""soap.tuning.cli: `soap tune` over layered config files, and the tuning modules' one-way imports
(the launcher of `--workers N` lives here, so study and workers never import each other's caller)."""

import ast
import json
from pathlib import Path

from soap.tuning.cli import add_tune_arguments, run_tune_command

TUNING = Path(__file__).resolve().parents[1] / "soap" / "tuning"


def test_soap_tune_command_tunes_one_method(tmp_path):
    import argparse

    import yaml

    base, override = tmp_path / "config.yaml", tmp_path / "small.yaml"
    base.write_text(yaml.safe_dump({"train": {"hidden": [16], "epochs": 0.25, "eval_subset": 256},
                                    "tune": {"n_trials": 8, "batch": 4, "epochs": 0.25}, "gpus": 0}))
    override.write_text(yaml.safe_dump({"tune": {"n_trials": 3}}))  # overrides key by key
    parser = argparse.ArgumentParser()
    add_tune_arguments(parser)
    args = parser.parse_args(["--method", "sign", "--dataset", "synthetic", "--config", str(base),
                              "--config", str(override), "--out", str(tmp_path / "out"), "--quiet"])
    summary = run_tune_command(args)
    assert summary["n_trials"] == 3
    assert json.loads((tmp_path / "out" / "best.json").read_text()) == summary


def _imports(module: Path) -> set[str]:
    """Every module an import statement in `module` names, those inside functions included."""
    names = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_tuning_modules_import_one_way_cli_study_workers_errors():
    order = ["cli", "study", "workers", "errors"]  # each may import only those after it
    for i, name in enumerate(order):
        tuning_imports = {m for m in _imports(TUNING / f"{name}.py") if m.startswith("soap.tuning")}
        allowed = {f"soap.tuning.{later}" for later in order[i + 1:]}
        above = {m for m in tuning_imports if not any(m == a or m.startswith(a + ".") for a in allowed)}
        assert not above, f"soap/tuning/{name}.py imports {sorted(above)}"
    assert not any(m.startswith("soap.pipeline") for m in _imports(TUNING / "study.py"))
