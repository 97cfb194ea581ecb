"""Extended progressive shrinking: which phases run, what each unlocks, and the phase steps."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from natv2.cli import main
from natv2.shrinking import PHASE_NAMES, get_phase, phase_sampler, phases_for
from natv2.space import SearchSpace

OFA = SearchSpace(resolutions=(24, 32))
EE = SearchSpace(resolutions=(24, 32), n_exits=5)


def sampled(space: SearchSpace, phase: str, n: int = 300) -> dict[str, set]:
    sample = phase_sampler(space, get_phase(phase))
    rng = np.random.default_rng(0)
    seen: dict[str, set] = {"kernel": set(), "expand": set(), "depth": set(), "resolution": set(), "exit": set()}
    for _ in range(n):
        arch = space.decode(sample(rng))
        seen["resolution"].add(arch.resolution)
        seen["exit"].add(arch.exit)
        seen["depth"].update(arch.depths)
        for stage in arch.stages:
            for k, e in stage:
                seen["kernel"].add(k)
                seen["expand"].add(e)
    return seen


def test_phases_that_do_not_apply_are_skipped():
    assert phases_for(OFA) == ["full", "kernel", "depth1", "depth2", "expand1", "expand2"]
    assert phases_for(EE) == ["full", "kernel", "exit", "depth1", "depth2", "expand1", "expand2"]
    with pytest.raises(Exception, match="expected one of full, kernel"):
        get_phase("width")


@pytest.mark.parametrize(
    "phase, kernels, depths, expands",
    [
        ("full", {7}, {4}, {6}),
        ("kernel", {3, 5, 7}, {4}, {6}),
        ("depth1", {3, 5, 7}, {3, 4}, {6}),
        ("depth2", {3, 5, 7}, {2, 3, 4}, {6}),
        ("expand1", {3, 5, 7}, {2, 3, 4}, {4, 6}),
        ("expand2", {3, 5, 7}, {2, 3, 4}, {3, 4, 6}),
    ],
)
def test_each_phase_unlocks_its_dimension_and_keeps_earlier_ones(phase, kernels, depths, expands):
    seen = sampled(OFA, phase)
    assert seen["kernel"] == kernels and seen["depth"] == depths and seen["expand"] == expands
    assert seen["resolution"] == {24, 32}  # elastic resolution in every phase, as in OFA
    assert seen["exit"] == {None}


def test_level_phase_has_the_original_two_steps_of_branch_sets():
    """OFAv2 ``OFA_mbv3_extended/train/utils.py:30-57`` (task net_width): phase 1 samples blocks
    with 2 or 3 active branches (net_width_list "2,3"), phase 2 with 1, 2 or 3; earlier phases
    keep all three (net_width_list "3", key 7); the keys per size are ``get_valid_nw_keys``
    (``networks/nets/my_networks.py:403-454``)."""
    space = SearchSpace(resolutions=(32,), levels=(1, 2, 3))
    assert phases_for(space) == ["full", "kernel", "level1", "level2", "depth1", "depth2", "expand1", "expand2"]

    def branch_sets(phase):
        sample, rng = phase_sampler(space, get_phase(phase)), np.random.default_rng(0)
        return {v for _ in range(200) for st in space.decode(sample(rng)).branches for v in st}

    assert branch_sets("full") == branch_sets("kernel") == {7}
    assert branch_sets("level1") == {3, 5, 6, 7}  # two or three branches
    assert branch_sets("level2") == branch_sets("expand2") == set(range(1, 8))


def test_exit_gene_is_locked_at_the_last_exit_until_the_exit_phase():
    assert sampled(EE, "kernel")["exit"] == {5}
    assert sampled(EE, "exit")["exit"] == {1, 2, 3, 4, 5}
    assert sampled(EE, "exit")["depth"] == {4}  # depth still locked in the exit phase
    assert sampled(EE, "expand2")["exit"] == {1, 2, 3, 4, 5}


TINY = {
    "data": {"image_size": 16},
    "datasets": {"digits": {"kind": "digits", "max_train": 64}},
    "supernet": {"resolutions": [12, 16], "kernels": [3, 5], "expands": [2, 3], "stem_stride": 1},
    "supernet_train": {"batch_size": 32, "teacher_bn_images": 32,
                       "phases": {name: {"epochs": 1, "warmup_epochs": 0.0} for name in PHASE_NAMES}},
    "warmup": {"batch_size": 32, "teacher_bn_images": 32, "subnets_per_step": 2},
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("shrink")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    assert main(["split", "--config", str(config), "--dataset", "digits", "--out", str(root / "data")]) == 0
    return root, str(config), str(root / "data" / "split.json")


def test_phase_steps_write_checkpoints_and_chain(tiny_run, capsys):
    from natv2.nets.checkpoint import load_supernet

    root, config, split = tiny_run
    common = ["supernet", "--config", config, "--data", split, "--no-progress"]
    assert main(common + ["--phase", "kernel", "--out", str(root / "k.pt")]) == 2
    assert "--init" in capsys.readouterr().err

    assert main(common + ["--phase", "full", "--out", str(root / "full.pt")]) == 0
    assert main(common + ["--phase", "kernel", "--init", str(root / "full.pt"), "--out", str(root / "kernel.pt")]) == 0
    assert main(common + ["--phase", "level1", "--init", str(root / "kernel.pt"), "--out", str(root / "level.pt")]) == 0
    full, _ = load_supernet(root / "full.pt")
    kernel, meta = load_supernet(root / "kernel.pt")
    level, level_meta = load_supernet(root / "level.pt")
    assert [p["phase"] for p in meta["phases"]] == ["full", "kernel"]
    assert meta["phases"][1]["modes"] == {"kernel": "all", "depth": "max", "expand": "max"}
    assert len(meta["phases"][1]["history"]) == 1
    # the kernel phase trained the weights; the level phase does not apply to ofa_mbv3 and keeps them
    changed = [k for k, v in kernel.state_dict().items() if not torch.equal(v, full.state_dict()[k])]
    assert any("stages" in k for k in changed)
    assert level_meta["phases"][-1] == {"phase": "level1", "skipped": True, "reason": "the variant has no elastic level"}
    assert all(torch.equal(v, kernel.state_dict()[k]) for k, v in level.state_dict().items())
    assert not any((root / ".resume").glob("*"))  # resume state is removed once the phase output is whole


def test_warmup_step_trains_from_a_source_supernet(tiny_run):
    from natv2.nets.checkpoint import load_supernet

    root, config, split = tiny_run
    source = root / "full.pt"
    if not source.is_file():
        assert main(["supernet", "--config", config, "--data", split, "--no-progress", "--phase", "full",
                     "--out", str(source)]) == 0
    out = root / "warmup.pt"
    assert main(["warmup", "--config", config, "--data", split, "--supernet", str(source), "--out", str(out),
                 "--no-progress"]) == 0
    before, _ = load_supernet(source)
    after, meta = load_supernet(out)
    assert meta["warmup"]["new_head"] is False  # the source was trained on these very classes
    assert len(meta["warmup"]["head_history"]) == 1 and len(meta["warmup"]["supernet_history"]) == 1
    assert not torch.equal(before.head.classifier.weight, after.head.classifier.weight)


class _Killed(Exception):
    pass


def test_killed_phase_resumes_to_the_same_weights(tiny_run, tmp_path, monkeypatch):
    import natv2.train
    from natv2.config import load_settings
    from natv2.data import load_data
    from natv2.nets import build_supernet
    from natv2.shrinking import run_phase

    root, config, split = tiny_run
    settings = load_settings([config], overrides={"supernet_train": {"phases": {"kernel": {"epochs": 2}}}})
    data = load_data(split)

    def fresh():
        torch.manual_seed(0)
        return build_supernet(settings.supernet, data.n_classes)

    common = dict(device=torch.device("cpu"), seed=0, progress=False)
    straight = fresh()
    run_phase(straight, "kernel", data, settings.supernet_train, **common)

    state = tmp_path / "kernel.state"
    save = natv2.train._save_state

    def save_then_die(path, **kw):
        save(path, **kw)
        if kw["epoch"] == 1:
            raise _Killed  # the process dies right after the state of epoch 1 is on disk

    monkeypatch.setattr(natv2.train, "_save_state", save_then_die)
    with pytest.raises(_Killed):
        run_phase(fresh(), "kernel", data, settings.supernet_train, resume=state, **common)
    monkeypatch.setattr(natv2.train, "_save_state", save)
    resumed = fresh()
    summary = run_phase(resumed, "kernel", data, settings.supernet_train, resume=state, **common)
    assert [r["epoch"] for r in summary["history"]] == [1, 2]
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_paper_config_holds_the_original_level_schedule():
    """OFAv2 ``OFA_mbv3_extended/train/utils.py:30-57`` (task net_width): phase 1 = 25 epochs at
    lr 2.5e-3 without warm-up, phase 2 = 120 epochs at 7.5e-3 with 5 warm-up epochs, both with
    dynamic_batch_size 2 (subnets per step); the laptop defaults keep the 1 : 3 learning rates."""
    from natv2.config import load_settings

    paper = load_settings(Path(__file__).resolve().parents[1] / "config" / "paper.yaml").supernet_train.phases
    assert (paper.level1.epochs, paper.level1.lr, paper.level1.warmup_epochs, paper.level1.subnets_per_step) == (25, 2.5e-3, 0, 2)
    assert (paper.level2.epochs, paper.level2.lr, paper.level2.warmup_epochs, paper.level2.subnets_per_step) == (120, 7.5e-3, 5, 2)
    laptop = load_settings().supernet_train.phases
    assert laptop.level2.lr == pytest.approx(3 * laptop.level1.lr) and laptop.level1.epochs >= 1
