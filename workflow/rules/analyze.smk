rule analyze:
    input:
        runs="results/runs.parquet",
        curves="results/curves.parquet",  # the time-to-target ratio at other target losses
    output:
        # estimates.csv, summary.json, models.txt, km.csv (soap.analysis.run_analysis)
        analysis=directory("results/analysis"),
    log:
        "logs/analyze.log",
    params:
        fixed_lr=config["analysis"]["fixed_lr"],
        n_boot=config["analysis"]["n_boot"],
        seed=config["analysis"]["seed"],
        mediation_design=config["analysis"]["mediation_design"],
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        "../envs/soap.yaml"
    script:
        "../scripts/analyze.py"
