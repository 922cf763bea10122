rule analyze:
    input:
        runs="results/runs.parquet",
    output:
        estimates=report("results/analysis/estimates.csv", category="Estimates"),
        summary="results/analysis/summary.json",
        models="results/analysis/models.txt",
        km="results/analysis/km.csv",
    log:
        "logs/analyze.log",
    params:
        out_dir="results/analysis",
        fixed_lr=config["analysis"]["fixed_lr"],
        n_boot=config["analysis"]["n_boot"],
        seed=config["analysis"]["seed"],
    conda:
        "../envs/soap.yaml"
    script:
        "../scripts/analyze.py"
