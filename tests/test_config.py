"""natv2.config: merged YAML files, schema validation with the key named, typed settings."""
from __future__ import annotations

from pathlib import Path

import pytest

from natv2.cli import main
from natv2.config import DEFAULT_CONFIG, DatasetConfig, Settings, load_settings
from natv2.errors import Natv2Error


def test_defaults_load_into_typed_settings():
    settings = load_settings()
    assert isinstance(settings, Settings)
    assert {"digits", "cifar10", "cifar100"} <= set(settings.datasets)
    digits = settings.dataset("digits")
    assert isinstance(digits, DatasetConfig)
    assert (digits.key, digits.kind, digits.image_size, digits.val_size, digits.test_size) == ("digits", "digits", 16, 0.1, 0.2)
    assert (digits.pad, digits.flip, digits.max_train) == (4, False, None)  # digits are not mirror-symmetric
    cifar = settings.dataset("cifar10")
    assert (cifar.kind, cifar.name, cifar.download) == ("torchvision", "CIFAR10", True)
    # the CIFAR-10 laptop default trades accuracy against MACs (NAT's CIFAR-10 trade-off), digits against params
    assert settings.for_dataset("cifar10").search.objectives == ("top1_err", "macs")
    assert settings.for_dataset("digits").search.objectives == ("top1_err", "params")
    # fine-tuned members: 3 on CIFAR-10 (the 30-minute laptop budget), 4 on digits
    assert (settings.for_dataset("cifar10").finetune.max_members, settings.for_dataset("digits").finetune.max_members) == (3, 4)


def test_a_dataset_entry_overrides_the_data_defaults():
    settings = load_settings(overrides={"data": {"image_size": 48}, "datasets": {"digits": {"image_size": 16, "pad": 2}}})
    assert settings.data.image_size == 48
    digits = settings.dataset("digits")
    assert (digits.image_size, digits.pad, digits.val_size) == (16, 2, 0.1)
    assert settings.dataset("cifar10").image_size == 48


def test_user_dataset_from_an_extra_config_file(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("datasets:\n  mydata:\n    kind: imagefolder\n    root: /data/flowers\n    val_size: 500\n")
    settings = load_settings([DEFAULT_CONFIG, user])
    mine = settings.dataset("mydata")
    assert (mine.kind, mine.root, mine.val_size, mine.image_size) == ("imagefolder", "/data/flowers", 500, 32)
    assert settings.dataset("digits").kind == "digits"  # the defaults' entries stay


def test_dataset_overrides_apply_to_that_dataset_only():
    settings = load_settings(overrides={"datasets": {"mydata": {
        "kind": "imagefolder", "root": "/data", "overrides": {"finetune": {"max_epochs": 3}, "supernet_train": {"phases": {"full": {"epochs": 2}}}}}}})
    assert settings.finetune.max_epochs == 10  # the top level is untouched
    mine = settings.for_dataset("mydata")
    assert mine.finetune.max_epochs == 3 and mine.finetune.lr == settings.finetune.lr  # merged, not replaced
    assert mine.supernet_train.phases.full.epochs == 2
    assert mine.supernet_train.phases.full.lr == settings.supernet_train.phases.full.lr
    assert settings.for_dataset("cifar100") is settings  # an entry without overrides: the settings themselves
    assert mine.for_dataset("mydata").finetune == mine.finetune  # applying twice changes nothing


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"search": {"iterations": 3}}, "config key datasets.x.overrides.search: {'iterations': 3} should not be valid"),
        ({"data": {"pad": 1}}, "config key datasets.x.overrides: Additional properties are not allowed ('data' was unexpected)"),
        ({"finetune": {"max_epochz": 3}}, "datasets.x.overrides: config key finetune: Additional properties are not allowed"),
    ],
)
def test_dataset_overrides_are_validated(overrides, message):
    with pytest.raises(Natv2Error) as info:
        load_settings(overrides={"datasets": {"x": {"kind": "imagefolder", "root": "/d", "overrides": overrides}}}).for_dataset("x")
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"data": {"val_size": "big"}}, "config key data.val_size: 'big' is not of type 'number'"),
        ({"data": {"image_size": 4}}, "config key data.image_size: 4 is less than the minimum of 8"),
        ({"data": {"pad": 1.5}}, "config key data.pad: 1.5 is not of type 'integer'"),
        ({"datasets": {"digits": {"download": "yes"}}}, "config key datasets.digits.download: 'yes' is not of type 'boolean'"),
        ({"datasets": {"digits": {"max_train": 3}}}, "config key datasets.digits.max_train: 3 is less than the minimum of 10"),
        ({"datasets": {"digits": {"val_size": 0}}}, "config key datasets.digits.val_size: 0 is less than or equal to the minimum of 0"),
        ({"datasets": {"x": {"kind": "lmdb"}}}, "config key datasets.x.kind: 'lmdb' is not one of"),
        ({"datasets": {"x": {"root": "/data"}}}, "config key datasets.x: 'kind' is a required property"),
        ({"datasets": {"digits": {"colour": True}}}, "config key datasets.digits: Additional properties are not allowed ('colour' was unexpected)"),
        ({"seed": -1}, "config key seed: -1 is less than the minimum of 0"),
    ],
)
def test_schema_rejects_bad_values_naming_the_key(overrides, message):
    with pytest.raises(Natv2Error) as info:
        load_settings(overrides=overrides)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_bad_yaml_files(tmp_path):
    with pytest.raises(Natv2Error, match="config file not found"):
        load_settings(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(Natv2Error, match=r"broken.yaml:2:1: not valid YAML"):
        load_settings(broken)


def test_unknown_dataset_key_lists_the_known_ones():
    with pytest.raises(Natv2Error, match=r"unknown dataset key 'flowers': the config defines .*digits"):
        load_settings().dataset("flowers")


def test_cli_reports_a_schema_error_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets:\n  digits:\n    image_size: large\n")
    code = main(["split", "--config", str(DEFAULT_CONFIG), "--config", str(bad), "--dataset", "digits", "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == "natv2: error: config key datasets.digits.image_size: 'large' is not of type 'integer'"
    assert not (tmp_path / "out").exists()


def test_every_schema_default_is_the_value_in_config_yaml():
    """config.yaml's header sends readers to the schema for each key's default: they must agree."""
    import yaml

    repo = Path(__file__).resolve().parents[1]
    schema = yaml.safe_load((repo / "workflow/schemas/config.schema.yaml").read_text())
    config = yaml.safe_load((repo / "config/config.yaml").read_text())
    compared, differ = 0, []

    def walk(node: dict, values, path: str) -> None:
        nonlocal compared
        for key, sub in (node.get("properties") or {}).items():
            if not isinstance(values, dict) or key not in values:
                continue
            value = values[key]
            if isinstance(value, dict):
                walk(sub, value, f"{path}{key}.")
            elif "default" in sub:
                compared += 1
                if sub["default"] != value:
                    differ.append(f"{path}{key}: schema {sub['default']!r}, config.yaml {value!r}")

    walk(schema, config, "")
    assert compared >= 150, compared  # the walk reaches every section (160 keys on 2026-12-07)
    assert differ == []
