"""The verdict's files (issue 19): the primary test, the verdict, descriptive and decomposition tables
and the answer (soap.analysis.verdict.study_verdict) written into one directory, for `soap verdict` and
the workflow's verdict rule alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from soap.tables import write_table, write_text

if TYPE_CHECKING:  # the workflow reads VERDICT_FILES when it parses: no statsmodels import for that
    import pandas as pd

    from soap.analysis.verdict import Verdict

# file name -> Verdict field; answer.json is the answer dict
VERDICT_FILES = {"verdict.csv": "verdict", "descriptive.csv": "descriptive", "decomposition.csv": "decomposition",
                 "answer.json": "answer"}


def write_verdict(runs: pd.DataFrame, cfg: dict, out_dir: str | Path, source: str = "RUNS") -> Verdict:
    """study_verdict of `runs` (main and intervention runs concatenated) under the study config `cfg`
    (analysis.primary, analysis.equivalence_margin, interventions.factorial), each table written
    atomically into out_dir (VERDICT_FILES). AnalysisError names a factorial cell `source` lacks."""
    from soap.analysis.verdict import study_verdict

    analysis = cfg["analysis"]
    result = study_verdict(runs, analysis["primary"], analysis["equivalence_margin"],
                           cfg["interventions"]["factorial"], datasets=cfg.get("datasets"), source=source,
                           seed=analysis["seed"], n_boot=analysis["n_boot"])
    out = Path(out_dir)
    for name, field in VERDICT_FILES.items():
        value = getattr(result, field)
        if isinstance(value, dict):
            write_text(json.dumps(value, indent=2) + "\n", out / name)
        else:
            write_table(value, out / name)
    return result
