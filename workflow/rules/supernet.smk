"""The supernet: official OFA weights, or an OFAv2 supernet trained by extended progressive
shrinking (one rule per phase, so a long cluster run resumes between phases), then NAT's
warm-up on the target dataset."""


rule supernet_phase:
    input:
        unpack(phase_inputs),
    output:
        maybe_temp(f"{RESULTS}/{{ds}}/supernet/phases/{{phase}}.pt"),
    params:
        config=CONFIG,
        fingerprint=fingerprint("supernet_phase"),
        init=init_option,
    log:
        "logs/{ds}/supernet/{phase}.log",
    benchmark:
        "benchmarks/{ds}/supernet/{phase}.tsv"
    threads: threads_for("train")
    resources:
        **resources_for("train"),
    shell:
        "natv2 --threads {threads} supernet --config {params.config} --data {input.data} --phase {wildcards.phase} {params.init}"
        " --state-dir $(dirname {output})/.resume --no-progress --out {output} > {log} 2>&1"


rule supernet_source:
    input:
        unpack(source_inputs),
    output:
        f"{RESULTS}/{{ds}}/supernet/source.pt",
    params:
        config=CONFIG,
        fingerprint=fingerprint("supernet_source"),
        phases=phases_dir_option,
    log:
        "logs/{ds}/supernet/source.log",
    benchmark:
        "benchmarks/{ds}/supernet/source.tsv"
    threads: threads_for("light")
    resources:
        **resources_for("light"),
    shell:
        "natv2 --threads {threads} supernet --config {params.config} --data {input.data} {params.phases} --no-progress"
        " --out {output} > {log} 2>&1"


rule warmup:
    input:
        data=f"{RESULTS}/{{ds}}/data/split.json",
        supernet=f"{RESULTS}/{{ds}}/supernet/source.pt",
    output:
        f"{RESULTS}/{{ds}}/supernet/warmup.pt",
    params:
        config=CONFIG,
        fingerprint=fingerprint("warmup"),
    log:
        "logs/{ds}/supernet/warmup.log",
    benchmark:
        "benchmarks/{ds}/supernet/warmup.tsv"
    threads: threads_for("train")
    resources:
        **resources_for("train"),
    shell:
        "natv2 --threads {threads} warmup --config {params.config} --data {input.data} --supernet {input.supernet}"
        " --state-dir $(dirname {output})/.resume --no-progress --out {output} > {log} 2>&1"
