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
import functools
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
    targets: list[str] = field(default_factory=list)  # what the stage asks snakemake for
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


@functools.lru_cache(maxsize=None)
def step_modules(step: str) -> tuple[str, ...]:
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
    return tuple(sorted(str(p.relative_to(REPO_ROOT)) for p in paths if p is not None))


def _module_path(mod: str) -> Path | None:
    base = REPO_ROOT / Path(*mod.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


_STEP_RE = re.compile(r"\bnatv2 (?:--threads \S+ )?([a-z][a-z0-9-]*)")


def _params_keys(rule, wildcards: dict) -> list[str]:
    """Config keys of the rule's ``fingerprint`` param (see workflow/rules/common.smk)."""
    keys: list[str] = []
    for value in rule.params:
        for key in getattr(value, "config_keys", ()):
            keys.append(key.format(**wildcards))
    return keys


def _job_record(rule, wildcards: dict, inputs, outputs) -> dict:
    step = _STEP_RE.search(rule.shellcmd or "")
    return dict(
        rule=rule.name,
        step=step.group(1) if step else None,
        rulefile=str(Path(rule.snakefile).resolve().relative_to(Path.cwd().resolve())),
        inputs=[str(f) for f in inputs],
        outputs=[str(f) for f in outputs],
        params=_params_keys(rule, wildcards),
    )


# Rules whose jobs exist only once the `front` checkpoint has run: one placeholder job each
# (wildcard id "0") stands for all of them, so their stage, deps and params are known.
_AFTER_CHECKPOINT = {"finetune": {"id": "0"}}


def workflow_jobs(configfiles: list[str], targets: list[str], snakefile: Path | None = None) -> list[dict]:
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

    snakefile = (snakefile or Path.cwd() / "Snakefile").absolute()
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
        datasets = set()
        for job in workflow.dag.jobs:
            wildcards = dict(job.wildcards.items())
            datasets.update([wildcards["ds"]] if "ds" in wildcards else [])
            jobs.append(_job_record(job.rule, wildcards, job.input, job.output))
        for name, extra in _AFTER_CHECKPOINT.items():
            rule = workflow.get_rule(name)
            for ds in sorted(datasets):
                wildcards = {"ds": ds, **extra}
                inputs = rule.expand_input(wildcards)[0]
                outputs = rule.expand_output(wildcards)[0]
                jobs.append({**_job_record(rule, wildcards, inputs, outputs), "placeholder": True})
        config = dict(workflow.config)
    for job in jobs:
        job["params"] = _expand_search(job["params"], config)
    return jobs


def _expand_search(keys: list[str], config: dict) -> list[str]:
    """``search`` as its sub-keys minus ``iterations``: adding iterations reruns only the new ones."""
    out = []
    for key in keys:
        if key == "search":
            out += [f"search.{k}" for k in sorted(config.get("search", {})) if k != "iterations"]
        else:
            out.append(key)
    return out


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
            if job.get("placeholder"):
                # one job stands for all front members: the stage owns their parent folder
                out = str(Path(out).parent)
            elif out not in stage.targets:
                stage.targets.append(out)
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


_PHASE_RANK = ["data", "supernet", "warmup", "iter", "front", "finetune", "ensembles", "report"]


def _stage_order(stage: Stage, phase_order: dict[str, int]) -> tuple:
    """Upstream first: by dataset, then phase of the workflow, training phase or iteration."""
    ds, _, rest = stage.name.partition("-")
    kind = next(k for k in _PHASE_RANK if rest.startswith(k))
    sub = rest[len(kind):].lstrip("-")
    if kind == "supernet":
        minor = phase_order.get(sub, len(phase_order))  # 'source' after every training phase
    elif kind == "iter":
        minor = int(sub)
    else:
        minor = 0
    return (ds, _PHASE_RANK.index(kind), minor)


def to_dvc_yaml(stages: dict[str, Stage], configfile: str, metrics: list[str], plots: list,
                phase_order: list[str] = ()) -> str:
    body: dict = {"stages": {}}
    rank = {name: i for i, name in enumerate(phase_order)}
    ordered = sorted(stages.values(), key=lambda st: _stage_order(st, rank))
    for stage in ordered:
        name = stage.name
        stage.targets.sort()
        stage.outs.sort()
        targets = " ".join(stage.targets)
        body["stages"][name] = {
            "cmd": f"snakemake --cores all {targets} --configfile {configfile}",
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
        "# Regenerate after changing the workflow or the paper config: natv2 dvc --config config/paper.yaml\n"
    )
    return header + yaml.safe_dump(body, sort_keys=False, width=1000)
