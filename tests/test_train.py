"""The training engine: loss falls, exact resume, NaN stop, KD values, schedule, sub-steps."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from natv2.distill import ExitEnsembleTeacher, ensemble_logits, kd_loss, soft_targets
from natv2.errors import Natv2Error
from natv2.train import TrainConfig, TrainRun, lr_factor, train


def learnable_set(n: int = 256, size: int = 16, n_classes: int = 4, seed: int = 0):
    """Random images whose class is written as a bright patch in a class-specific place."""
    from natv2.splits import ImageSet

    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_classes, (n,), generator=g)
    x = (torch.rand(n, 3, size, size, generator=g) * 80).to(torch.uint8)
    half = size // 2
    for c in range(n_classes):
        rows = slice(0, half) if c < 2 else slice(half, size)
        x[y == c, c % 3, rows, :] += 150
    return ImageSet(images=x, labels=y)


def tiny_cnn(n_classes: int = 4, bn: bool = True, dropout: float = 0.0, seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 8, 3, padding=1)]
    layers += [nn.BatchNorm2d(8)] if bn else []
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(8, n_classes)]
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------ distillation


def test_kd_loss_equals_hand_computed_values():
    student = torch.tensor([[1.0, 0.0]])
    target = torch.tensor([[0.75, 0.25]])
    p = [math.e / (math.e + 1), 1 / (math.e + 1)]
    expected = 0.75 * math.log(0.75 / p[0]) + 0.25 * math.log(0.25 / p[1])
    assert kd_loss(student, target, 1.0).item() == pytest.approx(expected, rel=1e-4)
    # T = 2: T^2 * KL(target || softmax(student / 2))
    q = [math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)]
    expected_t2 = 4 * (0.75 * math.log(0.75 / q[0]) + 0.25 * math.log(0.25 / q[1]))
    assert kd_loss(student, target, 2.0).item() == pytest.approx(expected_t2, rel=1e-4)
    # a student equal to its teacher has zero loss
    z = torch.randn(5, 7)
    assert kd_loss(z, soft_targets(z, 3.0), 3.0).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(Natv2Error, match="differ in shape"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_ens_kd_teacher_is_the_softmax_of_the_weighted_sum_of_exit_logits():
    """OFA_mbv3_extended/train/new_progressive_shrinking.py:361-377: weighted logits summed, then softmax.

    Default weights: OFA_mbv3_extended/train/utils.py:287 ``ensemble_weights = [.06, .13, .20, .27, .34]``.
    """
    a = torch.tensor([[0.0, 0.0]])
    b = torch.tensor([[math.log(3.0), 0.0]])
    logits = ensemble_logits([a, b], table=[1.0, 3.0])
    # 0.25 * a + 0.75 * b, softmax of it; a mean of probabilities would give (0.6875, 0.3125)
    expected = F.softmax(0.75 * b, dim=1)
    assert torch.allclose(F.softmax(logits, dim=1), expected)
    assert not torch.allclose(F.softmax(logits, dim=1), torch.tensor([[0.6875, 0.3125]]), atol=1e-3)

    class FiveExits(nn.Module):
        def forward(self, x):
            return [torch.full((len(x), 2), float(i)) * torch.tensor([1.0, 0.0]) for i in range(1, 6)]

    teacher = ExitEnsembleTeacher(FiveExits())  # the original's weights by default
    z = teacher(torch.zeros(3, 1))
    assert torch.allclose(z[:, 0], torch.full((3,), 0.06 * 1 + 0.13 * 2 + 0.20 * 3 + 0.27 * 4 + 0.34 * 5))
    with pytest.raises(Natv2Error, match="exit weights"):
        ensemble_logits([a, b, a], table=[1.0, 3.0])


# ------------------------------------------------------------------------------ schedule and config


def test_lr_schedule_warms_up_linearly_then_decays_by_cosine():
    f = [lr_factor(s, 100, 10) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(b > a for a, b in zip(f[:10], f[1:10]))  # rising during warm-up
    assert all(b <= a for a, b in zip(f[10:], f[11:]))  # falling after
    assert f[10 + 45] == pytest.approx(0.5, abs=0.02) and f[-1] < 0.01


def test_bad_settings_name_the_key():
    with pytest.raises(Natv2Error, match="optimizer"):
        TrainConfig(optimizer="rmsprop").check()
    with pytest.raises(Natv2Error, match="train.lrr"):
        TrainConfig.from_mapping({"lrr": 0.1})


# ------------------------------------------------------------------------------ the loop


def test_training_lowers_the_loss_and_learns():
    data = learnable_set()
    model = tiny_cnn()
    cfg = TrainConfig(epochs=4, lr=0.1, batch_size=32, warmup_epochs=0.5, label_smoothing=0.0)
    history = train(model, data, cfg, TrainRun(resolution=16, seed=0, progress=False))
    losses = history.losses
    assert len(losses) == 4 and losses[-1] < 0.6 * losses[0]
    assert all(r["images_per_s"] > 0 and r["seconds"] > 0 for r in history.rows)
    # what a checkpoint keeps: the same rows less the clock readings
    assert history.untimed() == [{k: r[k] for k in ("epoch", "loss", "lr")} for r in history.rows]
    model.eval()
    with torch.no_grad():
        x = (data.images.float() / 255 - 0.5) / 0.5
        accuracy = (model(x).argmax(1) == data.labels).float().mean().item()
    assert accuracy > 0.6  # chance = 0.25


def test_digits_loss_falls(tmp_path):
    from natv2.config import load_settings
    from natv2.splits import load_data, prepare_split

    settings = load_settings(overrides={"data": {"image_size": 16}})
    split = prepare_split(settings, "digits", tmp_path)
    data = load_data(split)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                          nn.Linear(16 * 16, data.n_classes))
    cfg = TrainConfig(optimizer="adamw", epochs=2, lr=0.01, batch_size=64, label_smoothing=0.0)
    history = train(model, data.train, cfg, TrainRun(resolution=16, mean=data.mean, std=data.std, seed=0,
                                                     progress=False, pad=1, flip=False))
    assert history.losses[-1] < 0.6 * history.losses[0]


class _Stop(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    data = learnable_set(n=192)
    cfg = TrainConfig(epochs=3, lr=0.05, batch_size=32, warmup_epochs=1)
    common = dict(resolution_sampler=lambda rng: int(rng.choice([12, 16])), seed=7, progress=False)

    straight = tiny_cnn(dropout=0.3)
    h_straight = train(straight, data, cfg, TrainRun(**common))

    state = tmp_path / "state" / "run.pt"

    def kill_after_two(epoch, row, net):
        if epoch == 2:
            raise _Stop

    with pytest.raises(_Stop):
        train(tiny_cnn(dropout=0.3), data, cfg, TrainRun(resume=state, on_epoch_end=kill_after_two, **common))
    assert state.is_file()

    resumed = tiny_cnn(dropout=0.3, seed=99)  # different init: everything must come from the state
    h_resumed = train(resumed, data, cfg, TrainRun(resume=state, **common))
    assert [r["epoch"] for r in h_resumed.rows] == [1, 2, 3]
    assert h_resumed.losses == h_straight.losses
    for (key, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), key

    # a state written under other settings is refused, naming the setting
    with pytest.raises(Natv2Error, match="lr=0.05"):
        train(tiny_cnn(), data, TrainConfig(epochs=3, lr=0.1, batch_size=32, warmup_epochs=1),
              TrainRun(resume=state, **common))


class _NaNAfter(nn.Module):
    """Gives finite logits for the first ``n`` calls, then NaN."""

    def __init__(self, n: int):
        super().__init__()
        self.n, self.calls = n, 0
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        self.calls += 1
        out = self.fc(x.mean(dim=(2, 3)))
        return out * float("nan") if self.calls > self.n else out


def test_nan_loss_stops_with_epoch_and_step():
    data = learnable_set(n=128)
    cfg = TrainConfig(epochs=2, lr=0.01, batch_size=32)  # 4 steps per epoch
    with pytest.raises(Natv2Error, match=r"loss is nan at epoch 2, step 2"):
        train(_NaNAfter(5), data, cfg, TrainRun(resolution=16, seed=0, progress=False))


class _ToyElastic(nn.Module):
    """A two-width 'supernet': the genome's first gene picks how many features the head reads."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)
        self.width, self.calls, self.resolutions = 8, [], []

    def set_active(self, genome):
        self.width = int(genome[0])
        self.calls.append(self.width)

    def forward(self, x):
        self.resolutions.append(x.shape[-1])
        h = F.relu(self.conv(x)).mean(dim=(2, 3))[:, : self.width]
        return F.linear(h, self.fc.weight[:, : self.width], self.fc.bias)


