"""The verdict (soap.verdict_files.write_verdict: the primary test, the verdict, descriptive and
decomposition tables, the answer) and its figures (soap.plots.verdict), from the main and the intervention
runs tables. params.study: the config keys the verdict reads; the decomposition also goes to
output.tables_decomposition (results/tables/decomposition.csv)."""

from pathlib import Path

import pandas as pd

from soap.pipeline import log_to_file
from soap.plots.verdict import write_figures
from soap.tables import write_table
from soap.verdict_files import write_verdict

log_to_file(snakemake.log[0])
runs = pd.concat([pd.read_parquet(snakemake.input.main), pd.read_parquet(snakemake.input.interventions)],
                 ignore_index=True)
study = snakemake.params.study
out = Path(snakemake.output.verdict).parent
result = write_verdict(runs, study, out, source=f"{snakemake.input.main} + {snakemake.input.interventions}")
write_table(result.decomposition, snakemake.output.tables_decomposition)
write_figures(runs, result, out)
