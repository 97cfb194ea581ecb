"""Each training step augments as the dataset's split.json says (datasets.<key>.pad / flip), never
with the global ``data:`` defaults or ``train()``'s: digits must not train on mirrored digits."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from natv2.cli import main
from natv2.config import DEFAULT_CONFIG, load_settings

# pad 1 / no flip for digits; the global data: section keeps pad 4 / flip true
OVERRIDES = {
    "device": "cpu",
    "data": {"pad": 4, "flip": True},
    "datasets": {"digits": {"kind": "digits", "max_train": 60, "val_size": 40, "test_size": 80, "image_size": 8,
                            "resolutions": [8], "pad": 1, "flip": False}},
    "supernet": {"variant": "EE_D", "kernels": [3], "expands": [2, 3]},
    "supernet_train": {"batch_size": 30, "teacher_bn_images": 30,
                       "phases": {"full": {"epochs": 1, "warmup_epochs": 0.0}}},
    "warmup": {"head_epochs": 1, "supernet_epochs": 1, "batch_size": 30, "teacher_bn_images": 30},
    "adapt": {"epochs": 1, "batch_size": 30, "teacher_bn_images": 30, "top_n": 4},
    "finetune": {"patience": 1, "max_epochs": 1, "batch_size": 30, "bn_images": 30, "latency_repeats": 2},
}


def test_digits_default_is_not_mirrored():
    assert load_settings([DEFAULT_CONFIG]).dataset("digits").flip is False


def test_every_training_step_augments_as_split_json_says(tmp_path, monkeypatch):
    import natv2.train

    seen: list[tuple[int, bool]] = []
    real = natv2.train._epoch_batches

    def spy(*args, pad, flip, **kwargs):
        seen.append((pad, flip))
        return real(*args, pad=pad, flip=flip, **kwargs)

    monkeypatch.setattr(natv2.train, "_epoch_batches", spy)
    override = tmp_path / "overrides.yaml"
    override.write_text(yaml.safe_dump(OVERRIDES))
    config = ["--config", str(DEFAULT_CONFIG), "--config", str(override)]
    settings = load_settings([DEFAULT_CONFIG, override])
    assert main(["split", *config, "--dataset", "digits", "--out", str(tmp_path / "data")]) == 0
    split = tmp_path / "data" / "split.json"
    meta = json.loads(split.read_text())
    assert (meta["pad"], meta["flip"]) == (1, False)

    def ran(step: str, args: list[str]) -> None:
        seen.clear()
        assert main([step, *config, "--data", str(split), *args]) == 0
        assert seen and set(seen) == {(1, False)}, step

    ran("supernet", ["--phase", "full", "--out", str(tmp_path / "full.pt"), "--no-progress"])
    ran("warmup", ["--supernet", str(tmp_path / "full.pt"), "--out", str(tmp_path / "warmup.pt"), "--no-progress"])

    from natv2.nets.checkpoint import load_supernet

    space = load_supernet(tmp_path / "warmup.pt")[0].space
    rng = np.random.default_rng(0)
    genomes = [space.to_string(g) for g in space.sample(6, rng, "natv2")]
    archive = pd.DataFrame({"genome": genomes, **{o: rng.uniform(1, 50, 6) for o in settings.search.objectives}})
    archive.to_csv(tmp_path / "archive.csv", index=False)
    ran("adapt", ["--supernet", str(tmp_path / "warmup.pt"), "--archive", str(tmp_path / "archive.csv"),
                  "--iteration", "1", "--out", str(tmp_path / "adapted.pt")])

    genome = space.smallest().copy()
    genome[space.exit_position] = space.n_exits - 1  # an early exit: the member goes through AEP
    pd.DataFrame({"id": [0], "genome": [space.to_string(space.validate(genome))], "top1_err": [50.0]}).to_csv(
        tmp_path / "front.csv", index=False)
    ran("finetune", ["--supernet", str(tmp_path / "adapted.pt"), "--front", str(tmp_path / "front.csv"), "--id", "0",
                     "--out", str(tmp_path / "nets" / "0")])
    assert "aep_exits" in json.loads((tmp_path / "nets" / "0" / "metrics.json").read_text())


def test_a_split_without_its_augmentation_is_refused(tmp_path):
    from natv2.errors import Natv2Error
    from natv2.splits import load_data

    override = tmp_path / "overrides.yaml"
    override.write_text(yaml.safe_dump({"datasets": {"digits": {"kind": "digits", "image_size": 8}}}))
    assert main(["split", "--config", str(DEFAULT_CONFIG), "--config", str(override), "--dataset", "digits",
                 "--out", str(tmp_path)]) == 0
    assert load_data(tmp_path / "split.json").flip is False
    meta = json.loads((tmp_path / "split.json").read_text())
    del meta["flip"]
    (tmp_path / "split.json").write_text(json.dumps(meta))
    with pytest.raises(Natv2Error, match="missing flip.*re-run natv2 split"):
        load_data(tmp_path / "split.json")
