"""Generate dvc.yaml from the Snakemake DAG: one DVC stage per phase (and per iteration).

The Snakefile is the one source of truth. This module builds the workflow's job DAG with
Snakemake's API (every job forced, so the whole DAG is listed), groups the jobs into phases by
their output paths (the layout of design.md §2), and writes one stage per phase that runs
``snakemake`` for exactly that phase's outputs:

- ``outs``: the phase's own files only (DVC deletes a stage's outs before re-running it, so no
  stage may own another phase's file); checkpoints included, so every phase is cached.
- ``deps``: the other phases' files its jobs read, the natv2 modules its steps import, its rule file.
- ``params``: the config keys its rules fingerprint (read from params.yaml).

Phases behind the ``front`` checkpoint (one fine-tune job per front member) are not known before
the search ran; their stage owns the ``nets/`` folder as a whole.

Files DVC restores get new modification times; the workflow's profile leaves ``mtime`` out of
Snakemake's rerun triggers, so a restored phase is not recomputed.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import yaml

from natv2.config import REPO_ROOT

# phase of a job, from the path of its first output (relative to the results dir)
_PHASE_PATTERNS: list[tuple[str, str]] = [
    (r"(?P<ds>[^/]+)/data/", "{ds}-data"),
    (r"(?P<ds>[^/]+)/supernet/phases/(?P<phase>[^/.]+)\.pt$", "{ds}-supernet-{phase}"),
    (r"(?P<ds>[^/]+)/supernet/source\.pt$", "{ds}-supernet-source"),
    (r"(?P<ds>[^/]+)/supernet/warmup\.pt$", "{ds}-warmup"),
    (r"(?P<ds>[^/]+)/search/iter(?P<i>\d+)/", "{ds}-iter{i}"),
    (r"(?P<ds>[^/]+)/(front\.csv|search/hv\.csv)$", "{ds}-front"),
    (r"(?P<ds>[^/]+)/(nets/|pareto\.csv$)", "{ds}-finetune"),
    (r"(?P<ds>[^/]+)/ensembles", "{ds}-ensembles"),
    (r"(?P<ds>[^/]+)/report/", "{ds}-report"),
]


@dataclass
class Stage:
    name: str
    outs: list[str] = field(default_factory=list)
    deps: set[str] = field(default_factory=set)
    params: set[str] = field(default_factory=set)
    rules: set[str] = field(default_factory=set)


def phase_of(path: str, results_dir: str) -> str | None:
    rel = path[len(results_dir) + 1 :] if path.startswith(results_dir + "/") else None
    if rel is None:
        return None
    for pattern, template in _PHASE_PATTERNS:
        m = re.match(pattern, rel)
        if m:
            return template.format(**{k: v for k, v in m.groupdict().items() if v is not None})
    return None


def step_modules(step: str) -> list[str]:
    """natv2 modules (as repo paths) imported, transitively, by ``natv2/steps/<step>.py``."""
    seen: set[str] = set()
    todo = [f"natv2.steps.{step.replace('-', '_')}"]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        path = _module_path(mod)
        if path is None:
            continue
        seen.add(mod)
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("natv2"):
                todo.append(node.module)
                todo.extend(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                todo.extend(a.name for a in node.names if a.name.startswith("natv2"))
    paths = {_module_path(m) for m in seen}
    return sorted(str(p.relative_to(REPO_ROOT)) for p in paths if p is not None)


def _module_path(mod: str) -> Path | None:
    base = REPO_ROOT / Path(*mod.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


_STEP_RE = re.compile(r"\bnatv2 ([a-z][a-z0-9-]*)")


def workflow_jobs(configfiles: list[str], targets: list[str], snakefile: Path | None = None):
    """(rule, shell step, rule file, inputs, outputs, fingerprint keys) of every job of the DAG."""
    from snakemake.api import (
        ConfigSettings,
        DAGSettings,
        OutputSettings,
        ResourceSettings,
        SnakemakeApi,
        StorageSettings,
    )
    from snakemake.settings.types import Quietness

    snakefile = (snakefile or REPO_ROOT / "Snakefile").absolute()
    jobs = []
    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        wf_api = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(configfiles=[Path(c).absolute() for c in configfiles]),
            storage_settings=StorageSettings(),
            snakefile=snakefile,
            workdir=snakefile.parent,
        )
        dag_api = wf_api.dag(dag_settings=DAGSettings(targets=set(targets), forceall=True))
        # The public API prints DAGs but does not return them; build it the way printdag does.
        workflow = dag_api.workflow_api._workflow
        workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True)
        workflow._build_dag()
        fp_keys = workflow.globals.get("FINGERPRINT_KEYS", {})
        for job in workflow.dag.jobs:
            rule = job.rule
            shellcmd = rule.shellcmd or ""
            step = _STEP_RE.search(shellcmd)
            keys = [k.format(**dict(job.wildcards.items())) for k in fp_keys.get(rule.name, [])]
            jobs.append(
                dict(
                    rule=rule.name,
                    step=step.group(1) if step else None,
                    rulefile=str(Path(rule.snakefile).resolve().relative_to(REPO_ROOT)),
                    inputs=[str(f) for f in job.input],
                    outputs=[str(f) for f in job.output],
                    params=keys,
                )
            )
    return jobs


def build_stages(jobs: Iterable[dict], results_dir: str, configfile: str) -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    owner: dict[str, str] = {}
    for job in jobs:
        if not job["outputs"]:
            continue  # rule all
        name = phase_of(job["outputs"][0], results_dir)
        if name is None:
            raise ValueError(f"no DVC phase for output {job['outputs'][0]} of rule {job['rule']}")
        stage = stages.setdefault(name, Stage(name))
        stage.rules.add(job["rule"])
        stage.params.update(job["params"])
        for out in job["outputs"]:
            if name.endswith("-finetune") and "/nets/" in out:
                out = out[: out.index("/nets/") + len("/nets")]
            if out not in stage.outs:
                stage.outs.append(out)
            owner[out] = name
        stage.deps.add(job["rulefile"])
        if job["step"]:
            stage.deps.update(step_modules(job["step"]))
        stage.deps.update(job["inputs"])
    for stage in stages.values():
        # inputs produced inside the same stage are not deps; others are the upstream phases' outs
        stage.deps = {d for d in stage.deps if owner.get(d) != stage.name and d not in stage.outs}
    return stages


def to_dvc_yaml(stages: dict[str, Stage], configfile: str, metrics: list[str], plots: list) -> str:
    body: dict = {"stages": {}}
    for name, stage in stages.items():
        targets = " ".join(o for o in stage.outs)
        body["stages"][name] = {
            "cmd": f"snakemake --cores all --configfile {configfile} {targets}",
            "deps": sorted(stage.deps),
            "params": sorted(stage.params) if stage.params else [],
            "outs": list(stage.outs),
        }
        if not stage.params:
            del body["stages"][name]["params"]
    body["metrics"] = metrics
    body["plots"] = plots
    header = (
        "# Generated by `natv2 dvc` from the Snakemake DAG; do not edit by hand.\n"
        "# Regenerate after changing the workflow: natv2 dvc --params params.yaml --out dvc.yaml\n"
    )
    return header + yaml.safe_dump(body, sort_keys=False, width=1000)
