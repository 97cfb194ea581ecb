"""Extended progressive shrinking: which phases run, what each unlocks, and the phase steps."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from natv2.cli import main
from natv2.shrinking import PHASE_NAMES, get_phase, phase_sampler, phases_for, trained_phases
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
    assert phases_for(EE) == ["full", "kernel", "exit1", "exit2", "exit3", "exit4", "depth1", "depth2", "expand1",
                              "expand2"]
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


def test_exit_phase_is_ofav2s_four_sub_phases_of_active_exits():
    """OFA_mbv3_extended/train/utils.py:59-105: net_depth phases 1-4 with net_depth_list "4,5",
    "3,4,5", "2,3,4,5", "1,2,3,4,5"; the exit is drawn uniformly from the list (sample_active_subnet)."""
    assert sampled(EE, "kernel")["exit"] == {5}
    assert sampled(EE, "exit1")["exit"] == {4, 5}
    assert sampled(EE, "exit2")["exit"] == {3, 4, 5}
    assert sampled(EE, "exit3")["exit"] == {2, 3, 4, 5}
    assert sampled(EE, "exit4")["exit"] == {1, 2, 3, 4, 5}
    assert sampled(EE, "exit4")["depth"] == {4}  # depth still locked in the exit phases
    assert sampled(EE, "expand2")["exit"] == {1, 2, 3, 4, 5}
    sample, rng = phase_sampler(EE, get_phase("exit1")), np.random.default_rng(1)
    exits = [EE.decode(sample(rng)).exit for _ in range(2000)]
    assert 0.45 < exits.count(4) / 2000 < 0.55  # uniform over {4, 5}, not clamped


def test_paper_config_holds_ofav2s_exit_sub_phase_schedule():
    """OFA_mbv3_extended/train/utils.py:64-103: (epochs, lr, warm-up) 25/1.875e-3/0, 60/3.75e-3/5,
    90/7.5e-3/5, 120/1.5e-2/5, dynamic_batch_size 2."""
    from natv2.config import REPO_ROOT, load_settings

    phases = load_settings(REPO_ROOT / "config" / "paper.yaml").supernet_train.phases
    got = [(p.epochs, p.lr, p.warmup_epochs, p.subnets_per_step) for p in (phases.exit1, phases.exit2, phases.exit3, phases.exit4)]
    assert got == [(25, 0.001875, 0, 2), (60, 0.00375, 5, 2), (90, 0.0075, 5, 2), (120, 0.015, 5, 2)]


def test_full_phase_of_an_early_exit_net_trains_every_exit_on_the_weighted_loss():
    """OFA_mbv3_extended/run_manager/early_exit_run_manager.py:311-324 (loss = sum_i w_i * CE_i over
    the full net's exits) with w = [.06, .13, .20, .27, .34] (OFA_mbv3_extended/train/utils.py:286)."""
    import torch.nn.functional as F

    from natv2.config import load_settings
    from natv2.nets import build_supernet
    from natv2.shrinking import joint_exit_loss, run_phase
    from natv2.splits import DataBundle, ImageSet

    g = torch.Generator().manual_seed(0)

    def images(n):
        return ImageSet(torch.randint(0, 256, (n, 3, 12, 12), dtype=torch.uint8, generator=g),
                        torch.randint(0, 3, (n,), generator=g))

    data = DataBundle(["a", "b", "c"], 12, (0.5,) * 3, (0.25,) * 3, images(16), images(4), images(4))
    settings = load_settings(overrides={
        "supernet": {"variant": "EE_B", "resolutions": [12], "kernels": [3], "expands": [2], "stem_stride": 1},
        "supernet_train": {"batch_size": 8, "label_smoothing": 0.0,
                           "phases": {"full": {"epochs": 1, "warmup_epochs": 0.0}}},
    })
    torch.manual_seed(0)
    net = build_supernet(settings.supernet, data.n_classes)
    outs = [torch.randn(4, 3, generator=g) for _ in range(5)]
    y = torch.tensor([0, 1, 2, 0])
    expected = sum(w * F.cross_entropy(z, y) for w, z in zip([0.06, 0.13, 0.20, 0.27, 0.34], outs))
    assert float(joint_exit_loss(net.space)(outs, y)) == pytest.approx(float(expected), rel=1e-6)

    start = {k: v.clone() for k, v in net.state_dict().items()}
    summary = run_phase(net, "full", data, settings.supernet_train, device="cpu", seed=0, progress=False)
    assert summary["joint_exits"] is True and net.joint_exits is False
    for e in range(5):  # every exit head got gradients (before: exit 5 only)
        assert any(not torch.equal(v, start[k]) for k, v in net.state_dict().items()
                   if k.startswith(f"exits.{e}.") and v.dtype.is_floating_point), e
    kernel = run_phase(net, "kernel", data, settings.supernet_train, device="cpu", seed=0, progress=False)
    assert kernel.get("joint_exits", False) is False  # kernel: the sampled subnet's own exit, as OFAv2


def test_warmup_max_net_stage_trains_every_exit_of_an_early_exit_net():
    """NAT_extended/train/trainer.py:368-410 (TrainerEE: sum of weighted per-exit losses), run by
    run_nat_warmup.py:312-316 on the max net with all exits (get_active_all_exits_subnet, :293)."""
    from natv2.config import load_settings
    from natv2.nets import build_supernet
    from natv2.splits import DataBundle, ImageSet
    from natv2.warmup import warmup

    g = torch.Generator().manual_seed(1)

    def images(n):
        return ImageSet(torch.randint(0, 256, (n, 3, 12, 12), dtype=torch.uint8, generator=g),
                        torch.randint(0, 3, (n,), generator=g))

    data = DataBundle(["a", "b", "c"], 12, (0.5,) * 3, (0.25,) * 3, images(16), images(4), images(4))
    settings = load_settings(overrides={
        "supernet": {"variant": "EE_B", "resolutions": [12], "kernels": [3], "expands": [2], "stem_stride": 1},
        "warmup": {"batch_size": 8, "head_epochs": 1, "supernet_epochs": 0},
    })
    torch.manual_seed(0)
    net = build_supernet(settings.supernet, data.n_classes)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    summary = warmup(net, data, settings.warmup, device="cpu", seed=0, source_classes=data.classes, progress=False)
    assert summary["head_joint_exits"] is True and net.joint_exits is False
    for e in range(5):  # before: exit 5 only
        assert any(not torch.equal(v, start[k]) for k, v in net.state_dict().items()
                   if k.startswith(f"exits.{e}.") and v.dtype.is_floating_point), e


def test_paper_config_holds_natv2s_warmup():
    """run_nat_warmup.py:180-204: max net 100 epochs (per width) at 7.5e-3, warm-up 5, clip 5, wd 3e-4;
    then 150 supernet epochs at 7.5e-3, warm-up 10, 4 subnets per step, kd_ratio 1."""
    from natv2.config import REPO_ROOT, load_settings

    w = load_settings(REPO_ROOT / "config" / "paper.yaml").warmup
    assert (w.head_epochs, w.head_lr, w.head_warmup_epochs) == (100, 0.0075, 5)
    assert (w.supernet_epochs, w.lr, w.warmup_epochs, w.subnets_per_step) == (150, 0.0075, 10, 4)
    assert (w.grad_clip, w.weight_decay, w.momentum, w.kd_weight) == (5.0, 0.0003, 0.9, 1.0)


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


def test_source_without_phase_writes_only_the_variants_phases(tiny_run):
    from natv2.nets.checkpoint import load_supernet

    root, config, split = tiny_run
    out = root / "all" / "source.pt"
    assert main(["supernet", "--config", config, "--data", split, "--no-progress", "--out", str(out)]) == 0
    phases = phases_for(SearchSpace(resolutions=(12, 16), kernels=(3, 5), expands=(2, 3)))
    assert "level" not in phases and "exit" not in phases
    # no undeclared phases/level.pt or phases/exit.pt
    assert sorted(p.name for p in (root / "all" / "phases").iterdir() if p.is_file()) == sorted(f"{p}.pt" for p in phases)
    _, meta = load_supernet(out)
    assert [p["phase"] for p in meta["phases"]] == phases


def _tiny_settings(config: str):
    from natv2.config import DEFAULT_CONFIG, load_settings

    return load_settings([DEFAULT_CONFIG, config])  # as settings_from_args reads --config


def test_train_phase_writes_the_phase_checkpoint_and_its_meta(tiny_run, tmp_path, monkeypatch):
    """natv2.source_supernet.train_phase: new or loaded supernet, meta, resume state (training faked)."""
    import natv2.shrinking
    from natv2.errors import Natv2Error
    from natv2.nets.checkpoint import load_supernet, save_supernet
    from natv2.source_supernet import dataset_key, train_phase

    root, config, split = tiny_run
    settings = _tiny_settings(config)
    assert dataset_key(split) == "digits"
    seen = []

    def fake_phase(net, phase, data, cfg, *, resume, **kwargs):
        seen.append((phase, resume))
        return {"phase": phase, "fake": True}

    monkeypatch.setattr(natv2.shrinking, "run_phase", fake_phase)
    with pytest.raises(Natv2Error, match="phase kernel: needs --init"):
        train_phase(settings, split, "kernel", None, tmp_path / "k.pt", tmp_path / "state")
    train_phase(settings, split, "full", None, tmp_path / "full.pt", tmp_path / "state" / "full", progress=False)
    assert seen == [("full", tmp_path / "state" / "full" / "train.pt")]
    assert not (tmp_path / "state" / "full").exists()  # removed once the checkpoint is whole
    net, meta = load_supernet(tmp_path / "full.pt")
    assert meta["phase"] == "full" and meta["source"] == "train" and meta["phases"] == [{"phase": "full", "fake": True}]
    assert meta["classes"] == [str(i) for i in range(10)] and net.n_classes == 10
    # a rerun of a phase replaces its summary; the earlier phases' stay
    train_phase(settings, split, "kernel", tmp_path / "full.pt", tmp_path / "kernel.pt", tmp_path / "state" / "k")
    train_phase(settings, split, "kernel", tmp_path / "kernel.pt", tmp_path / "kernel2.pt", tmp_path / "state" / "k")
    assert [p["phase"] for p in load_supernet(tmp_path / "kernel2.pt")[1]["phases"]] == ["full", "kernel"]
    net.reset_classifier(3)
    save_supernet(tmp_path / "three.pt", net, meta)
    with pytest.raises(Natv2Error, match="predicts 3 classes"):
        train_phase(settings, split, "kernel", tmp_path / "three.pt", tmp_path / "k3.pt", tmp_path / "state" / "k3")


def test_train_phases_runs_the_variants_missing_phases_in_order(tiny_run, tmp_path, monkeypatch):
    import natv2.shrinking
    from natv2.nets.checkpoint import load_supernet
    from natv2.source_supernet import train_phases

    root, config, split = tiny_run
    settings = _tiny_settings(config)
    ran = []

    def fake_phase(net, phase, data, cfg, **kwargs):
        ran.append(phase)
        return {"phase": phase}

    monkeypatch.setattr(natv2.shrinking, "run_phase", fake_phase)
    phases = phases_for(SearchSpace(resolutions=(12, 16), kernels=(3, 5), expands=(2, 3)))
    out, work = tmp_path / "source.pt", tmp_path / "phases"
    train_phases(settings, split, out, work_dir=work, state_dir=tmp_path / ".resume", progress=False)
    assert ran == phases and sorted(p.name for p in work.iterdir()) == sorted(f"{p}.pt" for p in phases)
    assert out.read_bytes() == (work / f"{phases[-1]}.pt").read_bytes()  # source.pt: the last phase's checkpoint
    assert [p["phase"] for p in load_supernet(out)[1]["phases"]] == phases
    (work / f"{phases[-1]}.pt").unlink()
    ran.clear()
    train_phases(settings, split, out, work_dir=work, state_dir=tmp_path / ".resume", progress=False)
    assert ran == [phases[-1]]  # finished phases are not rerun


def _zero_epoch_config(tmp_path: Path, *zero: str) -> str:
    """TINY with ``zero`` phases at 0 epochs (config/config.yaml's digits and cifar10: depth1, expand1)."""
    cfg = copy.deepcopy(TINY)
    for name in zero:
        cfg["supernet_train"]["phases"][name]["epochs"] = 0
    path = tmp_path / "zero.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_trained_phases_leave_out_the_middle_phases_of_0_epochs(tmp_path):
    space = SearchSpace(resolutions=(12, 16), kernels=(3, 5), expands=(2, 3))
    assert phases_for(space) == ["full", "kernel", "depth1", "depth2", "expand1", "expand2"]
    phases = _tiny_settings(_zero_epoch_config(tmp_path, "depth1", "expand1")).supernet_train.phases
    assert trained_phases(space, phases) == ["full", "kernel", "depth2", "expand2"]
    # the first phase makes the supernet and the last one's checkpoint is the source: both always stay
    phases = _tiny_settings(_zero_epoch_config(tmp_path, "full", "kernel", "expand2")).supernet_train.phases
    assert trained_phases(space, phases) == ["full", "depth1", "depth2", "expand1", "expand2"]
    assert trained_phases(space, _tiny_settings(_zero_epoch_config(tmp_path)).supernet_train.phases) == phases_for(space)


def test_a_skipped_0_epoch_phase_leaves_the_next_checkpoint_the_same(tiny_run, tmp_path):
    """depth2 from kernel.pt (no depth1 job) writes the weights and meta that depth2 from a 0-epoch
    depth1.pt wrote, depth1 included: what the workflow's shorter chain relies on."""
    from natv2.nets.checkpoint import load_supernet

    root, _, split = tiny_run
    common = ["supernet", "--config", _zero_epoch_config(tmp_path, "depth1"), "--data", split, "--no-progress"]
    chain = {"full": None, "kernel": "full", "depth1": "kernel", "depth2": "depth1"}
    for phase, init in chain.items():
        init_opt = ["--init", str(tmp_path / f"{init}.pt")] if init else []
        assert main(common + ["--phase", phase, *init_opt, "--out", str(tmp_path / f"{phase}.pt")]) == 0
    assert main(common + ["--phase", "depth2", "--init", str(tmp_path / "kernel.pt"), "--out", str(tmp_path / "short.pt")]) == 0
    (long, long_meta), (short, meta) = load_supernet(tmp_path / "depth2.pt"), load_supernet(tmp_path / "short.pt")
    assert long.state_dict().keys() == short.state_dict().keys()
    assert all(torch.equal(v, short.state_dict()[k]) for k, v in long.state_dict().items())
    assert meta == long_meta
    # the epochs' clock readings stay in the log, so the same job run again writes the same bytes
    assert main(common + ["--phase", "depth2", "--init", str(tmp_path / "kernel.pt"), "--out", str(tmp_path / "again.pt")]) == 0
    assert (tmp_path / "again.pt").read_bytes() == (tmp_path / "short.pt").read_bytes()
    assert set(meta["phases"][3]["history"][0]) == {"epoch", "loss", "lr"}
    assert [p["phase"] for p in meta["phases"]] == ["full", "kernel", "depth1", "depth2"]
    assert meta["phases"][2] == {"phase": "depth1", "skipped": True, "reason": "0 epochs"}
    assert len(meta["phases"][3]["history"]) == 1  # depth2 trained its one epoch


def test_train_phases_writes_no_checkpoint_for_a_middle_phase_of_0_epochs(tiny_run, tmp_path, monkeypatch):
    import natv2.shrinking
    from natv2.nets.checkpoint import load_supernet
    from natv2.source_supernet import train_phases

    root, _, split = tiny_run
    settings = _tiny_settings(_zero_epoch_config(tmp_path, "depth1", "expand1", "expand2"))
    ran = []

    def fake_phase(net, phase, data, cfg, **kwargs):
        ran.append(phase)
        return {"phase": phase, "skipped": True, "reason": "0 epochs"} if getattr(cfg.phases, phase).epochs == 0 else {"phase": phase}

    monkeypatch.setattr(natv2.shrinking, "run_phase", fake_phase)
    out, work = tmp_path / "source.pt", tmp_path / "phases"
    train_phases(settings, split, out, work_dir=work, state_dir=tmp_path / ".resume", progress=False)
    assert ran == ["full", "kernel", "depth2", "expand2"]  # the last phase runs, at 0 epochs too
    assert sorted(p.name for p in work.iterdir()) == ["depth2.pt", "expand2.pt", "full.pt", "kernel.pt"]
    phases = load_supernet(out)[1]["phases"]
    assert [p["phase"] for p in phases] == ["full", "kernel", "depth1", "depth2", "expand1", "expand2"]
    assert [p.get("skipped", False) for p in phases] == [False, False, True, False, True, True]


def test_unwritable_phase_output_is_one_line_before_any_training(tiny_run, tmp_path, capsys, monkeypatch):
    import errno
    import os
    from pathlib import Path

    import natv2.io
    import natv2.shrinking

    root, config, split = tiny_run
    common = ["supernet", "--config", config, "--data", split, "--no-progress", "--phase", "full"]
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()

    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking the output")

    monkeypatch.setattr(natv2.shrinking, "run_phase", no_training)
    for out, reason in ((tmp_path / "file" / "full.pt", "Not a directory"), (tmp_path / "folder", "Is a directory")):
        assert main(common + ["--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("natv2: error: ") and reason in err and str(tmp_path) in err and "\n" not in err
    monkeypatch.undo()

    # a full disk when the checkpoint is written (torch used to say "unexpected pos 832 vs 726")
    real_open = open

    def full_disk(file, mode="r", *args, **kwargs):
        if "w" in mode and Path(file).name.startswith(".full.pt."):  # the disk fills during the checkpoint
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(natv2.io, "open", full_disk, raising=False)
    out = tmp_path / "out" / "full.pt"
    assert main(common + ["--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"natv2: error: {out}: cannot write (No space left on device)"
    assert not out.exists()


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
    from natv2.nets import build_supernet
    from natv2.shrinking import run_phase
    from natv2.splits import load_data

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
