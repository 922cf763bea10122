"""The study report (soap.report.build_report): figures, tables and the HTML page.

params: results_dir, figures_dir, tables_dir. Figures and tables are written there whatever outputs the
rule names.
"""

from soap.pipeline import log_to_file
from soap.report import build_report

log_to_file(snakemake.log[0])
build_report(
    results_dir=snakemake.params.results_dir,
    out_html=snakemake.output.html,
    figures_dir=snakemake.params.figures_dir,
    tables_dir=snakemake.params.tables_dir,
)