def test_subnets_per_step_samples_and_distils():
    data = learnable_set(n=96)
    net = _ToyElastic()
    teacher = tiny_cnn()
    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=32, kd_weight=1.0)
    train(net, data, cfg, TrainRun(resolution_sampler=lambda rng: int(rng.choice([8, 16])),
                                   subnet_sampler=lambda rng: [int(rng.choice([4, 8]))], subnets_per_step=3,
                                   teacher=teacher, seed=0, progress=False))
    assert len(net.calls) == 3 * 3  # 3 steps x 3 subnets
    assert set(net.calls) == {4, 8} and set(net.resolutions) == {8, 16}


def test_a_custom_loss_cannot_be_combined_with_a_teacher():
    from natv2.errors import Natv2Error
    from natv2.splits import ImageSet
    from natv2.train import TrainConfig, train

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    data = ImageSet(torch.zeros(4, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(Natv2Error, match="loss_fn= and teacher= cannot be combined"):
        train(net, data, TrainConfig(epochs=1, batch_size=2),
              TrainRun(resolution=4, teacher=net, loss_fn=lambda out, y: out.sum()))


def test_training_settings_come_from_the_config_sections_with_overrides_last():
    from natv2.config import load_settings

    s = load_settings(overrides={"supernet_train": {"grad_clip": 2.0, "momentum": 0.8,
                                                     "phases": {"kernel": {"epochs": 2, "lr": 0.05, "warmup_epochs": 5}}},
                                 "warmup": {"weight_decay": 0.001}, "adapt": {"epochs": 3, "lr": 0.004}})
    phase = TrainConfig.from_sections(s.supernet_train, s.supernet_train.phases.kernel, kd=False)
    assert (phase.epochs, phase.lr, phase.grad_clip, phase.momentum, phase.kd_weight) == (2, 0.05, 2.0, 0.8, 0.0)
    assert phase.warmup_epochs == 2  # cut to the epoch count
    with_kd = TrainConfig.from_sections(s.supernet_train, s.supernet_train.phases.kernel)
    assert with_kd.kd_weight == s.supernet_train.kd_weight
    stage = TrainConfig.from_sections(s.warmup, epochs=4, lr=0.2, kd=False)
    assert (stage.epochs, stage.lr, stage.weight_decay, stage.kd_weight) == (4, 0.2, 0.001, 0.0)
    adapt = TrainConfig.from_sections(s.adapt, warmup_epochs=0.0)
    assert (adapt.epochs, adapt.lr, adapt.kd_weight) == (3, 0.004, s.adapt.kd_weight)
    with pytest.raises(Natv2Error, match="unknown training setting"):
        TrainConfig.from_sections(s.adapt, colour="red")


# ------------------------------------------------------------------------------ NAT adaptation


def test_carried_schedule_and_optimizer_continue_one_run():
    """NAT keeps one optimizer and one lr schedule for the whole search: SuperNetTrainer builds
    them once over n_epochs = ft_epochs_gen x max_gens (NAT_extended/train/trainer.py:622-641,
    run_nat_new.py:211-212) and ``_adapt_supernet`` continues them iteration after iteration
    (NAT_extended/search/algorithms/nat.py:219-249). Two calls that carry the optimizer state and
    sit in one Schedule train like one call over both epochs (full-batch, no augmentation, so
    the data order cannot differ)."""
    from natv2.train import Schedule

    data = learnable_set(n=64)
    cfg = TrainConfig(epochs=4, lr=0.05, batch_size=64, warmup_epochs=1, label_smoothing=0.0)
    common = dict(resolution=16, seed=3, progress=False, pad=0, flip=False)
    whole = tiny_cnn(bn=False)
    h_whole = train(whole, data, cfg, TrainRun(**common))

    half = TrainConfig(epochs=2, lr=0.05, batch_size=64, label_smoothing=0.0)
    split = tiny_cnn(bn=False)
    h1 = train(split, data, half, TrainRun(schedule=Schedule(0, 4, 1.0), **common))
    h2 = train(split, data, half, TrainRun(schedule=Schedule(2, 4, 1.0), optimizer_state=h1.optimizer_state,
                                           **common))
    assert [r["lr"] for r in h1.rows + h2.rows] == pytest.approx([r["lr"] for r in h_whole.rows])
    assert h1.rows[-1]["lr"] == pytest.approx(0.05 * lr_factor(1, 4, 1))
    for a, b in zip(whole.parameters(), split.parameters()):
        assert torch.allclose(a, b, atol=1e-5)
    # a fresh optimizer in the second call (today's restart) trains differently
    fresh = tiny_cnn(bn=False)
    train(fresh, data, half, TrainRun(schedule=Schedule(0, 4, 1.0), **common))
    train(fresh, data, half, TrainRun(schedule=Schedule(2, 4, 1.0), **common))
    assert not all(torch.allclose(a, b, atol=1e-5) for a, b in zip(whole.parameters(), fresh.parameters()))
    with pytest.raises(Natv2Error, match="carried optimizer state does not fit"):
        train(nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()), data, half,
              TrainRun(optimizer_state=h1.optimizer_state, **common))


class _FakeSupernet(nn.Module):
    """A supernet stand-in for natv2.adapt: a space, set_active, and a record of input sizes."""

    def __init__(self, space):
        super().__init__()
        torch.manual_seed(0)
        self.space = space
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)
        self.sizes: list[int] = []

    def set_active(self, genome):
        self.space.validate(genome)

    def forward(self, x):
        self.sizes.append(int(x.shape[-1]))
        return self.fc(F.relu(self.conv(x)).mean(dim=(2, 3)))


