"""Statistical analysis of a runs table: the estimands of STUDY.md with intervals and Holm-adjusted p-values.

One module per estimator; `core.analyze` orchestrates them and `outputs.run_analysis` writes the files.
The package itself imports nothing, so its modules can import each other without a cycle through it.
"""
