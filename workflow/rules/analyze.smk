rule analyze:
    input:
        runs="results/runs.parquet",
        curves="results/curves.parquet",  # the time-to-target ratio at other target losses
        # the tuning-budget curves (tuning_budget.csv) and the trials the report shows: declared, so a
        # changed study reruns the analysis and the report
        trials=tune_outputs("trials.csv"),
        best=tune_outputs("best.json"),
    output:
        # estimates.csv, summary.json, models.txt, km.csv and the report's tables (soap.analysis.run_analysis)
        analysis=directory("results/analysis"),
    log:
        "logs/analyze.log",
    params:
        fixed_lr=config["analysis"]["fixed_lr"],
        n_boot=config["analysis"]["n_boot"],
        seed=config["analysis"]["seed"],
        mediation_design=config["analysis"]["mediation_design"],
        # results/tune: above {dataset}/{method}/r{repeat}/best.json
        tune_dir=lambda wildcards, input: Path(input.best[0]).parents[3],
        tune_batch=config["tune"]["batch"],
        lr_range=(config["tune"]["lr_low"], config["tune"]["lr_high"]),
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        "../envs/soap.yaml"
    script:
        "../scripts/analyze.py"
