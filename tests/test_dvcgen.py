"""natv2.dvcgen without a DAG: the step of a command line, stage outs and deps, the fingerprint table."""
from __future__ import annotations

import re
from pathlib import Path

from natv2.dvcgen import add_dataset_roots, build_stages, step_of, workflow_files
from natv2.fingerprints import RULE_KEYS

REPO = Path(__file__).resolve().parents[1]


def test_step_of_reads_the_command_as_the_cli_does():
    cmd = ("natv2 --threads 2 init-select --config .snakemake/natv2/c.yaml --supernet s.pt --evaluated a.csv b.csv"
           " --out $(dirname results/x/search/iter0/archive.csv) > logs/x.log 2>&1")
    assert step_of(cmd) == "init"  # init-select is a command of natv2/steps/init.py
    assert step_of("natv2 collect --inputs a.csv b.csv --out c.csv > log 2>&1") == "collect"
    assert step_of("/opt/venv/bin/natv2 front --config c.yaml --archive a.csv --out f.csv") == "front"
    assert step_of("cp a b") is None and step_of(None) is None


def _job(rule, outputs, inputs=(), step=None, params=(), **extra):
    return dict(rule=rule, step=step, inputs=list(inputs), outputs=list(outputs), params=list(params), **extra)


def test_stages_own_their_phase_and_depend_on_the_workflow_definition(monkeypatch):
    monkeypatch.chdir(REPO)
    jobs = [
        _job("front", ["results/d/front.csv"], ["results/d/search/iter1/archive.csv"], params=["seed"]),
        _job("finetune", [f"results/d/nets/0/{f}" for f in ("metrics.json", "weights.pt")],
             ["results/d/front.csv"], params=["finetune"], placeholder=True),
        _job("pareto", ["results/d/pareto.csv"], ["results/d/front.csv"]),
    ]
    stages = build_stages(jobs, "results", "params.yaml")
    finetune = stages["d-finetune"]
    # the placeholder member stands for all: the stage owns nets/ (and no resume state lives there)
    assert finetune.outs == ["results/d/nets", "results/d/pareto.csv"]
    assert finetune.targets == ["results/d/pareto.csv"]
    assert "results/d/front.csv" in finetune.deps and finetune.params == {"finetune"}
    files = set(workflow_files())
    assert {"Snakefile", "workflow/schemas/config.schema.yaml", "workflow/rules/common.smk", "workflow/rules/post.smk"} <= files
    for stage in stages.values():
        assert files <= stage.deps, stage.name


def test_every_fingerprint_names_its_own_rule_and_the_table_lists_them_all():
    named = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        rule = None
        for line in smk.read_text().splitlines():
            m = re.match(r"^(?:rule|checkpoint) (\w+):", line)
            rule = m.group(1) if m else rule
            m = re.search(r"fingerprint=fingerprint\(\"(\w+)\"", line)
            if m:
                named[rule] = m.group(1)
    assert named and all(rule == key for rule, key in named.items()), named
    assert set(named) == set(RULE_KEYS)


def test_an_imagefolder_dataset_folder_is_a_dep_of_its_data_stage(monkeypatch):
    monkeypatch.chdir(REPO)
    jobs = [_job("split", [f"results/{ds}/data/{f}" for f in ("split.json", "images.pt")], step="split",
                 params=["data", f"datasets.{ds}"]) for ds in ("mine", "cifar10")]
    stages = build_stages(jobs, "results", "params.yaml")
    config = {"datasets": {"mine": {"kind": "imagefolder", "root": "/data/flowers"},
                           "cifar10": {"kind": "torchvision", "name": "CIFAR10", "root": "data/torchvision"}}}
    add_dataset_roots(stages, config)
    # DVC hashes the folder: a changed image reruns `dvc repro`'s split, as it does Snakemake's
    assert "/data/flowers" in stages["mine-data"].deps
    # a torchvision download folder is written by the stage itself: no dep
    assert "data/torchvision" not in stages["cifar10-data"].deps
    assert not any("flowers" in d for d in stages["cifar10-data"].deps)
