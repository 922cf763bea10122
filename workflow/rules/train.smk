# One job trains a whole population (all methods x lrs on a chunk of seeds), not one tiny job per run.
# Resources: mem_mb and runtime (minutes) are what a SLURM job asks for (workflow/profiles/slurm), sized
# for config.yaml with room to spare; a bigger study raises them there with set-resources.
# {arm}: "" for the main study, "interventions/{optimizer}/" for an optimizer arm (common.smk, ARMS).


rule train_grid:
    input:
        data=prepared_data,
    output:
        runs="results/{arm}train/grid/{dataset}/chunk{chunk}/runs.parquet",
        curves="results/{arm}train/grid/{dataset}/chunk{chunk}/curves.parquet",
        meta="results/{arm}train/grid/{dataset}/chunk{chunk}/meta.json",
    log:
        "logs/{arm}train/grid/{dataset}/chunk{chunk}.log",
    params:
        train=arm_train,
        members=grid_members,
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


rule train_tuned:
    input:
        data=prepared_data,
        lrs="results/{arm}tune/{dataset}/tuned_lrs.json",
    output:
        runs="results/{arm}train/tuned/{dataset}/chunk{chunk}/runs.parquet",
        curves="results/{arm}train/tuned/{dataset}/chunk{chunk}/curves.parquet",
        meta="results/{arm}train/tuned/{dataset}/chunk{chunk}/meta.json",
    log:
        "logs/{arm}train/tuned/{dataset}/chunk{chunk}.log",
    params:
        train=arm_train,
        methods=arm_methods,
        seeds=tuned_seeds,
        epochs=config["tuned"]["epochs"],
        phase="tuned",
        lr_source=config["tuned"]["lr_source"],
    priority: 1
    threads: THREADS
    resources:
        gpu=GPU_PER_JOB,
        mem_mb=8000,
        runtime=240,
    conda:
        "../envs/soap.yaml"
    script:
        "../scripts/train_tuned.py"


rule gather_runs:
    input:
        runs=population_outputs("runs.parquet"),
        curves=population_outputs("curves.parquet"),
        meta=population_outputs("meta.json"),
    output:
        runs="results/runs.parquet",
        curves="results/curves.parquet",
        provenance="results/provenance.json",
    log:
        "logs/gather_runs.log",
    params:
        target=config["target"]["loss"],
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../envs/soap.yaml"
    script:
        "../scripts/gather.py"
