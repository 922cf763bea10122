# Phase 1 of every arm ({arm}: "" for the main study, "interventions/{optimizer}/" for an optimizer arm,
# which tunes its own methods over its own lr range in studies of its own).


rule tune_study:
    input:
        data=prepared_data,
    output:
        best="results/{arm}tune/{dataset}/{method}/r{repeat}/best.json",
        trials="results/{arm}tune/{dataset}/{method}/r{repeat}/trials.csv",
    log:
        "logs/{arm}tune/{dataset}/{method}/r{repeat}.log",
    params:
        train=arm_train,
        tune=tune_settings,
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
        lrs="results/{arm}tune/{dataset}/tuned_lrs.json",
    log:
        "logs/{arm}tune/{dataset}/tuned_lrs.log",
    params:
        methods=arm_methods,
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