def test_adaptation_follows_nats_schedule_teacher_and_resolution(monkeypatch):
    """NAT's adaptation (NAT_extended/search/algorithms/nat.py:219-249 with SuperNetTrainer,
    NAT_extended/train/trainer.py:566-810, configured in run_nat_new.py:211-333): one cosine
    over max_gens x ft_epochs_gen epochs carried across iterations, gradient clipping 5
    (trainer.py:582, 782), CE without label smoothing (trainer.py:646), a fixed teacher loaded
    once from the warm-up (run_nat_new.py:304-317), and one random image size per batch shared
    by its subnets (MyModRandomResizedCrop, trainer.py:711-763; the genome's ``r`` is dropped)."""
    import dataclasses
    from types import SimpleNamespace

    import numpy as np
    from synthetic_nas import evaluate

    import natv2.shrinking
    from natv2.adapt import STATE_KEY, adapt, schedule
    from natv2.config import load_settings
    from natv2.space import SearchSpace

    settings = load_settings()
    cfg = dataclasses.replace(settings.adapt, epochs=1, batch_size=32, subnets_per_step=3, top_n=8, kd_weight=0.0)
    tcfg = TrainConfig.from_sections(cfg)
    assert (tcfg.grad_clip, tcfg.label_smoothing) == (5.0, 0.0)
    search = dataclasses.replace(settings.search, iterations=3)
    space = SearchSpace(resolutions=(8, 16))
    archive = evaluate(space, space.sample(12, np.random.default_rng(0), "natv2"))
    data = SimpleNamespace(train=learnable_set(n=96), mean=(0.5,) * 3, std=(0.5,) * 3, pad=4, flip=True)
    steps = 96 // 32

    net = _FakeSupernet(space)
    s1 = adapt(net, data, archive, cfg, search, device="cpu", seed=1, progress=False)
    state1 = s1[STATE_KEY]
    assert (state1["epochs_done"], state1["total_epochs"]) == (1, 3)
    assert s1["history"][-1]["lr"] == pytest.approx(cfg.lr * lr_factor(steps - 1, 3 * steps, 0))
    assert any("momentum_buffer" in v for v in state1["optimizer"]["state"].values())
    # one resolution per batch, shared by its 3 subnets, drawn at random from the space's
    sizes = np.array(net.sizes).reshape(steps, 3)
    assert (sizes == sizes[:, :1]).all() and set(sizes[:, 0]) <= {8, 16}
    s2 = adapt(net, data, archive, cfg, search, device="cpu", seed=2, carried=state1, progress=False)
    assert s2[STATE_KEY]["epochs_done"] == 2
    assert s2["history"][-1]["lr"] == pytest.approx(cfg.lr * lr_factor(2 * steps - 1, 3 * steps, 0))
    # more iterations configured later: the schedule is as long as the new count, the position kept
    plan = schedule(cfg, 5, {"epochs_done": 3})
    assert (plan.offset_epochs, plan.total_epochs) == (3, 5)

    # the teacher: the largest subnet of the given (warmed-up) supernet with the run's seed
    seen = {}

    def fake_teacher(source, data, *, bn_images, seed, device, **kw):
        seen.update(source=source, seed=seed)
        return tiny_cnn()

    monkeypatch.setattr(natv2.shrinking, "largest_teacher", fake_teacher)
    warm = _FakeSupernet(space)
    adapt(net, data, archive, dataclasses.replace(cfg, kd_weight=1.0), search, device="cpu", seed=3,
          teacher_supernet=warm, teacher_seed=0, carried=s2[STATE_KEY], progress=False)
    assert seen == {"source": warm, "seed": 0}


