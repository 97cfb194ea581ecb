"""The experiment settings: merged YAML files, validated by the JSON schema, as typed objects.

Snakemake validates ``config`` with the same schema (workflow/schemas/config.schema.yaml) and
writes the merged result to a file every step reads with :func:`load_settings`, so a step run by
hand and a step run by the workflow see the same settings.

Each section of the config is one frozen dataclass below; the schema holds every key's
description and default, so defaults are not repeated here (fields without a schema default
are optional and ``None`` when absent).
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from natv2.errors import Natv2Error

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG = REPO_ROOT / "config" / "config.yaml"


def setting(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg[key]`` of a config section given as a mapping or as its dataclass (``default`` when absent)."""
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


# --------------------------------------------------------------------------------------------
# sections


@dataclass(frozen=True)
class DatasetConfig:
    """One entry of ``datasets:``, with the ``data:`` defaults filled in (``Settings.dataset``).

    Defaults live in the schema only: the required fields are always there once validated.
    """

    key: str
    kind: str
    download: bool
    image_size: int
    val_size: float
    test_size: float
    pad: int
    flip: bool
    name: str | None = None
    root: str | None = None
    max_train: int | None = None
    resolutions: tuple[int, ...] | list[int] | None = None
    stem_stride: int | None = None  # override of supernet.stem_stride for supernets made on this dataset
    overrides: Mapping[str, Any] | None = None  # config sections merged over the run's for this dataset's jobs (Settings.for_dataset)


@dataclass(frozen=True)
class DataConfig:
    image_size: int
    val_size: float
    test_size: float
    pad: int
    flip: bool


@dataclass(frozen=True)
class SupernetConfig:
    """The supernet and its search space (natv2.nets, natv2.space; design.md §3).

    ``widths``: one supernet per entry (OFA w1.0, w1.2), side by side; the width gene picks one.
    ``stem_stride`` 2 is OFA's (224 px); 1 keeps useful feature maps at 32-64 px.
    """

    variant: str
    resolutions: tuple[int, ...] | list[int]
    widths: tuple[float, ...] | list[float]
    kernels: tuple[int, ...] | list[int]
    expands: tuple[int, ...] | list[int]
    depths: tuple[int, ...] | list[int]
    n_exits: int
    stem_stride: int
    dropout: float
    weights_dir: str
    mirrors: tuple[str, ...] | list[str]
    download: bool

    def space(self):
        """The natv2.space.SearchSpace of this config."""
        from natv2.space import SearchSpace

        return SearchSpace.from_config(self)


@dataclass(frozen=True)
class EvaluationConfig:
    """Evaluation of subnets (natv2.evaluate, natv2.costs): BN recalibration, top-1, costs."""

    bn_images: int
    batch_size: int
    channels_last: bool
    fold_bn: bool
    latency: bool
    latency_batch_size: int
    latency_repeats: int  # timed blocks at least (natv2.costs.time_forward)
    latency_warmup: int
    latency_min_time: float = 0.1  # seconds of timed blocks at least (natv2.costs.time_forward)
    latency_threads: int = 1  # torch threads while timing (recorded in a latency table)

    @property
    def latency_kwargs(self) -> dict:
        """The keyword arguments of natv2.costs.measure_latency (and of a latency table) from these settings."""
        return dict(batch_size=self.latency_batch_size, repeats=self.latency_repeats, warmup=self.latency_warmup,
                    min_time=self.latency_min_time, threads=self.latency_threads)


@dataclass(frozen=True)
class FinetuneConfig:
    """NATv2 post-processing fine-tune of each front member (two steps, see natv2.finetune).

    Paper values (NATv2, Sarti et al. 2023): patience 30, up to 150 epochs, SGD lr 1e-4 for
    single-exit supernets, AdamW lr 1e-4 for early-exit ones; laptop defaults are smaller.
    """

    patience: int
    max_epochs: int
    min_delta: float
    best_epoch_ties: str  # "first" (the original code) or "loss": the tied epoch of the lowest val loss
    max_members: int
    optimizer: str
    lr: float
    weight_decay: float
    momentum: float
    batch_size: int
    warmup_epochs: int
    label_smoothing: float
    selection_holdout: float
    aep_prune: bool  # AEP: cut the net after its best prefix of exits (off = the original code)
    bn_images: int
    latency_batch_size: int
    latency_repeats: int


