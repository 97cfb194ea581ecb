"""Resume state belongs to its inputs (natv2.resume): reruns after an upstream change start over."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from natv2.cli import main
from natv2.errors import Natv2Error
from natv2.resume import ResumeFolder, fingerprint

TINY = {
    "data": {"image_size": 16},
    "datasets": {"digits": {"kind": "digits", "max_train": 64}},
    "supernet": {"resolutions": [16], "kernels": [3, 5], "expands": [2, 3], "stem_stride": 1},
    "supernet_train": {"batch_size": 32, "teacher_bn_images": 32,
                       "phases": {"full": {"epochs": 1, "warmup_epochs": 0.0},
                                  "kernel": {"epochs": 1, "warmup_epochs": 0.0}}},
    "adapt": {"epochs": 1, "batch_size": 32, "teacher_bn_images": 32, "top_n": 4, "subnets_per_step": 1},
    "warmup": {"batch_size": 32, "teacher_bn_images": 32, "subnets_per_step": 1},
}


# --------------------------------------------------------------------------------------------
# the folder itself


def test_same_inputs_resume_other_inputs_discard_with_a_log_line(tmp_path, caplog):
    (tmp_path / "in.csv").write_text("a\n1\n")
    stamp = fingerprint({"archive": tmp_path / "in.csv"}, {"seed": 0, "lr": (0.1,)})
    state = ResumeFolder(tmp_path / "s", stamp)
    state.path("train.pt").write_bytes(b"state")
    again = ResumeFolder(tmp_path / "s", fingerprint({"archive": tmp_path / "in.csv"}, {"seed": 0, "lr": (0.1,)}))
    assert again.path("train.pt").read_bytes() == b"state"  # same inputs: resumed
    (tmp_path / "in.csv").write_text("a\n2\n")  # an upstream change, same size
    with caplog.at_level(logging.INFO, logger="natv2.resume"):
        other = ResumeFolder(tmp_path / "s", fingerprint({"archive": tmp_path / "in.csv"}, {"seed": 0, "lr": (0.1,)}))
    assert not other.path("train.pt").exists()
    assert f"{tmp_path / 's'}: resume state discarded, made from other inputs: files.archive differ" in caplog.text
    other.remove()
    assert not (tmp_path / "s").exists()


def test_a_folder_without_fingerprint_is_discarded(tmp_path, caplog):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "train.pt").write_bytes(b"old layout")
    with caplog.at_level(logging.INFO, logger="natv2.resume"):
        ResumeFolder(tmp_path / "s", {"seed": 1})
    assert not (tmp_path / "s" / "train.pt").exists() and "no fingerprint.json" in caplog.text


@pytest.mark.parametrize("damage", ["folder", "json"])
def test_an_unreadable_fingerprint_keeps_the_state(tmp_path, damage):
    from natv2.finetune import FinetuneState

    for make in (lambda folder: ResumeFolder(folder, {"seed": 0}), lambda folder: FinetuneState(folder, {"seed": 0})):
        folder = tmp_path / f"s{id(make)}"
        make(folder).path("step1.pt").write_bytes(b"hours of training")
        stamp = folder / "fingerprint.json"
        stamp.unlink()
        if damage == "folder":
            stamp.mkdir()  # reading it is an OS error (IsADirectoryError)
        else:
            stamp.write_text('{"seed": ')
        with pytest.raises(Natv2Error, match=r"fingerprint.json: cannot read the resume fingerprint .*state is kept"):
            make(folder)
        assert (folder / "step1.pt").read_bytes() == b"hours of training"


# --------------------------------------------------------------------------------------------
# the steps


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A digits split, a config and a trained full phase (the supernet the steps start from)."""
    root = tmp_path_factory.mktemp("resume")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    assert main(["split", "--config", str(config), "--dataset", "digits", "--out", str(root / "data")]) == 0
    split = root / "data" / "split.json"
    assert main(["supernet", "--config", str(config), "--data", str(split), "--phase", "full", "--no-progress",
                 "--out", str(root / "full.pt")]) == 0
    return root, str(config), str(split)


def _weights(path) -> dict:
    from natv2.nets.checkpoint import load_supernet

    return load_supernet(path)[0].state_dict()


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(v, b[k]) for k, v in a.items())


