"""Helpers of the workflow: config validation, the merged config file, paths, input functions.

No logic of NATv2 lives here: rules call `natv2 <step>`; this file only says which files feed
which step and which config sections each step depends on (its rerun fingerprint).
"""

import hashlib
import json
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError

from natv2.config import read_yaml, settings_from_dict
from natv2.errors import Natv2Error
from natv2.fingerprints import RULE_KEYS


# Validation before any job runs: Snakemake's validate (through natv2.config, which also
# fills schema defaults), with a one-line message naming the key.
try:
    # config/config.yaml and each --configfile, strictly: a repeated key (Snakemake keeps the
    # last, silently dropping a section) is refused with file and line. A YAML syntax error in
    # a --configfile stops Snakemake before this file runs (its message names neither file nor
    # line); `natv2 <step> --config FILE` names both.
    for _path in workflow.configfiles:
        read_yaml(_path)
    SETTINGS = settings_from_dict(config)
    # each dataset's own config (datasets.<ds>.overrides merged over the top level), validated now
    DATASET_SETTINGS = {_ds: SETTINGS.for_dataset(_ds) for _ds in SETTINGS.datasets}
except Natv2Error as e:
    raise WorkflowError(f"natv2: invalid config: {e}") from None
config.clear()
config.update(SETTINGS.raw)

RESULTS = SETTINGS.results_dir


# The merged config every step of this run reads, named by its content: another run (or a dry
# run, `natv2 dvc`, a test) with another config writes another file, never this one, so a job
# reads the config its run was started with. Not a rule input, and the same value for the
# params rerun trigger whatever the config (see MergedConfigPath): what a step depends on is
# declared through its `fingerprint` param below, so editing an unrelated key reruns nothing.
MERGED_CONFIG_DIR = Path(".snakemake/natv2")


class _ConfigParam(str):
    """The merged config's path as a param value: its `repr`, what Snakemake's params trigger
    records, is one constant, the fixed path this file had before it was named by its content
    (the path changes with every config edit; results made before are not rerun for it either)."""

    def __repr__(self) -> str:
        return repr(".snakemake/natv2/config.yaml")


class MergedConfigPath(_ConfigParam):
    """The merged config's path (`config=CONFIG` param, `--config {params.config}` in the shell).

    A job of a dataset with `datasets.<ds>.overrides` reads that dataset's own merged config
    (`dataset_config`): a file of its own, named by its content as well."""

    def __call__(self, wildcards) -> _ConfigParam:
        # as a param, a function: Snakemake passes what a param function returns as it is (a
        # plain string param would be copied into a str, losing the constant repr)
        ds = dict(wildcards.items()).get("ds")
        if ds is not None and dataset_config(ds) is not config:
            if ds not in _DATASET_CONFIG_PATHS:
                _DATASET_CONFIG_PATHS[ds] = _write_merged_config(dataset_config(ds))
            return _ConfigParam(_DATASET_CONFIG_PATHS[ds])
        return _ConfigParam(self)


_DATASET_CONFIG_PATHS: dict = {}


def _write_merged_config(cfg: dict) -> MergedConfigPath:
    text = yaml.safe_dump(cfg, sort_keys=True)
    path = MERGED_CONFIG_DIR / f"config-{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    # written once, atomically; a file of that name already holds this text (or is rewritten
    # with it, if something else damaged it), so a reading job never sees another config
    if not path.exists() or path.read_text() != text:
        from natv2.io import write_text

        write_text(path, text)
    return MergedConfigPath(path)


CONFIG = _write_merged_config(dict(config))


def dataset_config(ds: str) -> dict:
    """The config the jobs of dataset `ds` read: `config` itself, or with the dataset's
    `overrides` merged over it (natv2.config.Settings.for_dataset, validated above)."""
    settings = DATASET_SETTINGS.get(ds)
    if settings is None or settings is SETTINGS:
        return config
    return dict(settings.raw)




