"""A method's tuned learning rate from its repeats' best.json (soap.tuning.aggregate_repeats)."""

import json
from pathlib import Path

from soap.pipeline import log_to_file
from soap.tables import write_text
from soap.tuning import tuned_lrs

log_to_file(snakemake.log[0])
# Paths are results/tune/{dataset}/{method}/r{repeat}/best.json.
# Each method's repeats in repeat order: tuned seed s trains at repeat s mod R's lr (tuned.lr_source).
by_method = {m: sorted((p for p in snakemake.input.best if Path(p).parts[-3] == m), key=lambda p: int(Path(p).parts[-2][1:]))
             for m in snakemake.params.methods}
lrs = tuned_lrs(by_method, snakemake.params.aggregate)
write_text(json.dumps(lrs, indent=2) + "\n", snakemake.output.lrs)
