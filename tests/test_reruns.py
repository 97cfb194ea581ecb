"""Trustworthy reruns (issue 12): each run reads its own config, changed data reruns the split,
config files are merged as Snakemake merges them and their YAML errors name file and line.

The workflow tests run in temporary copies of the workflow (tests/test_workflow.py's helpers):
dry runs where they prove the point, real `split` jobs (seconds) where metadata must exist.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_workflow import BIN, ENV, job_counts, make_workdir, smk

from natv2.cli import main
from natv2.config import DEFAULT_CONFIG, load_settings, read_yaml, settings_from_args
from natv2.errors import Natv2Error
from natv2.manifest import manifest_hash

# ---------------------------------------------------------------------------------------------
# helpers


def digits_entry() -> dict:
    return {"kind": "digits", "image_size": 16, "resolutions": [16]}


def write_png(path: Path, value: int, size: int = 8) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size, size, 3), value, dtype=np.uint8)
    pixels[0, 0] = (value * 7) % 256  # each image its own bytes
    Image.fromarray(pixels).save(path)


def fake_imagefolder(root: Path, classes: int = 3, per_class: int = 10) -> Path:
    for c in range(classes):
        for i in range(per_class):
            write_png(root / "train" / f"class{c}" / f"{i}.png", 40 * c + i)
    return root


def config_path_of(proc: subprocess.CompletedProcess) -> str:
    """The merged config a dry run's (printed) shell command passes to its step."""
    match = re.search(r"--config (\S+)", proc.stdout + proc.stderr)
    assert match, proc.stdout[-2000:] + proc.stderr[-2000:]
    return match.group(1)


# ---------------------------------------------------------------------------------------------
# 1. one merged config per run


def test_concurrent_runs_each_read_the_config_they_were_started_with(tmp_path: Path):
    work = make_workdir(tmp_path)
    datasets = {"da": digits_entry(), "db": digits_entry()}
    (work / "a.yaml").write_text(yaml.safe_dump({"data": {"val_size": 0.1}, "datasets": datasets}))
    (work / "b.yaml").write_text(yaml.safe_dump({"data": {"val_size": 0.3}, "datasets": datasets}))
    target = {"a": "results/da/data/split.json", "b": "results/db/data/split.json"}

    # a parse with another config (a dry run here) leaves the file run a's jobs read untouched
    path_a = config_path_of(smk(work, "-n", "-p", target["a"], configfiles=("a.yaml",)))
    text_a = (work / path_a).read_text()
    path_b = config_path_of(smk(work, "-n", "-p", target["b"], configfiles=("b.yaml",)))
    assert path_b != path_a
    assert (work / path_a).read_text() == text_a
    assert yaml.safe_load(text_a)["data"]["val_size"] == 0.1

    # two real runs started together in one folder (different targets, so Snakemake's lock
    # lets both go): each split is made with its own run's val_size
    procs = {
        name: subprocess.Popen([str(BIN / "snakemake"), "--cores", "1", target[name], "--configfile", f"{name}.yaml"],
                               cwd=work, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name in ("a", "b")
    }
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        # Snakemake 9 races itself at exit: each run removes the shared .snakemake/locks folder,
        # and the second rmtree can find it gone (persistence/file.py _delete_locks) after every
        # job finished; that exit code says nothing about the outputs, which are checked below
        unlock_race = "_delete_locks" in out and "FileNotFoundError" in out and "steps (100%) done" in out
        assert proc.returncode == 0 or unlock_race, f"run {name}:\n{out[-4000:]}"
    split_a = json.loads((work / target["a"]).read_text())
    split_b = json.loads((work / target["b"]).read_text())
    assert (split_a["val_size"], split_b["val_size"]) == (0.1, 0.3)
    assert split_a["counts"]["val"] < split_b["counts"]["val"]

    # each run still sees nothing to do, also after an edit of a key the split does not read
    # (a new merged config file, so a new path in the command: not a rerun trigger)
    (work / "unrelated.yaml").write_text(yaml.safe_dump({"search": {"pop_size": 13}}))
    for name in ("a", "b"):
        proc = smk(work, "-n", target[name], configfiles=(f"{name}.yaml", "unrelated.yaml"))
        assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-2000:]


# ---------------------------------------------------------------------------------------------
# 2. changed data is noticed


