rule tune_study:
    input:
        data=prepared_data,
    output:
        best="results/tune/{dataset}/{method}/r{repeat}/best.json",
        trials="results/tune/{dataset}/{method}/r{repeat}/trials.csv",
    log:
        "logs/tune/{dataset}/{method}/r{repeat}.log",
    params:
        train=config["train"],
        tune=tune_settings(),
    threads: THREADS
    resources:
        gpu=GPU_PER_JOB,
        mem_mb=4000,
        runtime=120,
    conda:
        "../envs/soap.yaml"
    script:
        "../scripts/tune.py"


rule tuned_lrs:
    input:
        best=tune_bests,
    output:
        lrs="results/tune/{dataset}/tuned_lrs.json",
    log:
        "logs/tune/{dataset}/tuned_lrs.log",
    params:
        methods=METHODS,
        aggregate=config["tune"]["aggregate"],
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/soap.yaml"
    script:
        "../scripts/tuned_lrs.py"


# Phase 1 alone: `snakemake --cores N tune_all`. One study: `snakemake results/tune/mnist/sign/r0/best.json`.
rule tune_all:
    input:
        tuned_lr_files(),
