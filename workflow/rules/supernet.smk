"""The supernet: official OFA weights, or an OFAv2 supernet trained by extended progressive
shrinking (one rule per phase, so a long cluster run resumes between phases), then NAT's
warm-up on the target dataset."""


def supernet_phases() -> list[str]:
    """The shrinking phases that apply to the configured supernet variant, in order."""
    from natv2.shrinking import phases_for
    from natv2.space import SearchSpace

    return phases_for(SearchSpace.from_config(SETTINGS.supernet))


def source_dataset(ds: str) -> str:
    """Dataset the supernet is trained on: supernet_train.dataset, or the target itself.

    Several targets sharing one source dataset share its trained phases (results/{src}/supernet/phases).
    """
    return SETTINGS.supernet_train.dataset or ds


def official_source() -> bool:
    return SETTINGS.supernet_train.source == "official"


def phase_inputs(wildcards) -> dict:
    phases = supernet_phases()
    if wildcards.phase not in phases:
        raise WorkflowError(
            f"supernet phase {wildcards.phase!r} does not apply to variant "
            f"{SETTINGS.supernet.variant!r} (phases: {', '.join(phases)})"
        )
    inputs = {"data": f"{RESULTS}/{wildcards.ds}/data/split.json"}
    k = phases.index(wildcards.phase)
    if k > 0:
        inputs["init"] = f"{RESULTS}/{wildcards.ds}/supernet/phases/{phases[k - 1]}.pt"
    return inputs


def init_option(wildcards, input) -> str:
    return f"--init {input.init}" if "init" in input.keys() else ""


def source_inputs(wildcards) -> dict:
    inputs = {"data": f"{RESULTS}/{wildcards.ds}/data/split.json"}
    if not official_source():
        src = source_dataset(wildcards.ds)
        inputs["phases"] = [f"{RESULTS}/{src}/supernet/phases/{p}.pt" for p in supernet_phases()]
    return inputs


def phases_dir_option(wildcards) -> str:
    if official_source():
        return ""
    return f"--work-dir {RESULTS}/{source_dataset(wildcards.ds)}/supernet/phases"


SUPERNET_KEYS = ("seed", "supernet", "supernet_train", "evaluation", "data", "datasets.{ds}")


rule supernet_phase:
    input:
        unpack(phase_inputs),
    output:
        maybe_temp(f"{RESULTS}/{{ds}}/supernet/phases/{{phase}}.pt"),
    params:
        fingerprint=fingerprint(*SUPERNET_KEYS),
        init=init_option,
    log:
        "logs/{ds}/supernet/{phase}.log",
    benchmark:
        "benchmarks/{ds}/supernet/{phase}.tsv"
    threads: threads_for("train")
    resources:
        **resources_for("train"),
    shell:
        NATV2 + "supernet --config {CONFIG} --data {input.data} --phase {wildcards.phase} {params.init}"
        " --state-dir {RESULTS}/{wildcards.ds}/supernet/.resume --no-progress --out {output} > {log} 2>&1"


rule supernet_source:
    input:
        unpack(source_inputs),
    output:
        f"{RESULTS}/{{ds}}/supernet/source.pt",
    params:
        fingerprint=fingerprint(*SUPERNET_KEYS),
        phases=phases_dir_option,
    log:
        "logs/{ds}/supernet/source.log",
    benchmark:
        "benchmarks/{ds}/supernet/source.tsv"
    threads: threads_for("light")
    resources:
        **resources_for("light"),
    shell:
        NATV2 + "supernet --config {CONFIG} --data {input.data} {params.phases} --no-progress"
        " --out {output} > {log} 2>&1"


rule warmup:
    input:
        data=f"{RESULTS}/{{ds}}/data/split.json",
        supernet=f"{RESULTS}/{{ds}}/supernet/source.pt",
    output:
        f"{RESULTS}/{{ds}}/supernet/warmup.pt",
    params:
        fingerprint=fingerprint(*SUPERNET_KEYS, "warmup"),
    log:
        "logs/{ds}/supernet/warmup.log",
    benchmark:
        "benchmarks/{ds}/supernet/warmup.tsv"
    threads: threads_for("train")
    resources:
        **resources_for("train"),
    shell:
        NATV2 + "warmup --config {CONFIG} --data {input.data} --supernet {input.supernet}"
        " --state-dir {RESULTS}/{wildcards.ds}/supernet/.resume --no-progress --out {output} > {log} 2>&1"
