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


# --------------------------------------------------------------------------------------------
# sections


@dataclass(frozen=True)
class DatasetConfig:
    """One entry of ``datasets:``, with the ``data:`` defaults filled in."""

    key: str
    kind: str
    name: str | None = None
    root: str | None = None
    download: bool = True
    image_size: int = 32
    val_size: float = 0.1
    test_size: float = 0.2
    max_train: int | None = None
    pad: int = 4
    flip: bool = True


@dataclass(frozen=True)
class DataConfig:
    image_size: int
    val_size: float
    test_size: float
    pad: int
    flip: bool


@dataclass(frozen=True)
class Settings:
    """Everything a step needs to know, built once from the merged config."""

    seed: int
    device: str
    results_dir: str
    datasets: Mapping[str, Mapping[str, Any]]
    data: DataConfig
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

    def dataset_dir(self, key: str) -> Path:
        return Path(self.results_dir) / key

    def torch_device(self):
        """The torch.device named by ``device`` (auto = cuda when available)."""
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise Natv2Error(f"config key device: {self.device!r} asked for, but no CUDA device is visible")
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
    """Merge ``update`` into a copy of ``base`` the way Snakemake merges config files."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
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


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise Natv2Error(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise Natv2Error(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
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
        help="config file(s), merged in order (default: config/config.yaml)",
    )


def settings_from_args(args) -> Settings:
    return load_settings(args.config or None)
