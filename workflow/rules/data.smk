"""Data: the deterministic train/val/test split and the uint8 tensor cache every step reads."""


rule split:
    output:
        split=f"{RESULTS}/{{ds}}/data/split.json",
        cache=f"{RESULTS}/{{ds}}/data/images.pt",
    params:
        config=CONFIG,
        fingerprint=fingerprint("split", content=data_content),
    log:
        "logs/{ds}/split.log",
    benchmark:
        "benchmarks/{ds}/split.tsv"
    threads: threads_for("data")
    resources:
        **resources_for("data"),
    shell:
        "natv2 --threads {threads} split --config {params.config} --dataset {wildcards.ds} --workers {threads} --out $(dirname {output.split}) > {log} 2>&1"
