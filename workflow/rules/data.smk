rule prepare_data:
    output:
        data="results/data/{dataset}.pt",
    log:
        "logs/data/{dataset}.log",
    params:
        root=config["data"]["root"],
        download=config["data"]["download"],
        val_size=config["train"]["val_size"],
        split_seed=config["train"]["split_seed"],
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/soap.yaml"
    script:
        "../scripts/prepare_data.py"
