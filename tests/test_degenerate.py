"""A supernet whose head does not fit the dataset is refused in one line, not scored (issue 12.6)."""
from __future__ import annotations

import pandas as pd
import torch
import yaml

from natv2.cli import main
from natv2.config import DEFAULT_CONFIG, load_settings


def test_steps_refuse_a_supernet_with_another_class_count(tmp_path, capsys):
    from natv2.nets import build_supernet
    from natv2.nets.checkpoint import save_supernet

    override = tmp_path / "overrides.yaml"
    override.write_text(yaml.safe_dump({"device": "cpu", "datasets": {"digits": {
        "kind": "digits", "max_train": 60, "val_size": 40, "test_size": 80, "image_size": 8, "resolutions": [8]}}}))
    config = ["--config", str(DEFAULT_CONFIG), "--config", str(override)]
    settings = load_settings([DEFAULT_CONFIG, override])
    assert main(["split", *config, "--dataset", "digits", "--out", str(tmp_path / "data")]) == 0
    split = str(tmp_path / "data" / "split.json")
    torch.manual_seed(0)
    supernet = build_supernet(settings.supernet_for("digits"), 3)  # the digits have 10 classes
    save_supernet(tmp_path / "three.pt", supernet)
    genome = supernet.space.to_string(supernet.space.smallest())
    pd.DataFrame({"id": [0], "genome": [genome], "top1_err": [50.0]}).to_csv(tmp_path / "front.csv", index=False)
    pd.DataFrame({"genome": [genome], "top1_err": [50.0], "params": [1.0], "macs": [1.0], "latency_ms": [1.0]}).to_csv(
        tmp_path / "archive.csv", index=False)
    steps = {
        "evaluate": ["--genomes", str(tmp_path / "front.csv"), "--out", str(tmp_path / "eval.csv")],
        "adapt": ["--archive", str(tmp_path / "archive.csv"), "--iteration", "1", "--out", str(tmp_path / "a.pt")],
        "finetune": ["--front", str(tmp_path / "front.csv"), "--id", "0", "--out", str(tmp_path / "nets" / "0")],
    }
    for step, args in steps.items():
        capsys.readouterr()
        assert main([step, *config, "--data", split, "--supernet", str(tmp_path / "three.pt"), *args]) == 2, step
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "three.pt: the supernet predicts 3 classes" in err and "has 10" in err, step
    assert not (tmp_path / "eval.csv").exists() and not (tmp_path / "a.pt").exists()
    assert not (tmp_path / "nets" / "0").exists()