def _archive(path, supernet, seed: int) -> str:
    from natv2.nets.checkpoint import load_supernet

    space = load_supernet(supernet)[0].space
    rng = np.random.default_rng(seed)
    genomes = space.sample(8, rng)
    pd.DataFrame({"genome": [space.to_string(g) for g in genomes], "top1_err": rng.uniform(10, 90, 8),
                  "params": rng.uniform(1, 2, 8)}).to_csv(path, index=False)
    return str(path)


def test_adapt_rerun_after_an_archive_change_does_not_reuse_the_old_state(tiny, tmp_path):
    root, config, split = tiny

    def adapt(archive, out):
        assert main(["adapt", "--config", config, "--data", split, "--supernet", str(root / "full.pt"),
                     "--archive", archive, "--iteration", "1", "--out", str(out)]) == 0
        return _weights(out)

    first = adapt(_archive(tmp_path / "a.csv", root / "full.pt", 0), tmp_path / "iter1" / "supernet.pt")
    assert not any((tmp_path / "iter1" / ".resume").iterdir())  # the state is gone once the output is written
    # new candidates upstream: the same command in the same folder must train anew
    second = adapt(_archive(tmp_path / "b.csv", root / "full.pt", 1), tmp_path / "iter1" / "supernet.pt")
    fresh = adapt(str(tmp_path / "b.csv"), tmp_path / "clean" / "supernet.pt")
    assert _same(second, fresh) and not _same(second, first)
    # no clock reading in the checkpoint: the same training writes the same bytes
    assert (tmp_path / "iter1" / "supernet.pt").read_bytes() == (tmp_path / "clean" / "supernet.pt").read_bytes()


class _Killed(Exception):
    pass


def test_killed_phase_then_a_changed_init_starts_over(tiny, tmp_path, monkeypatch, caplog):
    import natv2.nets.checkpoint as checkpoint
    from natv2.nets.checkpoint import load_supernet, save_supernet

    root, config, split = tiny
    net, meta = load_supernet(root / "full.pt")
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.5)  # an upstream change: another full phase
    save_supernet(tmp_path / "full_b.pt", net, meta)

    def kernel(init, out):
        return main(["supernet", "--config", config, "--data", split, "--phase", "kernel", "--init", str(init),
                     "--no-progress", "--out", str(out)])

    def die(*args, **kwargs):
        raise _Killed  # killed after the last epoch's state is on disk, before the output

    monkeypatch.setattr(checkpoint, "save_supernet", die)
    with pytest.raises(_Killed):
        kernel(root / "full.pt", tmp_path / "phases" / "kernel.pt")
    assert any((tmp_path / "phases" / ".resume").iterdir())  # the kill left the phase's state
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="natv2.resume"):
        assert kernel(tmp_path / "full_b.pt", tmp_path / "phases" / "kernel.pt") == 0
    assert "resume state discarded, made from other inputs: files.init differ" in caplog.text
    assert kernel(tmp_path / "full_b.pt", tmp_path / "clean" / "kernel.pt") == 0
    assert _same(_weights(tmp_path / "phases" / "kernel.pt"), _weights(tmp_path / "clean" / "kernel.pt"))
    assert not any((tmp_path / "phases" / ".resume").iterdir())


def test_warmup_state_of_another_source_is_discarded(tiny, tmp_path, monkeypatch, caplog):
    import natv2.nets.checkpoint as checkpoint
    from natv2.nets.checkpoint import load_supernet, save_supernet

    root, config, split = tiny
    net, meta = load_supernet(root / "full.pt")
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.5)
    save_supernet(tmp_path / "source_b.pt", net, meta)

    def warmup(source, out):
        return main(["warmup", "--config", config, "--data", split, "--supernet", str(source), "--no-progress",
                     "--out", str(out)])

    monkeypatch.setattr(checkpoint, "save_supernet", lambda *a, **k: (_ for _ in ()).throw(_Killed()))
    with pytest.raises(_Killed):
        warmup(root / "full.pt", tmp_path / "run" / "warmup.pt")
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="natv2.resume"):
        assert warmup(tmp_path / "source_b.pt", tmp_path / "run" / "warmup.pt") == 0
    assert "files.supernet differ" in caplog.text
    assert warmup(tmp_path / "source_b.pt", tmp_path / "clean" / "warmup.pt") == 0
    assert _same(_weights(tmp_path / "run" / "warmup.pt"), _weights(tmp_path / "clean" / "warmup.pt"))
    assert (tmp_path / "run" / "warmup.pt").read_bytes() == (tmp_path / "clean" / "warmup.pt").read_bytes()
    assert not any((tmp_path / "run" / ".resume").iterdir())
