"""The NAT / NATv2 search: archive initialisation (iter0), then per iteration i (input: i-1)
surrogate fit + search + candidate subset, evaluation (scattered into shards), archive update,
supernet adaptation and re-evaluation of the archive; then the front and the hypervolume table."""


# --- iteration 0: initial archive -------------------------------------------------------------


rule init_sample:
    input:
        supernet=f"{RESULTS}/{{ds}}/supernet/warmup.pt",
    output:
        f"{RESULTS}/{{ds}}/search/iter0/pool.csv",
    params:
        config=CONFIG,
        fingerprint=fingerprint("init_sample"),
    log:
        "logs/{ds}/search/iter0/init_sample.log",
    benchmark:
        "benchmarks/{ds}/search/iter0/init_sample.tsv"
    threads: threads_for("light")
    resources:
        **resources_for("light"),
    shell:
        "natv2 --threads {threads} init --config {params.config} --supernet {input.supernet} --out {output} > {log} 2>&1"


rule part_costs:
    # every part of the space counted once (params, FLOPs); beside init_sample, on the other core
    input:
        supernet=f"{RESULTS}/{{ds}}/supernet/warmup.pt",
    output:
        PART_COSTS,
    log:
        "logs/{ds}/search/iter0/part_costs.log",
    benchmark:
        "benchmarks/{ds}/search/iter0/part_costs.tsv"
    threads: threads_for("light")
    resources:
        **resources_for("light"),
    shell:
        "natv2 --threads {threads} part-costs --supernet {input.supernet} --out {output} > {log} 2>&1"


rule evaluate_pool:
    input:
        data=SPLIT,
        supernet=f"{RESULTS}/{{ds}}/supernet/warmup.pt",
        genomes=f"{RESULTS}/{{ds}}/search/iter0/pool.csv",
        part_costs=PART_COSTS,
    output:
        f"{RESULTS}/{{ds}}/search/iter0/eval/pool.{{k}}.csv",
    params:
        config=CONFIG,
        fingerprint=fingerprint("evaluate_pool"),
        shards=eval_shards(),
    log:
        "logs/{ds}/search/iter0/evaluate_pool.{k}.log",
    benchmark:
        "benchmarks/{ds}/search/iter0/evaluate_pool.{k}.tsv"
    threads: threads_for("evaluate")
    resources:
        **resources_for("evaluate"),
    shell:
        "natv2 --threads {threads} evaluate --config {params.config} --data {input.data} --supernet {input.supernet}"
        " --genomes {input.genomes} --part-costs {input.part_costs} --shard {wildcards.k} --shards {params.shards}"
        " --out {output} > {log} 2>&1"


rule init_select:
    input:
        supernet=f"{RESULTS}/{{ds}}/supernet/warmup.pt",
        pool=shards(f"{RESULTS}/{{ds}}/search/iter0/eval/pool.{{k}}.csv"),
    output:
        f"{RESULTS}/{{ds}}/search/iter0/archive.csv",
    params:
        config=CONFIG,
        fingerprint=fingerprint("init_select"),
    log:
        "logs/{ds}/search/iter0/init_select.log",
    benchmark:
        "benchmarks/{ds}/search/iter0/init_select.tsv"
    threads: threads_for("light")
    resources:
        **resources_for("light"),
    shell:
        "natv2 --threads {threads} init-select --config {params.config} --supernet {input.supernet} --evaluated {input.pool}"
        " --out {output} > {log} 2>&1"


# --- iterations 1..N ----------------------------------------------------------------------------


rule surrogate_search:
    input:
        archive=previous_archive,
        supernet=supernet_before,
        part_costs=PART_COSTS,
    output:
        candidates=f"{ITER_OUT}/candidates.csv",
        surrogate=f"{ITER_OUT}/surrogate.json",
    params:
        config=CONFIG,
        fingerprint=fingerprint("surrogate_search"),
    log:
        "logs/{ds}/search/iter{i}/surrogate_search.log",
    benchmark:
        "benchmarks/{ds}/search/iter{i}/surrogate_search.tsv"
    threads: threads_for("search")
    resources:
        **resources_for("search"),
    shell:
        "natv2 --threads {threads} search --config {params.config} --archive {input.archive} --supernet {input.supernet}"
        " --part-costs {input.part_costs} --iteration {wildcards.i} --out {output.candidates}"
        " --surrogate-out {output.surrogate} > {log} 2>&1"


rule evaluate_candidates:
    input:
        data=SPLIT,
        supernet=supernet_before,
        genomes=f"{ITER}/candidates.csv",
    output:
        f"{ITER_OUT}/eval/candidates.{{k}}.csv",
    params:
        config=CONFIG,
        fingerprint=fingerprint("evaluate_candidates"),
        shards=eval_shards(),
    log:
        "logs/{ds}/search/iter{i}/evaluate_candidates.{k}.log",
    benchmark:
        "benchmarks/{ds}/search/iter{i}/evaluate_candidates.{k}.tsv"
    threads: threads_for("evaluate")
    resources:
        **resources_for("evaluate"),
    shell:
        "natv2 --threads {threads} evaluate --config {params.config} --data {input.data} --supernet {input.supernet}"
        # candidates.csv records each genome's exact params and MACs (the search's part counts): reused, not counted
        " --genomes {input.genomes} --shard {wildcards.k} --shards {params.shards} --reuse-costs"
        " --out {output} > {log} 2>&1"