@dataclass(frozen=True)
class EnsembleConfig:
    """OFA3 ensemble search over the fine-tuned front (see natv2.ensemble_selection)."""

    top_k: int
    objective: str
    modes: tuple[str, ...] | list[str]
    min_members: int
    max_members: int
    population: int
    generations: int
    batch_size: int
    initial: str = "all"
    mutation_prob: float = 0.01


@dataclass(frozen=True)
class PhaseConfig:
    """One phase of extended progressive shrinking (see natv2.shrinking)."""

    epochs: int
    lr: float
    warmup_epochs: float
    subnets_per_step: int


@dataclass(frozen=True)
class PhasesConfig:
    """The phases in their order; a phase that does not apply to the variant is skipped."""

    full: PhaseConfig
    kernel: PhaseConfig
    level1: PhaseConfig
    level2: PhaseConfig
    exit1: PhaseConfig  # OFAv2 net_depth phases: active exits {4,5}, {3..5}, {2..5}, {1..5}
    exit2: PhaseConfig
    exit3: PhaseConfig
    exit4: PhaseConfig
    depth1: PhaseConfig
    depth2: PhaseConfig
    expand1: PhaseConfig
    expand2: PhaseConfig


@dataclass(frozen=True)
class SupernetTrainConfig:
    """How ``natv2 supernet`` makes source.pt: official OFA weights, or OFAv2 training."""

    source: str
    dataset: str | None
    optimizer: str
    weight_decay: float
    momentum: float
    nesterov: bool
    batch_size: int
    label_smoothing: float
    kd_weight: float
    kd_temperature: float
    exit_weights: list[float] | None
    grad_clip: float | None
    amp: bool
    channels_last: bool
    teacher_bn_images: int
    phases: PhasesConfig


@dataclass(frozen=True)
class WarmupConfig:
    """NAT's warm-up on the target dataset before the search (see natv2.warmup)."""

    head_epochs: int
    head_lr: float
    supernet_epochs: int
    lr: float
    warmup_epochs: float
    batch_size: int
    subnets_per_step: int
    optimizer: str
    weight_decay: float
    momentum: float
    label_smoothing: float
    kd_weight: float
    teacher_bn_images: int
    head_warmup_epochs: float  # the max-net stage's own lr warm-up (NATv2: 5; supernet stage 10)
    grad_clip: float | None  # NATv2's warm-up clips at 5 (run_nat_warmup.py:187, 198)


@dataclass(frozen=True)
class SearchConfig:
    """NAT / NATv2 search: archive policies, surrogate, NSGA search, candidates (natv2.search).

    ``auto`` keys follow ``algorithm``: NAT = uniform sampling, push repair, adaptive surrogate;
    NATv2 = skip-1/3 sampling (depths 1/3, 2/9, 4/9), fill repair, LightGBM k-fold ensemble (design.md §3–4).
    """

    algorithm: str
    objectives: tuple[str, ...]
    iterations: int
    archive_size: int
    preprocess_mult: int
    candidates: int
    surrogate: str
    surrogate_folds: int
    sampling: str
    repair: str
    pop_size: int
    generations: int
    crossover_prob: float
    mutation_eta: float
    subset_pop_size: int
    subset_generations: int
    hv_reference: tuple[float, ...] | None
    surrogate_pool: tuple[str, ...] = ("rbf", "gp", "carts", "mlp")
    lgbm_min_child_samples: int | None = None
    initial_population: str = "random"
    constraints: Mapping[str, float] = field(default_factory=dict)  # column -> upper bound
    latency_table: str | None = None  # table.json of `natv2 latency-table`: adds latency_lut

    def __post_init__(self) -> None:
        from natv2.archive import check_objectives
        from natv2.constraints import check_constraints

        object.__setattr__(self, "objectives", check_objectives(self.objectives))
        object.__setattr__(self, "constraints", check_constraints(self.constraints))
        if "latency_lut" in (*self.objectives, *self.constraints) and not self.latency_table:
            raise Natv2Error("config key search.latency_table: required when search.objectives or "
                             "search.constraints name latency_lut (make one with `natv2 latency-table`)")
        if self.hv_reference is not None:
            ref = tuple(float(v) for v in self.hv_reference)
            if len(ref) != len(self.objectives):
                raise Natv2Error(
                    f"config key search.hv_reference: expected {len(self.objectives)} values "
                    f"(one per objective {list(self.objectives)}), got {list(ref)}"
                )
            object.__setattr__(self, "hv_reference", ref)

    @property
    def sampling_policy(self) -> str:
        """natv2.space sampling policy: ``nat`` (uniform genes) or ``natv2`` (NATv2: optional slots skipped w.p. 1/3, fill repair)."""
        return self.algorithm if self.sampling == "auto" else self.sampling

    @property
    def repair_mode(self) -> str:
        """natv2.space repair mode: ``push`` (NAT) or ``fill`` (NATv2)."""
        if self.repair != "auto":
            return self.repair
        return "push" if self.algorithm == "nat" else "fill"

    @property
    def lgbm_params(self) -> dict[str, Any]:
        """LightGBM overrides of NATv2's LGBMRegressor(objective='huber') (empty = LightGBM's defaults)."""
        n = self.lgbm_min_child_samples
        return {} if n is None else {"min_child_samples": int(n)}

    @property
    def surrogate_kind(self) -> str:
        """natv2.surrogate kind: ``adaptive`` (NAT) or ``lgbm`` (NATv2) unless set."""
        if self.surrogate != "auto":
            return self.surrogate
        return "adaptive" if self.algorithm == "nat" else "lgbm"


