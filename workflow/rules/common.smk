"""Helpers of the workflow: config validation, the merged config file, paths, input functions.

No logic of NATv2 lives here: rules call `natv2 <step>`; this file only says which files feed
which step and which config sections each step depends on (its rerun fingerprint).
"""

import hashlib
import json
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError

from natv2.config import settings_from_dict
from natv2.errors import Natv2Error


# Validation before any job runs: Snakemake's validate (through natv2.config, which also
# fills schema defaults), with a one-line message naming the key.
try:
    SETTINGS = settings_from_dict(config)
except Natv2Error as e:
    raise WorkflowError(f"natv2: invalid config: {e}") from None
config.clear()
config.update(SETTINGS.raw)

RESULTS = SETTINGS.results_dir


# The merged config every step reads. A fixed path (not a rule input): what a step depends on
# is declared through its `fingerprint` param below, so editing an unrelated key reruns nothing.
MERGED_CONFIG = Path(".snakemake/natv2/config.yaml")


def _write_merged_config(cfg: dict) -> str:
    text = yaml.safe_dump(cfg, sort_keys=True)
    if not MERGED_CONFIG.exists() or MERGED_CONFIG.read_text() != text:
        from natv2.io import write_text

        write_text(MERGED_CONFIG, text)
    return str(MERGED_CONFIG)


CONFIG = _write_merged_config(dict(config))


wildcard_constraints:
    ds="[A-Za-z0-9_.-]+",
    i="[0-9]+",
    k="[0-9]+",
    id="[A-Za-z0-9_-]+",


def fingerprint(*keys: str):
    """Hash of the config entries a step reads (dotted keys), as a `params:` rerun trigger.

    A `{ds}`-dependent key is written `datasets.{ds}`. Changing any other key does not rerun
    the step; `search.iterations` is never part of a fingerprint, so adding iterations reruns
    only the new ones and what follows them.
    """

    def _fp(wildcards):
        picked = {}
        for key in keys:
            key = key.format(**dict(wildcards.items()))
            node = config
            for part in key.split("."):
                node = node.get(part, {}) if isinstance(node, dict) else {}
            if key == "search" and isinstance(node, dict):
                node = {k: v for k, v in node.items() if k != "iterations"}
            picked[key] = node
        blob = json.dumps(picked, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    _fp.config_keys = keys  # read by natv2.dvcgen: a DVC stage's params are these keys
    return _fp


def section(name: str) -> dict:
    return config.get(name) or {}


# ---------------------------------------------------------------------------------------------
# paths


def ds_dir(ds: str) -> str:
    return f"{RESULTS}/{ds}"


def n_iterations() -> int:
    return int(section("search").get("iterations", 0))


def eval_shards() -> int:
    return int(section("workflow").get("eval_shards", 1))


def maybe_temp(path: str):
    """Intermediate supernet checkpoints may be deleted once consumed (workflow.temp_checkpoints)."""
    return temp(path) if section("workflow").get("temp_checkpoints", False) else path


def all_targets() -> list[str]:
    """What a bare `snakemake` builds: the deliverables and the report of every workflow.datasets key."""
    targets = []
    for ds in section("workflow").get("datasets", ["digits"]):
        targets += [f"{ds_dir(ds)}/pareto.csv", f"{ds_dir(ds)}/ensembles.csv", f"{ds_dir(ds)}/report/metrics.json"]
    return targets


# ---------------------------------------------------------------------------------------------
# resources: threads, memory, GPUs and runtime by kind of step, overridable in config


# Every torch step gets as many intra-op threads as the job has cores, so parallel jobs
# (evaluation shards, fine-tune members) do not oversubscribe the machine.
NATV2 = "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} natv2 "

# cores of one job by kind of step: training uses the machine, the scattered work one core each
_THREADS = {"data": 2, "train": 2, "evaluate": 1, "search": 1, "finetune": 1, "light": 1}


def threads_for(kind: str) -> int:
    return int(res(kind, "threads", _THREADS[kind]))


def res(kind: str, key: str, default):
    return section("workflow").get("resources", {}).get(kind, {}).get(key, default)


def resources_for(kind: str) -> dict:
    return dict(
        mem_mb=res(kind, "mem_mb", 4000),
        runtime=res(kind, "runtime", 60),
        gpu=res(kind, "gpu", 0),
    )