def test_adapt_iteration_returns_the_checkpoints_meta_and_carried_state(monkeypatch):
    """natv2.adapt.adapt_iteration: one iteration as ``natv2 adapt`` runs it (seed, meta, extra)."""
    import dataclasses
    from types import SimpleNamespace

    import numpy as np
    from synthetic_nas import evaluate

    import natv2.adapt
    from natv2.adapt import STATE_KEY, adapt_iteration, iteration_seed
    from natv2.config import load_settings
    from natv2.rng import stream_seed
    from natv2.space import SearchSpace

    base = load_settings()
    settings = dataclasses.replace(
        base, device="cpu", search=dataclasses.replace(base.search, iterations=2),
        adapt=dataclasses.replace(base.adapt, epochs=1, batch_size=32, subnets_per_step=1, top_n=8, kd_weight=0.0))
    assert iteration_seed(7, 2) == stream_seed(7, "adapt", 2)
    space = SearchSpace(resolutions=(8,))
    archive = evaluate(space, space.sample(12, np.random.default_rng(0), "natv2"))
    data = SimpleNamespace(train=learnable_set(n=64), mean=(0.5,) * 3, std=(0.5,) * 3, pad=4, flip=True)
    meta_in = {"classes": ["a", "b", "c", "d"], "adaptations": [{"iteration": 0}]}
    net = _FakeSupernet(space)
    meta, extra = adapt_iteration(net, meta_in, data, archive, settings, iteration=1, progress=False)
    assert meta_in["adaptations"] == [{"iteration": 0}]  # the input meta is left as it was
    assert meta["classes"] == meta_in["classes"] and [a["iteration"] for a in meta["adaptations"]] == [0, 1]
    assert STATE_KEY not in meta["adaptations"][-1] and meta["adaptations"][-1]["epochs"] == 1
    assert set(extra) == {STATE_KEY} and extra[STATE_KEY]["epochs_done"] == 1
    meta2, extra2 = adapt_iteration(net, meta, data, archive, settings, iteration=2, carried=extra[STATE_KEY],
                                    progress=False)
    assert extra2[STATE_KEY]["epochs_done"] == 2 and len(meta2["adaptations"]) == 3
    # the iteration's own seed and the run's teacher seed reach natv2.adapt.adapt
    seen = {}

    def fake_adapt(*args, seed, teacher_seed, carried, **kwargs):
        seen.update(seed=seed, teacher_seed=teacher_seed)
        return {"epochs": 0, STATE_KEY: carried}

    monkeypatch.setattr(natv2.adapt, "adapt", fake_adapt)
    meta3, extra3 = adapt_iteration(net, {}, data, archive, settings, iteration=3)
    assert seen == {"seed": iteration_seed(settings.seed, 3), "teacher_seed": settings.seed}
    assert extra3 is None and meta3 == {"adaptations": [{"iteration": 3, "epochs": 0}]}  # nothing carried