@dataclass(frozen=True)
class AdaptConfig:
    """NAT's supernet adaptation after each archive update (natv2.adapt; NAT §3.3).

    Paper (NAT, Lu et al. 2021): distribution from the top 150 of the archive, 5 epochs per
    iteration, 4 subnets per batch, CE + KD from the warmed-up largest subnet, SGD momentum 0.9,
    lr 2.5e-3 with one cosine over all iterations (5 warm-up epochs), weight decay 3e-4, gradient
    clipping 5, batch 256 (natv2.adapt).
    """

    epochs: int
    top_n: int
    subnets_per_step: int
    lr: float
    optimizer: str
    momentum: float
    weight_decay: float
    warmup_epochs: float
    batch_size: int
    label_smoothing: float
    kd_weight: float
    pseudo_count: float
    teacher_bn_images: int
    grad_clip: float | None = 5.0


@dataclass(frozen=True)
class Settings:
    """Everything a step needs to know, built once from the merged config."""

    seed: int
    device: str
    results_dir: str
    datasets: Mapping[str, Mapping[str, Any]]
    data: DataConfig
    finetune: FinetuneConfig
    ensemble: EnsembleConfig
    supernet_train: SupernetTrainConfig
    warmup: WarmupConfig
    search: SearchConfig
    supernet: SupernetConfig
    evaluation: EvaluationConfig
    adapt: AdaptConfig
    raw: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)

    def dataset(self, key: str) -> DatasetConfig:
        """The dataset entry ``key`` merged over the ``data:`` defaults."""
        if key not in self.datasets:
            known = ", ".join(sorted(self.datasets)) or "none"
            raise Natv2Error(f"unknown dataset key {key!r}: the config defines {known}")
        entry = dict(self.datasets[key])
        merged = {f.name: getattr(self.data, f.name) for f in dataclasses.fields(DataConfig)}
        merged.update(entry)
        return _build(DatasetConfig, {"key": key, **merged}, f"datasets.{key}")

    def supernet_for(self, key: str) -> SupernetConfig:
        """The ``supernet:`` section with the dataset's own ``resolutions`` and ``stem_stride`` when it sets them."""
        ds = self.dataset(key)
        changes: dict[str, Any] = {}
        if ds.resolutions:
            changes["resolutions"] = tuple(ds.resolutions)
        if ds.stem_stride is not None:
            changes["stem_stride"] = int(ds.stem_stride)
        return dataclasses.replace(self.supernet, **changes) if changes else self.supernet

    def for_dataset(self, key: str) -> Settings:
        """These settings with ``datasets.<key>.overrides`` deep-merged over the top-level sections
        (itself when the entry has none): what every job of dataset ``key`` reads. The workflow
        writes this merged config per dataset (workflow/rules/common.smk, ``dataset_config``)."""
        overrides = (self.raw.get("datasets", {}).get(key) or {}).get("overrides")
        if not overrides:
            return self
        try:
            return settings_from_dict(deep_merge(dict(self.raw), overrides))
        except Natv2Error as e:
            raise Natv2Error(f"datasets.{key}.overrides: {e}") from None

    def dataset_dir(self, key: str) -> Path:
        return Path(self.results_dir) / key

    def torch_device(self):
        """The torch.device named by ``device`` (auto = cuda when available).

        ``cuda`` (or ``auto``) with several GPUs visible: one per job, claimed through
        :mod:`natv2.gpu_slots`, so parallel jobs of profiles/multigpu spread over the GPUs. An
        explicit ``cuda:<k>`` and torchrun (WORLD_SIZE > 1, one rank per GPU) are left alone.
        """
        import os

        import torch

        if self.device == "auto":
            if not torch.cuda.is_available():
                return torch.device("cpu")
        elif self.device.startswith("cuda") and not torch.cuda.is_available():
            raise Natv2Error(f"config key device: {self.device!r} asked for, but no CUDA device is visible")
        if self.device in ("auto", "cuda"):
            count = torch.cuda.device_count()
            if count > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
                from natv2.gpu_slots import claim_gpu_slot

                slot = claim_gpu_slot(count)
                torch.cuda.set_device(slot)  # kernels and allocations without an explicit device
                return torch.device("cuda", slot)
            return torch.device("cuda")
        return torch.device(self.device)