def fingerprint(rule: str, content=None):
    """Hash of the config entries rule `rule` reads (natv2.fingerprints.RULE_KEYS, dotted keys),
    as a `params:` rerun trigger; `natv2 dvc` makes the same keys the DVC stage's params.

    A `{ds}`-dependent key is written `datasets.{ds}`. Changing any other key does not rerun
    the step; `search.iterations` is never part of a fingerprint, so adding iterations reruns
    only the new ones and what follows them. `content(wildcards)`, when given and not None,
    is hashed in too (the split: the manifest of an image folder, see `data_content`).
    """

    keys = RULE_KEYS[rule]

    def _fp(wildcards):
        picked = {}
        ds = dict(wildcards.items()).get("ds")
        for key in keys:
            key = key.format(**dict(wildcards.items()))
            node = dataset_config(ds) if ds is not None else config
            for part in key.split("."):
                node = node.get(part, {}) if isinstance(node, dict) else {}
            if key == "search" and isinstance(node, dict):
                node = {k: v for k, v in node.items() if k != "iterations"}
            if key == f"datasets.{ds}" and isinstance(node, dict):
                # the overrides count where they land (the sections above, merged): an override
                # of the fine-tune reruns no split and no supernet
                node = {k: v for k, v in node.items() if k != "overrides"}
            picked[key] = node
        extra = content(wildcards) if content is not None else None
        if extra is not None:  # only then: a fingerprint without content keeps its old value
            picked["content"] = extra
        blob = json.dumps(picked, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    return _fp


def data_content(wildcards) -> str | None:
    """Manifest hash of an imagefolder dataset's files (relative paths, sizes, mtimes; natv2.manifest).

    Adding, removing or replacing an image or a class changes it, and so the split's
    fingerprint: the split and everything after it rerun. None for the other kinds, whose
    content is fixed by their name.
    """
    from natv2.manifest import manifest_hash

    entry = section("datasets").get(wildcards.ds)
    if not isinstance(entry, dict) or entry.get("kind") != "imagefolder" or not entry.get("root"):
        return None  # an unknown key or a missing root: `natv2 split` says so in one line
    return manifest_hash(entry["root"])


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


# Cores of one job by kind of step (`natv2 --threads {threads}` limits torch to them, so
# parallel jobs do not oversubscribe): training uses the machine, the scattered work one core each.
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


# ---------------------------------------------------------------------------------------------
# supernet phase: input functions and paths

def supernet_phases(ds: str) -> list[str]:
    """The shrinking phases with a job of their own when the supernet is trained on ``ds``, in order:
    those that apply to its variant, less the middle ones of 0 epochs (natv2.shrinking.trained_phases;
    the next job records them in its checkpoint, so a 0-epoch phase costs no job of its own)."""
    from natv2.shrinking import trained_phases
    from natv2.space import SearchSpace

    settings = DATASET_SETTINGS.get(ds) or SETTINGS.for_dataset(ds)
    return trained_phases(SearchSpace.from_config(settings.supernet_for(ds)), settings.supernet_train.phases)


def source_dataset(ds: str) -> str:
    """Dataset the supernet is trained on: supernet_train.dataset, or the target itself.

    Several targets sharing one source dataset share its trained phases (results/{src}/supernet/phases).
    """
    return SETTINGS.supernet_train.dataset or ds


def official_source() -> bool:
    return SETTINGS.supernet_train.source == "official"


def phase_inputs(wildcards) -> dict:
    phases = supernet_phases(wildcards.ds)
    if wildcards.phase not in phases:
        raise WorkflowError(
            f"supernet phase {wildcards.phase!r}: no job for dataset {wildcards.ds!r} (it does not apply to variant "
            f"{SETTINGS.supernet.variant!r} or has 0 epochs; phases with a job: {', '.join(phases)})"
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
        inputs["phases"] = [f"{RESULTS}/{src}/supernet/phases/{p}.pt" for p in supernet_phases(src)]
    return inputs


def phases_dir_option(wildcards) -> str:
    if official_source():
        return ""
    return f"--work-dir {RESULTS}/{source_dataset(wildcards.ds)}/supernet/phases"




# ---------------------------------------------------------------------------------------------
# search phase: input functions and paths

def iter_dir(ds, i) -> str:
    return f"{RESULTS}/{ds}/search/iter{i}"


def supernet_before(wildcards) -> str:
    """The supernet iteration i starts from: the warmed-up one for i=1, else iteration i-1's."""
    i = int(wildcards.i)
    if i <= 1:
        return f"{RESULTS}/{wildcards.ds}/supernet/warmup.pt"
    return f"{iter_dir(wildcards.ds, i - 1)}/supernet.pt"


def final_supernet(wildcards) -> str:
    n = n_iterations()
    return f"{iter_dir(wildcards.ds, n)}/supernet.pt" if n else f"{RESULTS}/{wildcards.ds}/supernet/warmup.pt"


def final_archive(wildcards) -> str:
    return f"{iter_dir(wildcards.ds, n_iterations())}/archive.csv"


def previous_archive(wildcards) -> str:
    return f"{iter_dir(wildcards.ds, int(wildcards.i) - 1)}/archive.csv"


def shards(pattern: str):
    def _shards(wildcards):
        return [pattern.format(**dict(wildcards.items()), k=k) for k in range(eval_shards())]

    return _shards


def all_archives(wildcards) -> list[str]:
    return [f"{iter_dir(wildcards.ds, i)}/archive.csv" for i in range(n_iterations() + 1)]


def all_updates(wildcards) -> list[str]:
    return [f"{iter_dir(wildcards.ds, i)}/update.json" for i in range(1, n_iterations() + 1)]


SPLIT = f"{RESULTS}/{{ds}}/data/split.json"
PART_COSTS = f"{RESULTS}/{{ds}}/search/iter0/part_costs.json"
ITER = f"{RESULTS}/{{ds}}/search/iter{{i}}"
# outputs of iterations 1..N (iteration 0 is the initial archive, made by its own rules)
ITER_OUT = f"{RESULTS}/{{ds}}/search/iter{{i,[1-9][0-9]*}}"


# ---------------------------------------------------------------------------------------------
# post phase: input functions and paths

import pandas as pd


def front_ids(wildcards) -> list[str]:
    """Ids of the front members, known once the `front` checkpoint has run."""
    front = pd.read_csv(checkpoints.front.get(ds=wildcards.ds).output[0])
    if "finetune" in front.columns:  # finetune.max_members picked a spread subset
        front = front[front["finetune"].astype(bool)]
    return [str(i) for i in front["id"]]


def member_metrics(wildcards) -> list[str]:
    return [f"{RESULTS}/{wildcards.ds}/nets/{i}/metrics.json" for i in front_ids(wildcards)]


# A fine-tuned member is declared file by file (not as a directory): Snakemake keeps checksums
# of files only, and without one a restored (newer) file would look updated.
NET = f"{RESULTS}/{{ds}}/nets/{{id}}"


