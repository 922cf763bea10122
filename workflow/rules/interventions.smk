# Issue 10's intervention arms (soap.interventions); only asked for when config["interventions"] switches
# one on. Their runs form results/interventions/runs.parquet beside the main (sgd) runs table. The
# optimizer arms (tune -> grid -> tuned under momentum, adam or signsgd) are the main study's own rules,
# tune.smk and train.smk, in results/interventions/{optimizer}/ (the {arm} wildcard).


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


# bp_matched's per-layer lr multipliers: sign's per-layer gains on the main grid, per (seed, lr).
rule matched_lrs:
    input:
        runs=grid_runs_of,
    output:
        scales="results/interventions/{dataset}/matched_lrs.csv",
    log:
        "logs/interventions/matched_lrs/{dataset}.log",
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/soap.yaml"
    script:
        "../scripts/matched_lrs.py"


rule train_matched:
    input:
        data=prepared_data,
        matched="results/interventions/{dataset}/matched_lrs.csv",
    output:
        runs="results/interventions/train/matched/{dataset}/chunk{chunk}/runs.parquet",
        curves="results/interventions/train/matched/{dataset}/chunk{chunk}/curves.parquet",
        meta="results/interventions/train/matched/{dataset}/chunk{chunk}/meta.json",
    log:
        "logs/interventions/matched/{dataset}/chunk{chunk}.log",
    params:
        train=config["train"],
        seeds=iv_seeds,
        phase="matched",
    threads: THREADS
    resources:
        gpu=GPU_PER_JOB,
        mem_mb=8000,
        runtime=240,
    conda:
        "../envs/soap.yaml"
    script:
        "../scripts/train_matched.py"


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
        table="results/interventions/verdict/verdict.csv",
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
        margins=config["analysis"]["equivalence_margin"],
        seed=config["analysis"]["seed"],
        n_boot=config["analysis"]["n_boot"],
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/soap.yaml"
    script:
        "../scripts/verdict.py"
