"""bp_matched's per-layer lr multipliers from sign's grid runs (soap.interventions.matched_lr_scales)."""

import pandas as pd

from soap.interventions import matched_lr_scales
from soap.pipeline import log_to_file
from soap.tables import write_table

log_to_file(snakemake.log[0])
runs = pd.concat([pd.read_parquet(p) for p in snakemake.input.runs], ignore_index=True)
scales = matched_lr_scales(runs)
write_table(scales, snakemake.output.scales)