def test_adapt_resume_is_fingerprinted_by_the_iterations_inputs(tmp_path):
    import json

    from natv2.adapt import adapt_resume, iteration_seed
    from natv2.config import load_settings

    settings = load_settings()
    for name in ("supernet.pt", "archive.csv", "images.pt", "warmup.pt"):
        (tmp_path / name).write_bytes(name.encode())
    (tmp_path / "split.json").write_text(json.dumps({"cache": "images.pt"}))
    paths = dict(supernet_path=tmp_path / "supernet.pt", archive_path=tmp_path / "archive.csv",
                 data_path=tmp_path / "split.json")
    folder = tmp_path / ".resume" / "supernet.pt.adapt"
    state = adapt_resume(folder, **paths, iteration=2, settings=settings)
    assert state.folder == folder and set(state.fingerprint["files"]) == {"supernet", "archive", "split", "images"}
    assert state.fingerprint["settings"]["seed"] == iteration_seed(settings.seed, 2)
    state.path("train.pt").write_bytes(b"progress")
    assert adapt_resume(folder, **paths, iteration=2, settings=settings).path("train.pt").exists()  # same inputs
    assert not adapt_resume(folder, **paths, iteration=3, settings=settings).path("train.pt").exists()  # other: discarded
    teacher = adapt_resume(folder, **paths, teacher_path=tmp_path / "warmup.pt", iteration=3, settings=settings)
    assert "teacher" in teacher.fingerprint["files"]
