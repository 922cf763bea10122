"""The verdict table of issue 10 (soap.analysis.verdict) and its figures (soap.plots.verdict), from
the main and the intervention runs tables."""

import json
from pathlib import Path

import pandas as pd

from soap.analysis.verdict import verdict_table
from soap.plots.verdict import write_figures
from soap.pipeline import log_to_file
from soap.tables import write_table, write_text

log_to_file(snakemake.log[0])
runs = pd.concat([pd.read_parquet(snakemake.input.main), pd.read_parquet(snakemake.input.interventions)],
                 ignore_index=True)
margins = dict(snakemake.params.margins)
table = verdict_table(runs, margins, seed=int(snakemake.params.seed), n_boot=int(snakemake.params.n_boot))
out = Path(snakemake.output.table).parent
write_figures(runs, table, margins, out)
write_text(json.dumps({"margins": margins, "rows": len(table)}, indent=2) + "\n", out / "verdict.json")
write_table(table, snakemake.output.table)
