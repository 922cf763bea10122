"""A method's tuned learning rate from its repeats' best.json (soap.tuning.aggregate_repeats)."""

import json
from pathlib import Path

from soap.pipeline import log_to_file
from soap.tables import write_text
from soap.tuning import tuned_lrs

log_to_file(snakemake.log[0])
# Paths are results/tune/{dataset}/{method}/r{repeat}/best.json.
by_method = {m: [p for p in snakemake.input.best if Path(p).parts[-3] == m] for m in snakemake.params.methods}
lrs = tuned_lrs(by_method, snakemake.params.aggregate)
write_text(json.dumps(lrs, indent=2) + "\n", snakemake.output.lrs)