def test_manifest_changes_with_the_images_and_classes_only(tmp_path: Path):
    root = fake_imagefolder(tmp_path / "folder", classes=2, per_class=3)
    before = manifest_hash(root)
    assert manifest_hash(root) == before  # untouched: same hash
    (root / "train" / ".DS_Store").write_text("x")  # not an image the loader reads
    (root / "README.txt").write_text("about the data")
    assert manifest_hash(root) == before

    seen = {before}
    write_png(root / "train" / "class0" / "new.png", 200)  # added image
    seen.add(manifest_hash(root))
    (root / "train" / "class0" / "new.png").unlink()  # removed again: back to the first state
    assert manifest_hash(root) == before
    (root / "train" / "class1" / "0.png").unlink()  # removed image
    seen.add(manifest_hash(root))
    write_png(root / "train" / "class1" / "0.png", 99, size=12)  # replaced (other size)
    seen.add(manifest_hash(root))
    write_png(root / "train" / "class2" / "0.png", 5)  # a new class
    seen.add(manifest_hash(root))
    write_png(root / "test" / "class0" / "0.png", 5)  # an official test split
    seen.add(manifest_hash(root))
    assert len(seen) == 6
    assert manifest_hash(tmp_path / "nowhere") == "missing"


def test_adding_an_image_reruns_the_split_and_what_follows(tmp_path: Path):
    work = make_workdir(tmp_path / "work")
    root = fake_imagefolder(tmp_path / "images")
    entry = {"kind": "imagefolder", "root": str(root), "image_size": 16, "resolutions": [16],
             "val_size": 0.2, "test_size": 0.2}
    (work / "fake.yaml").write_text(yaml.safe_dump({"datasets": {"fake": entry}}))
    configs = ("tiny.yaml", "fake.yaml")
    split = "results/fake/data/split.json"
    smk(work, split, configfiles=configs)
    # a stand-in for the trained first phase (a dry run does not look inside it): the split's
    # consumer is done, so only a rerun of the split can make it run again
    phase = work / "results/fake/supernet/phases/full.pt"
    phase.parent.mkdir(parents=True)
    phase.write_bytes(b"trained")
    proc = smk(work, "-n", str(phase.relative_to(work)), configfiles=configs)
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]

    write_png(root / "train" / "class1" / "extra.png", 123)
    proc = smk(work, str(phase.relative_to(work)), "-n", "--quiet", "rules", configfiles=configs)
    assert job_counts(proc) == {"split": 1, "supernet_phase": 1}, proc.stdout[-3000:]


# ---------------------------------------------------------------------------------------------
# 11. YAML errors name file and line


BAD_YAML = "data:\n  val_size: 0.1\n   test_size: 0.2\n"  # line 3: indented one space too far
DUPLICATE_YAML = "data:\n  val_size: 0.1\nseed: 1\ndata:\n  test_size: 0.3\n"  # line 4: data again


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_YAML)
    with pytest.raises(Natv2Error, match=re.escape(f"{bad}:3:")):
        read_yaml(bad)
    code = main(["split", "--config", str(bad), "--dataset", "digits", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith(f"natv2: error: {bad}:3:13: not valid YAML") and "\n" not in err


def test_repeated_key_is_refused_with_file_and_line(tmp_path: Path):
    dup = tmp_path / "dup.yaml"
    dup.write_text(DUPLICATE_YAML)
    with pytest.raises(Natv2Error, match=re.escape(f"{dup}:4:1: not valid YAML (key 'data' appears twice")):
        read_yaml(dup)


def test_snakemake_configfile_with_a_repeated_key_stops_naming_file_and_line(tmp_path: Path):
    work = make_workdir(tmp_path)
    (work / "dup.yaml").write_text(DUPLICATE_YAML)
    proc = smk(work, "-n", configfiles=("tiny.yaml", "dup.yaml"), check=False)
    assert proc.returncode != 0
    assert re.search(r"dup\.yaml:4:1: not valid YAML \(key 'data' appears twice", proc.stdout + proc.stderr)
    assert not (work / "results").exists()


# ---------------------------------------------------------------------------------------------
# 14. `natv2 <step> --config` merges onto config/config.yaml


def test_step_config_is_merged_onto_the_default_config(tmp_path: Path):
    user = tmp_path / "my.yaml"
    user.write_text(yaml.safe_dump({"datasets": {"mydata": {"kind": "imagefolder", "root": "/data/mine"}},
                                    "search": {"pop_size": 7}}))
    settings = settings_from_args(argparse.Namespace(config=[str(user)]))
    # exactly what `snakemake --configfile my.yaml` validates (config/config.yaml, then my.yaml)
    assert settings.raw == load_settings([DEFAULT_CONFIG, user]).raw
    assert settings.search.pop_size == 7
    assert settings.dataset("digits").image_size == 16  # config/config.yaml's entry is kept
    assert settings.raw["workflow"]["eval_shards"] == 2  # config/config.yaml's, not the schema's 1
    assert settings.dataset("mydata").root == "/data/mine"
    # no --config: config/config.yaml alone, as before
    assert settings_from_args(argparse.Namespace(config=None)).raw == load_settings().raw
