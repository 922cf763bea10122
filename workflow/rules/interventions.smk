# The intervention arms of issues 10 and 19 (soap.interventions); only asked for when config["interventions"]
# switches one on (the default study's factorial included). Their runs form results/interventions/runs.parquet beside the main (sgd) runs table. The
# optimizer arms (tune -> grid -> tuned under momentum, adam or signsgd) are the main study's own rules,
# tune.smk and train.smk, in results/interventions/{optimizer}/ (the {arm} wildcard).


# The factorial's crossed cells bp@r and r@bp: ordinary grid members with a step_rule (phase "grid"); its
# bp and r cells are the main grid's runs at the same seeds.
rule train_factorial:
    input:
        data=prepared_data,
    output:
        runs="results/interventions/train/factorial/{dataset}/chunk{chunk}/runs.parquet",
        curves="results/interventions/train/factorial/{dataset}/chunk{chunk}/curves.parquet",
        meta="results/interventions/train/factorial/{dataset}/chunk{chunk}/meta.json",
    log:
        "logs/interventions/factorial/{dataset}/chunk{chunk}.log",
    params:
        train=config["train"],
        members=factorial_members,
        phase="grid",
    threads: THREADS
    resources:
        gpu=GPU_PER_JOB,
        mem_mb=8000,
        runtime=240,
    conda:
        "../envs/soap.yaml"
    script:
        "../scripts/train.py"


rule train_dose:
    input:
        data=prepared_data,
    output:
        runs="results/interventions/train/dose/{dataset}/chunk{chunk}/runs.parquet",
        curves="results/interventions/train/dose/{dataset}/chunk{chunk}/curves.parquet",
        meta="results/interventions/train/dose/{dataset}/chunk{chunk}/meta.json",
    log:
        "logs/interventions/dose/{dataset}/chunk{chunk}.log",
    params:
        train=config["train"],
        members=dose_members,
        phase="grid",
    threads: THREADS
    resources:
        gpu=GPU_PER_JOB,
        mem_mb=8000,
        runtime=240,
    conda:
        "../envs/soap.yaml"
    script:
        "../scripts/train.py"


# The interventions' runs table; time to target uses the main study's target loss per dataset.
rule gather_interventions:
    input:
        runs=intervention_outputs("runs.parquet"),
        curves=intervention_outputs("curves.parquet"),
        meta=intervention_outputs("meta.json"),
        main="results/runs.parquet",
    output:
        runs="results/interventions/runs.parquet",
        curves="results/interventions/curves.parquet",
        provenance="results/interventions/provenance.json",
    log:
        "logs/interventions/gather.log",
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../envs/soap.yaml"
    script:
        "../scripts/gather_interventions.py"


rule verdict:
    input:
        main="results/runs.parquet",
        interventions="results/interventions/runs.parquet",
    output:
        **VERDICT_TABLES,
        tables_decomposition="results/tables/decomposition.csv",  # issue 19's path for the table
        **{
            stem: report(
                f"results/interventions/verdict/{stem}.png",
                caption=f"../report/{caption}",
                category="Interventions",
            )
            for stem, caption in verdict_figures().items()
        },
    log:
        "logs/interventions/verdict.log",
    params:
        # the keys soap.verdict_files.write_verdict reads: a change there reruns the verdict
        study={
            "analysis": {
                key: config["analysis"][key] for key in ("primary", "equivalence_margin", "seed", "n_boot")
            },
            "interventions": {"factorial": IV["factorial"]},
            "datasets": DATASETS,
        },
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/soap.yaml"
    script:
        "../scripts/verdict.py"
