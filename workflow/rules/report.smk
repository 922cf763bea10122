# Each figure is a tracked output with its own caption, named by its caption file (report_figures()).


rule report:
    input:
        runs="results/runs.parquet",
        curves="results/curves.parquet",
        provenance="results/provenance.json",
        # every number and table the report shows, the tuning trials included (soap.analysis.outputs)
        analysis="results/analysis",
        # the interventions' verdict table and figures, when any arm is on
        verdict=intervention_targets()[1:],
    output:
        html=report("results/report.html", category="Report"),
        **{
            stem: report(
                f"results/figures/{stem}.png",
                caption=f"../report/{caption}",
                category="Figures",
            )
            for stem, caption in report_figures().items()
        },
    log:
        "logs/report.log",
    params:
        results_dir=lambda wildcards, input: Path(input.runs).parent,
        figures_dir=lambda wildcards, output: Path(output.html).parent / "figures",
        tables_dir=lambda wildcards, output: Path(output.html).parent / "tables",
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/soap.yaml"
    script:
        "../scripts/report.py"
