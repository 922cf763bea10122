"""Load, verify and split one dataset once; every training job then reads the prepared file."""

from soap.config import data_root
from soap.data import prepare_dataset
from soap.pipeline import log_to_file

log_to_file(snakemake.log[0])
prepare_dataset(
    snakemake.wildcards.dataset,
    data_root(snakemake.params.root),  # $SOAP_DATA_ROOT, when set, wins
    snakemake.output.data,
    download=snakemake.params.download,
    val_size=snakemake.params.val_size,
    split_seed=snakemake.params.split_seed,
)
