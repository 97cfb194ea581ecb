"""Generate dvc.yaml from the Snakemake DAG: one DVC stage per phase (and per iteration).

The Snakefile is the one source of truth. This module lists the workflow's jobs through public
interfaces only, so a Snakemake upgrade cannot change them silently: a forced dry run through
Snakemake's API, whose per-job log records (LogEvent.JOB_INFO, the logger-plugin interface)
give each job's rule, wildcards, inputs, outputs and shell command; natv2's own CLI parser reads
the step from the command; natv2.fingerprints gives each rule's config keys. It groups the jobs
into phases by their output paths (the layout of design.md §2) and writes one stage per phase
that runs ``snakemake`` for exactly that phase's outputs:

- ``outs``: the phase's own files only (DVC deletes a stage's outs before re-running it, so no
  stage may own another phase's file); checkpoints included, so every phase is cached.
- ``deps``: the other phases' files its jobs read, the natv2 modules its steps import, and the
  workflow's definition (Snakefile, ``workflow/rules/*.smk``, the schema, natv2/fingerprints.py).
- ``params``: the config keys its rules fingerprint (read from params.yaml).

Phases behind the ``front`` checkpoint (one fine-tune job per front member) are not known before
the search ran; their stage owns the ``nets/`` folder as a whole, and the fine-tune keeps its
resume state outside it (``.resume/finetune/<id>``): DVC deletes a stage's outs before it runs,
which would throw away a killed fine-tune's progress.

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
    todo = [f"natv2.steps.{step}"]
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


# What every stage depends on besides its steps' modules: the workflow's definition. A changed
# rule, schema default or fingerprint table reruns the stages (Snakemake itself decides, per job,
# whether anything is out of date).
WORKFLOW_FILES = ("Snakefile", "workflow/schemas/config.schema.yaml", "natv2/fingerprints.py")


def workflow_files(root: Path | None = None) -> list[str]:
    """The Snakefile, every ``workflow/rules/*.smk``, the config schema and the fingerprint table."""
    root = root or Path.cwd()
    rules = sorted(str(p.relative_to(root)) for p in (root / "workflow" / "rules").glob("*.smk"))
    return sorted([*WORKFLOW_FILES, *rules])


@functools.lru_cache(maxsize=1)
def _cli_parser():
    from natv2.cli import build_parser

    return build_parser()


def step_of(shellcmd: str | None) -> str | None:
    """The ``natv2.steps`` module a job's shell command runs, as natv2's own CLI parser reads it
    (``natv2 [options] <step> ...``); None for a command that does not run natv2."""
    import shlex

    words = shlex.split(shellcmd or "", comments=False)
    start = next((i for i, w in enumerate(words) if Path(w).name == "natv2"), None)
    if start is None:
        return None
    argv = []
    for w in words[start + 1 :]:
        if w in (">", ">>", "2>&1", "|", "&&", ";") or w.startswith(("2>", ">")):
            break
        argv.append(w)
    try:
        args, _ = _cli_parser().parse_known_args(argv)
    except SystemExit:
        raise ValueError(f"not a natv2 command line: {shellcmd}") from None
    return args.func.__module__.rsplit(".", 1)[-1]


def _job_record(job: dict) -> dict:
    """A job of Snakemake's dry run (its JOB_INFO log record) as dvcgen needs it."""
    from natv2.fingerprints import RULE_KEYS

    wildcards = dict(job.get("wildcards") or {})

    def files(values) -> list[str]:  # "<TBD>": an input behind a checkpoint, not known yet
        return [str(f) for f in values or () if not str(f).startswith("<")]

    return dict(
        rule=job["rule_name"],
        step=step_of(job.get("shellcmd")),
        inputs=files(job.get("input")),
        outputs=files(job.get("output")),
        params=[key.format(**wildcards) for key in RULE_KEYS.get(job["rule_name"], ())],
    )


# Jobs that exist only once a checkpoint has run: checkpoint rule -> (rule, file beside the
# checkpoint's output). One job each (wildcard id "0") stands for all of them, so their stage,
# deps and params are known: the fine-tune of front member 0 stands for every member.
_AFTER_CHECKPOINT = {"front": ("finetune", "nets/0/metrics.json")}


def _dry_run_jobs(configfiles: list[str], targets: Iterable[str], snakefile: Path) -> list[dict]:
    """Every job of a forced dry run of ``targets``, as Snakemake logs it (LogEvent.JOB_INFO).

    Public interfaces only: the API's dry run and the structured records Snakemake logs for
    logger plugins (snakemake-interface-logger-plugins), read by a handler on the ``snakemake``
    logger. Nothing runs and nothing is locked.
    """
    import logging

    from snakemake.api import (
        ConfigSettings,
        DAGSettings,
        OutputSettings,
        ResourceSettings,
        SnakemakeApi,
        StorageSettings,
    )
    from snakemake.settings.types import Quietness
    from snakemake_interface_logger_plugins.common import LogEvent

    fields = ("rule_name", "input", "output", "wildcards", "shellcmd")

    class _Jobs(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.INFO)
            self.jobs: list[dict] = []

        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "event", None) == LogEvent.JOB_INFO:
                self.jobs.append({f: getattr(record, f, None) for f in fields})

    handler = _Jobs()
    logger = logging.getLogger("snakemake")
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False  # the records stop here (quiet run)
    try:
        with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
            wf_api = api.workflow(
                resource_settings=ResourceSettings(cores=1),
                config_settings=ConfigSettings(configfiles=[Path(c).absolute() for c in configfiles]),
                storage_settings=StorageSettings(),
                snakefile=snakefile,
                workdir=snakefile.parent,
            )
            dag_api = wf_api.dag(dag_settings=DAGSettings(targets=set(targets), forceall=True))
            dag_api.execute_workflow(executor="dryrun")
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
    if not handler.jobs:
        raise RuntimeError("snakemake's dry run logged no jobs (its JOB_INFO log records changed?)")
    return handler.jobs


def workflow_jobs(configfiles: list[str], targets: list[str], snakefile: Path | None = None) -> list[dict]:
    """(rule, natv2 step, inputs, outputs, fingerprint keys) of every job of the DAG of ``targets``."""
    snakefile = (snakefile or Path.cwd() / "Snakefile").absolute()
    jobs = [_job_record(j) for j in _dry_run_jobs(configfiles, targets, snakefile)]
    later = {}
    for job in jobs:
        if job["rule"] in _AFTER_CHECKPOINT and job["outputs"]:
            rule, beside = _AFTER_CHECKPOINT[job["rule"]]
            later[str(Path(job["outputs"][0]).parent / beside)] = rule
    if later:
        for job in map(_job_record, _dry_run_jobs(configfiles, later, snakefile)):
            if job["rule"] in later.values() and set(job["outputs"]) & set(later):
                jobs.append({**job, "placeholder": True})
    config = _merged_config([snakefile.parent / "config" / "config.yaml", *configfiles])
    for job in jobs:
        job["params"] = _expand_search(job["params"], config)
    return jobs


def _merged_config(configfiles: list) -> dict:
    """The config the workflow sees: its ``configfile:`` with ``configfiles`` merged over it."""
    from natv2.config import load_settings

    return dict(load_settings(configfiles).raw)


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
                # one job (nets/0/<file>) stands for all front members: the stage owns the folder
                # of their folders (their resume state lives elsewhere: DVC deletes outs)
                out = str(Path(out).parents[1])
            elif out not in stage.targets:
                stage.targets.append(out)
            if out not in stage.outs:
                stage.outs.append(out)
            owner[out] = name
        stage.deps.update(workflow_files())
        if job["step"]:
            stage.deps.update(step_modules(job["step"]))
        stage.deps.update(job["inputs"])
    for stage in stages.values():
        # inputs produced inside the same stage are not deps; others are the upstream phases' outs
        stage.deps = {d for d in stage.deps if owner.get(d) != stage.name and d not in stage.outs}
    return stages


def add_dataset_roots(stages: dict[str, Stage], config: dict) -> None:
    """Make an ImageFolder dataset's folder a dep of its data stage.

    DVC hashes the folder's files, so a changed, added or removed image reruns the split under
    ``dvc repro`` (Snakemake sees the same change through the split's fingerprint,
    natv2.manifest). The other kinds' content is fixed by their name (torchvision checks its
    downloads' MD5), and their download folder is written by the stage itself.
    """
    for ds, entry in (config.get("datasets") or {}).items():
        stage = stages.get(f"{ds}-data")
        if stage is not None and isinstance(entry, dict) and entry.get("kind") == "imagefolder" and entry.get("root"):
            stage.deps.add(str(entry["root"]))


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
