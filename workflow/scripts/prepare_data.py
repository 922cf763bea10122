"""Load, verify and split one dataset once; every training job then reads the prepared file."""

import os

from soap.data import prepare_dataset
from soap.pipeline import log_to_file

log_to_file(snakemake.log[0])
prepare_dataset(
    snakemake.wildcards.dataset,
    os.environ.get("SOAP_DATA_ROOT") or snakemake.params.root,  # machines without internet keep MNIST elsewhere
    snakemake.output.data,
    download=snakemake.params.download,
    val_size=snakemake.params.val_size,
    split_seed=snakemake.params.split_seed,
)