# --------------------------------------------------------------------------------------------
# loading


def _build(cls, data: Mapping[str, Any], where: str):
    """Instantiate dataclass ``cls`` from a validated mapping, recursing into dataclass fields."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in names:
            raise Natv2Error(f"config key {where}.{key}: unknown key")
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            value = _build(hint, value, f"{where}.{key}")
        kwargs[key] = value
    return cls(**kwargs)


def deep_merge(base: dict, update: Mapping) -> dict:
    """Merge ``update`` into a copy of ``base`` as Snakemake merges ``--configfile`` files."""
    from snakemake.utils import update_config

    out = copy.deepcopy(base)
    update_config(out, copy.deepcopy(dict(update)))
    return out


def _key_path(error) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    return path or "(top level)"


def validate(config: dict) -> dict:
    """Validate ``config`` in place against the schema (filling defaults) and return it.

    Uses Snakemake's ``validate`` (which fills schema defaults) and turns a failure into one
    line that names the key, the value and what was expected.
    """
    import jsonschema
    from snakemake.utils import validate as snakemake_validate

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    error = jsonschema.exceptions.best_match(validator_cls(schema).iter_errors(config))
    if error is not None:
        raise Natv2Error(f"config key {_key_path(error)}: {error.message}")
    try:
        snakemake_validate(config, str(SCHEMA_PATH), set_default=True)
    except Exception as e:  # WorkflowError; the jsonschema pass above should have caught it
        raise Natv2Error(f"invalid config: {str(e).splitlines()[1] if len(str(e).splitlines()) > 1 else e}") from None
    return config


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a repeated key (YAML requires unique keys; PyYAML, and so
    Snakemake, would silently keep the last one and drop a whole section)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (the second would replace the first)", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def yaml_error_message(path: str | Path, error: yaml.YAMLError) -> str:
    """``<file>:<line>:<column>: not valid YAML (<problem>)``: one line an editor can jump to."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    return f"{where}: not valid YAML ({f'{context}: ' if context else ''}{problem})"


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise Natv2Error(f"{path}: config file not found")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        raise Natv2Error(yaml_error_message(path, e)) from None
    if not isinstance(data, dict):
        raise Natv2Error(f"{path}: expected a mapping of config keys at the top level")
    return data


def merge_files(paths: list[str | Path], overrides: Mapping | None = None) -> dict:
    config: dict = {}
    for path in paths:
        config = deep_merge(config, read_yaml(path))
    if overrides:
        config = deep_merge(config, overrides)
    return config


def settings_from_dict(config: Mapping[str, Any]) -> Settings:
    """Validate a merged config dict and build :class:`Settings`."""
    config = validate(copy.deepcopy(dict(config)))
    fields = {f.name for f in dataclasses.fields(Settings)} - {"raw"}
    typed = {k: v for k, v in config.items() if k in fields}
    settings = _build(Settings, typed, "config")
    return dataclasses.replace(settings, raw=config)


def load_settings(paths: list[str | Path] | str | Path | None = None, overrides: Mapping | None = None) -> Settings:
    """Merge the YAML files ``paths`` (default: config/config.yaml), then ``overrides``; validate."""
    if paths is None:
        paths = [DEFAULT_CONFIG]
    elif isinstance(paths, (str, Path)):
        paths = [paths]
    return settings_from_dict(merge_files(list(paths), overrides))


def add_config_argument(parser) -> None:
    """The ``--config`` option every step shares (repeatable; later files override earlier)."""
    parser.add_argument(
        "--config",
        action="append",
        metavar="YAML",
        help="config file(s), merged in order onto config/config.yaml (as snakemake --configfile)",
    )


def settings_from_args(args) -> Settings:
    """config/config.yaml, then each ``--config`` file merged onto it (as Snakemake's ``--configfile``)."""
    return load_settings([DEFAULT_CONFIG, *(args.config or [])])
