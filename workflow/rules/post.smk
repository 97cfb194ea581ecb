"""Post-processing: one fine-tune job per front member (after the `front` checkpoint), the
pareto.csv deliverable, OFA3 ensembles and the report (plots + metrics.json)."""

from natv2.front import finetune_priority

rule finetune:
    input:
        data=SPLIT,
        supernet=final_supernet,
        front=f"{RESULTS}/{{ds}}/front.csv",
    output:
        metrics=f"{NET}/metrics.json",
        weights=f"{NET}/weights.pt",
        config=f"{NET}/config.json",
        torchscript=f"{NET}/model.ts",
        onnx=f"{NET}/model.onnx",
    params:
        config=CONFIG,
        fingerprint=fingerprint("finetune"),
    log:
        "logs/{ds}/nets/{id}/finetune.log",
    benchmark:
        "benchmarks/{ds}/nets/{id}/finetune.tsv"
    threads: threads_for("finetune")
    resources:
        **resources_for("finetune"),
    # the costliest member first (natv2.front.finetune_priority): no core idles at the end
    priority: lambda wildcards, input: finetune_priority(input.front, wildcards.id)
    shell:
        "natv2 --threads {threads} finetune --config {params.config} --data {input.data} --supernet {input.supernet}"
        " --front {input.front} --id {wildcards.id} --out $(dirname {output.metrics}) > {log} 2>&1"


rule pareto:
    input:
        front=f"{RESULTS}/{{ds}}/front.csv",
        nets=member_metrics,
    output:
        report(
            f"{RESULTS}/{{ds}}/pareto.csv",
            caption="../report/pareto.rst",
            category="Front",
        ),
    log:
        "logs/{ds}/pareto.log",
    benchmark:
        "benchmarks/{ds}/pareto.tsv"
    threads: threads_for("light")
    resources:
        **resources_for("light"),
    shell:
        "natv2 --threads {threads} pareto --front {input.front} --nets {input.nets} --out {output} > {log} 2>&1"


rule ensembles:
    input:
        data=SPLIT,
        pareto=f"{RESULTS}/{{ds}}/pareto.csv",
    output:
        table=f"{RESULTS}/{{ds}}/ensembles.csv",
        nets=directory(f"{RESULTS}/{{ds}}/ensembles"),
    params:
        config=CONFIG,
        fingerprint=fingerprint("ensembles"),
    log:
        "logs/{ds}/ensembles.log",
    benchmark:
        "benchmarks/{ds}/ensembles.tsv"
    threads: threads_for("evaluate")
    resources:
        **resources_for("evaluate"),
    shell:
        "natv2 --threads {threads} ensembles --config {params.config} --data {input.data} --pareto {input.pareto}"
        " --export-dir {output.nets} --out {output.table} > {log} 2>&1"


rule report:
    input:
        pareto=f"{RESULTS}/{{ds}}/pareto.csv",
        ensembles=f"{RESULTS}/{{ds}}/ensembles.csv",
        hv=f"{RESULTS}/{{ds}}/search/hv.csv",
        archives=all_archives,
    output:
        metrics=f"{RESULTS}/{{ds}}/report/metrics.json",
        front=report(f"{RESULTS}/{{ds}}/report/front.png", caption="../report/front.rst", category="Front"),
        ensembles=report(
            f"{RESULTS}/{{ds}}/report/ensembles.png", caption="../report/ensembles.rst", category="Front"
        ),
        hv=report(f"{RESULTS}/{{ds}}/report/hypervolume.png", caption="../report/hypervolume.rst", category="Search"),
        tau=report(f"{RESULTS}/{{ds}}/report/surrogate_tau.png", caption="../report/tau.rst", category="Search"),
    log:
        "logs/{ds}/report.log",
    benchmark:
        "benchmarks/{ds}/report.tsv"
    threads: threads_for("light")
    resources:
        **resources_for("light"),
    shell:
        "natv2 --threads {threads} report --pareto {input.pareto} --ensembles {input.ensembles} --hv {input.hv}"
        " --archives {input.archives} --benchmarks benchmarks/{wildcards.ds} --out $(dirname {output.metrics}) > {log} 2>&1"
