# Phase 1 of every arm ({arm}: "" for the main study, "interventions/{optimizer}/" for an optimizer arm,
# which tunes its own methods over its own lr range in studies of its own).


# One job per (arm, dataset, method) holds all its repeats' studies: each round their batches train as
# one population (soap.tuning.run_studies), so the job's start-up (Python, torch, the prepared data) is
# paid once instead of once per repeat, and the trainer runs R batches at once instead of R tiny
# populations. Every repeat's trials are those a job of its own would ask and record.
# Priority 1 (tune_study, tuned_lrs, train_tuned): the tuned phase waits on every study, so tuning goes
# first and the grid's jobs fill the cores at the end; run last, a tuned job ran alone on one of two
# cores for 97 s of a measured default study.
rule tune_study:
    input:
        data=prepared_data,
    output:
        best=expand("results/{{arm}}tune/{{dataset}}/{{method}}/r{repeat}/best.json", repeat=REPEATS),
        trials=expand("results/{{arm}}tune/{{dataset}}/{{method}}/r{repeat}/trials.csv", repeat=REPEATS),
    log:
        "logs/{arm}tune/{dataset}/{method}.log",
    params:
        train=arm_train,
        tune=tune_settings,
        repeats=REPEATS,
    priority: 1
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
    priority: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/soap.yaml"
    script:
        "../scripts/tuned_lrs.py"


# Phase 1 alone: `snakemake --cores N tune_all`. One method's studies (every repeat):
# `snakemake results/tune/mnist/sign/r0/best.json`.
rule tune_all:
    input:
        tuned_lr_files(),