rule update:
    input:
        archive=previous_archive,
        candidates=shards(f"{ITER}/eval/candidates.{{k}}.csv"),
        surrogate=f"{ITER}/surrogate.json",
    output:
        archive=f"{ITER_OUT}/archive_pre.csv",
        report=f"{ITER_OUT}/update.json",
    params:
        config=CONFIG,
        fingerprint=fingerprint("update"),
    log:
        "logs/{ds}/search/iter{i}/update.log",
    benchmark:
        "benchmarks/{ds}/search/iter{i}/update.tsv"
    threads: threads_for("light")
    resources:
        **resources_for("light"),
    shell:
        "natv2 --threads {threads} update --config {params.config} --archive {input.archive} --candidates {input.candidates}"
        " --surrogate {input.surrogate} --iteration {wildcards.i}"
        " --out {output.archive} --report {output.report} > {log} 2>&1"


rule adapt:
    input:
        data=SPLIT,
        supernet=supernet_before,
        archive=f"{ITER}/archive_pre.csv",
        # NAT's fixed teacher: the warmed-up supernet's largest subnet, every iteration
        teacher=f"{RESULTS}/{{ds}}/supernet/warmup.pt",
    output:
        maybe_temp(f"{ITER_OUT}/supernet.pt"),
    params:
        config=CONFIG,
        fingerprint=fingerprint("adapt"),
    log:
        "logs/{ds}/search/iter{i}/adapt.log",
    benchmark:
        "benchmarks/{ds}/search/iter{i}/adapt.tsv"
    threads: threads_for("train")
    resources:
        **resources_for("train"),
    shell:
        "natv2 --threads {threads} adapt --config {params.config} --data {input.data} --supernet {input.supernet}"
        " --archive {input.archive} --teacher {input.teacher} --iteration {wildcards.i} --out {output} > {log} 2>&1"


rule reevaluate:
    input:
        data=SPLIT,
        supernet=f"{ITER}/supernet.pt",
        genomes=f"{ITER}/archive_pre.csv",
    output:
        f"{ITER_OUT}/eval/archive.{{k}}.csv",
    params:
        config=CONFIG,
        fingerprint=fingerprint("reevaluate"),
        shards=eval_shards(),
    log:
        "logs/{ds}/search/iter{i}/reevaluate.{k}.log",
    benchmark:
        "benchmarks/{ds}/search/iter{i}/reevaluate.{k}.tsv"
    threads: threads_for("evaluate")
    resources:
        **resources_for("evaluate"),
    shell:
        "natv2 --threads {threads} evaluate --config {params.config} --data {input.data} --supernet {input.supernet}"
        " --genomes {input.genomes} --shard {wildcards.k} --shards {params.shards} --reuse-costs"
        " --out {output} > {log} 2>&1"


rule collect:
    input:
        shards(f"{ITER}/eval/archive.{{k}}.csv"),
    output:
        f"{ITER_OUT}/archive.csv",
    log:
        "logs/{ds}/search/iter{i}/collect.log",
    benchmark:
        "benchmarks/{ds}/search/iter{i}/collect.tsv"
    threads: threads_for("light")
    resources:
        **resources_for("light"),
    shell:
        "natv2 --threads {threads} collect --inputs {input} --out {output} > {log} 2>&1"



# --- after the last iteration -------------------------------------------------------------------


rule hypervolume:
    input:
        archives=all_archives,
        updates=all_updates,
    output:
        f"{RESULTS}/{{ds}}/search/hv.csv",
    params:
        config=CONFIG,
        fingerprint=fingerprint("hypervolume"),
    log:
        "logs/{ds}/search/hypervolume.log",
    benchmark:
        "benchmarks/{ds}/search/hypervolume.tsv"
    threads: threads_for("light")
    resources:
        **resources_for("light"),
    shell:
        "natv2 --threads {threads} hypervolume --config {params.config} --archives {input.archives} --updates {input.updates}"
        " --out {output} > {log} 2>&1"


checkpoint front:
    input:
        final_archive,
    output:
        f"{RESULTS}/{{ds}}/front.csv",
    params:
        config=CONFIG,
        fingerprint=fingerprint("front"),
    log:
        "logs/{ds}/front.log",
    benchmark:
        "benchmarks/{ds}/front.tsv"
    threads: threads_for("light")
    resources:
        **resources_for("light"),
    shell:
        "natv2 --threads {threads} front --config {params.config} --archive {input} --out {output} > {log} 2>&1"
