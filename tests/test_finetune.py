"""NATv2 two-step fine-tuning: the early-stopping rule, the epoch count of step 2, the member job."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from natv2.config import load_settings
from natv2.errors import Natv2Error
from natv2.finetune import EarlyStopping, train_config, two_step_finetune
from natv2.splits import DataBundle, ImageSet


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny convolutions: a second OpenMP thread only adds contention on a shared 2-core machine
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# scripted val losses for epochs 0, 1, 2, ...: best at epoch 4, then three epochs without improvement
CURVE = [2.0, 1.5, 1.2, 1.3, 1.0, 1.05, 1.01, 1.1, 0.5, 0.4]
# scripted val top-1 of the same epochs: highest at epoch 2 (and again at 6: the first one counts)
TOP1 = [90.0, 40.0, 60.0, 55.0, 58.0, 50.0, 60.0, 10.0, 70.0, 80.0]


def run_until_stop(stopper, curve):
    for epoch, loss in enumerate(curve):
        if stopper.step(epoch, loss):
            return epoch
    return None


def test_early_stopping_stops_at_the_right_epoch_on_a_scripted_curve():
    stopper = EarlyStopping(patience=3)
    assert run_until_stop(stopper, CURVE) == 7  # epochs 5, 6, 7 do not beat epoch 4
    assert stopper.best_epoch == 4 and stopper.best_loss == 1.0
    # patience 4 sees epoch 8 improve, then runs out of curve before stopping
    stopper = EarlyStopping(patience=4)
    assert run_until_stop(stopper, CURVE) is None and stopper.best_epoch == 9
    # min_delta 0.6: 2.0 -> 1.5 is too small a drop, 1.2 counts; 1.2 -> 1.0 is too small again
    stopper = EarlyStopping(patience=3, min_delta=0.6)
    assert run_until_stop(stopper, CURVE) == 5 and stopper.best_epoch == 2
    # max_epochs caps the run; a NaN loss never counts as an improvement
    stopper = EarlyStopping(patience=10, max_epochs=3)
    assert run_until_stop(stopper, [1.0, math.nan, 0.9, 0.8, 0.7]) == 3 and stopper.best_epoch == 3
    stopper = EarlyStopping(patience=2)
    assert run_until_stop(stopper, [1.0, math.nan, math.nan]) == 2 and stopper.best_epoch == 0
    with pytest.raises(Natv2Error, match="patience"):
        EarlyStopping(patience=0)


class TinyNet(nn.Module):
    def __init__(self, n_classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, n_classes)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).relu().mean((2, 3)))


def tiny_bundle(n_train=24, n_val=12, n_test=12, size=8, n_classes=3, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def images(n):
        labels = torch.arange(n) % n_classes
        x = torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)
        return ImageSet(x, labels.to(torch.int64))

    return DataBundle([f"c{i}" for i in range(n_classes)], size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25),
                      images(n_train), images(n_val), images(n_test))


def finetune_cfg(**overrides):
    base = {"patience": 3, "max_epochs": 20, "batch_size": 8, "lr": 0.01}
    return load_settings(overrides={"finetune": {**base, **overrides}}).finetune


def test_step_two_trains_for_the_epoch_count_of_the_highest_val_top1_on_step_ones_schedule():
    """finetune_natnet.py:153-155 (best_epoch = epoch of the highest valid_top1, strict >, from
    epoch 1), 173-175 (stop on the val loss), 339 (step 2 runs that many epochs) with T_max
    unchanged (134: T_max = 150 is set once, so step 2 follows step 1's cosine)."""
    from natv2.train import train

    data = tiny_bundle()
    extracted, calls = [], []

    def extract():
        torch.manual_seed(0)
        extracted.append(TinyNet())
        return extracted[-1]

    curve = iter(zip(CURVE, TOP1))

    def scripted_val(model):
        loss, top1 = next(curve)
        return {"loss": loss, "top1": top1}

    def counting_train(model, images, cfg, run):
        epochs = []
        user_callback = run.on_epoch_end

        def on_epoch_end(epoch, row, net):
            epochs.append(epoch)
            return user_callback(epoch, row, net)

        calls.append({"model": model, "n_images": len(images), "cfg": cfg, "epochs": epochs})
        return train(model, images, cfg, dataclasses.replace(run, on_epoch_end=on_epoch_end))

    result = two_step_finetune(extract, data, finetune_cfg(), resolution=8, seed=0, validate=scripted_val,
                               train_fn=counting_train, progress=False)
    step1, step2 = calls
    # the val loss stops step 1 after epoch 7; the val top-1 picks epoch 2 (not epoch 0's 90 %,
    # not the lowest-loss epoch 4, not the tied epoch 6)
    assert result.best_epoch == 2 and result.step1_epochs == 7
    assert step1["epochs"] == [1, 2, 3, 4, 5, 6, 7] and step1["n_images"] == len(data.train)
    assert step1["cfg"].epochs == 20 and step1["cfg"].schedule_epochs == 20
    # step 2: a freshly extracted net, on train + val, for exactly the best epoch count, on step 1's cosine
    assert step2["epochs"] == [1, 2] and result.step2_epochs == 2
    assert step2["cfg"].epochs == 2 and step2["cfg"].schedule_epochs == 20
    assert step2["n_images"] == len(data.train) + len(data.val)
    assert len(extracted) == 2 and step2["model"] is extracted[1] is result.model
    assert [e for e, _ in result.val_losses] == list(range(8))
    assert result.summary()["val_loss"][2] == {"epoch": 2, "loss": 1.2, "top1": 60.0}
    assert not result.model.training


def test_step_two_lr_follows_step_ones_cosine():
    """finetune_natnet.py:134, 312-316, 339: CosineAnnealingLR(T_max=150) in both steps."""
    from natv2.train import TrainRun, train

    data = tiny_bundle()
    cfg = train_config(finetune_cfg(max_epochs=4), epochs=2)
    run = TrainRun(resolution=8, mean=data.mean, std=data.std, seed=0, progress=False)
    hist = train(TinyNet(), data.train, cfg, run)
    full = train(TinyNet(), data.train, train_config(finetune_cfg(max_epochs=4), epochs=4), run)
    assert [r["lr"] for r in hist.rows] == pytest.approx([r["lr"] for r in full.rows[:2]])
    assert hist.rows[-1]["lr"] > 0.4 * cfg.lr  # half-way along a 4-epoch cosine, not at its end


def test_no_improvement_means_no_step_two_and_real_val_loss_runs():
    data = tiny_bundle()
    calls = []

    def fake_train(model, images, cfg, run):
        calls.append(cfg.epochs)
        for epoch in range(1, cfg.epochs + 1):
            if run.on_epoch_end(epoch, {}, model):
                break

    result = two_step_finetune(TinyNet, data, finetune_cfg(patience=2), resolution=8,
                               validate=lambda m: {"loss": 1.0, "top1": 0.0}, train_fn=fake_train)
    assert result.best_epoch == 0 and result.step1_epochs == 2 and result.step2_epochs == 0 and calls == [20]
    # the default val loss (cross-entropy over the val split) with the real engine
    result = two_step_finetune(TinyNet, data, finetune_cfg(patience=1, max_epochs=2), resolution=8, progress=False)
    losses = [loss for _, loss in result.val_losses]
    assert 1 <= len(losses) - 1 <= 2 and all(math.isfinite(v) and v > 0 for v in losses)
    assert result.step2_epochs == result.best_epoch


def test_optimizer_follows_the_supernet_kind():
    cfg = finetune_cfg(optimizer="auto", lr=1e-4)
    assert train_config(cfg, epochs=3).optimizer == "sgd"
    assert train_config(cfg, epochs=3, early_exit=True).optimizer == "adamw"
    assert train_config(finetune_cfg(optimizer="adamw"), epochs=3).optimizer == "adamw"
    assert train_config(cfg, epochs=3).lr == 1e-4 and train_config(cfg, epochs=3).kd_weight == 0


def test_front_member_errors():
    from natv2.finetune import front_member

    front = pd.DataFrame({"id": [0, 1], "genome": ["a", "b"]})
    assert front_member(front, "1", "front.csv")["genome"] == "b"
    with pytest.raises(Natv2Error, match="0 rows with id '7'"):
        front_member(front, "7", "front.csv")
    with pytest.raises(Natv2Error, match="front is empty"):
        front_member(front.iloc[:0], "0", "front.csv")
    with pytest.raises(Natv2Error, match="column 'genome' missing"):
        front_member(front.drop(columns="genome"), "0", "front.csv")


def test_member_jobs_then_pareto_ensembles_and_predict(tmp_path, capsys):
    """The post-processing chain on digits (finetune -> pareto -> ensembles -> predict).

    A member job on a corrupt checkpoint fails alone; a member whose export is broken is left
    out of the ensembles while the others' are written.
    """
    import yaml
    from PIL import Image

    from natv2.cli import main
    from natv2.config import DEFAULT_CONFIG
    from natv2.nets import build_supernet
    from natv2.nets.checkpoint import save_supernet
    from natv2.splits import prepare_split

    overrides = {
        "device": "cpu",
        "results_dir": str(tmp_path / "results"),
        "datasets": {"digits": {"kind": "digits", "max_train": 60, "val_size": 40, "test_size": 80}},
        "data": {"image_size": 8},  # digits are 8 x 8: no resize at all
        "supernet": {"resolutions": [8]},
        "finetune": {"patience": 1, "max_epochs": 2, "batch_size": 32, "lr": 0.01, "bn_images": 40,
                     "latency_repeats": 2},
        "ensemble": {"population": 8, "generations": 4, "modes": ["parallel"]},
    }
    override_file = tmp_path / "test.yaml"
    override_file.write_text(yaml.safe_dump(overrides))
    config = ["--config", str(DEFAULT_CONFIG), "--config", str(override_file)]
    settings = load_settings([DEFAULT_CONFIG, override_file])
    split = prepare_split(settings, "digits", tmp_path / "data")

    torch.manual_seed(0)
    supernet = build_supernet(settings.raw["supernet"], 10)
    save_supernet(tmp_path / "supernet.pt", supernet)
    space = supernet.space
    # three small members: the shallowest net with 3x3, 5x5 and 7x7 kernels (expand 3)
    genomes = []
    for code in (1, 2, 3):
        g = space.smallest().copy()
        g[space.block_offset:][g[space.block_offset:] > 0] = code
        genomes.append(space.validate(g))
    front = pd.DataFrame({"id": [0, 1, 2], "genome": [space.to_string(g) for g in genomes], "top1_err": [50.0, 60, 70]})
    front.to_csv(tmp_path / "front.csv", index=False)

    nets = tmp_path / "nets"
    for i in range(3):
        rc = main(["finetune", *config, "--data", str(split), "--supernet", str(tmp_path / "supernet.pt"),
                   "--front", str(tmp_path / "front.csv"), "--id", str(i), "--out", str(nets / str(i))])
        assert rc == 0
    (tmp_path / "corrupt.pt").write_bytes(b"\x00" * 50)
    rc = main(["finetune", *config, "--data", str(split), "--supernet", str(tmp_path / "corrupt.pt"),
               "--front", str(tmp_path / "front.csv"), "--id", "1", "--out", str(tmp_path / "bad")])
    assert rc == 2 and "corrupt.pt" in capsys.readouterr().err and not (tmp_path / "bad").exists()

    metrics = json.loads((nets / "0" / "metrics.json").read_text())
    assert {p.name for p in (nets / "0").iterdir()} == {"weights.pt", "config.json", "model.ts", "model.onnx", "metrics.json"}
    assert metrics["resolution"] == 8 and metrics["params"] > 0 and metrics["macs"] > 0 and metrics["latency_ms"] > 0
    assert 0 <= metrics["test_top1"] <= 100 and 0 <= metrics["test_top1_finetuned"] <= 100
    assert metrics["step2_epochs"] == metrics["best_epoch"] <= 2
    # half of val (20 of 40) was kept out of step 2; the resume state is gone once the member is written
    assert metrics["select_images"] == 20 and 0 <= metrics["select_top1_finetuned"] <= 100
    assert not any(p.name.endswith(".state") for p in nets.iterdir())

    assert main(["pareto", "--front", str(tmp_path / "front.csv"), "--nets", *[str(nets / str(i)) for i in range(3)],
                 "--out", str(tmp_path / "pareto.csv")]) == 0
    # one member's weights go missing after the fact: the step fails (strict by default, as in the
    # workflow); with --no-strict the ensembles of the other two are still written
    (nets / "2" / "weights.pt").unlink()
    ens_args = ["ensembles", *config, "--data", str(split), "--pareto", str(tmp_path / "pareto.csv"),
                "--out", str(tmp_path / "ensembles.csv"), "--export-dir", str(tmp_path / "ens")]
    assert main(ens_args) == 2
    assert "member 2 left out" in capsys.readouterr().err
    rc = main([*ens_args, "--no-strict"])
    captured = capsys.readouterr()
    err, out_text = captured.err, captured.out
    assert rc == 0 and "member 2 left out" in err and "weights.pt" in err
    ensembles = pd.read_csv(tmp_path / "ensembles.csv")
    assert list(ensembles["members"]) == ["0;1"] and list(ensembles["mode"]) == ["parallel"]
    pareto = pd.read_csv(tmp_path / "pareto.csv").set_index("id")
    # the ensembles' val_top1 is on the held-out 20 images, like the nets' select_top1_finetuned
    assert (ensembles["val_top1"] * 20 / 100).round(6).apply(float.is_integer).all()
    assert (pareto["select_top1_finetuned"] * 20 / 100).round(6).apply(float.is_integer).all()
    assert "dominate" in out_text
    assert ensembles["latency_ms"][0] == pytest.approx(max(pareto.loc[0, "latency_ms"], pareto.loc[1, "latency_ms"]))
    assert ensembles["params"][0] == pareto.loc[0, "params"] + pareto.loc[1, "params"]

    image = tmp_path / "digit.png"
    Image.fromarray(np.zeros((24, 20, 3), dtype=np.uint8)).save(image)
    capsys.readouterr()
    assert main(["predict", "--net", str(tmp_path / "ens" / "e000"), str(image)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{image}: ") and len(line.split(", ")) == 5


def member_job(tmp_path, overrides: dict):
    """A member job's inputs on digits: the config arguments, settings, split.json and a seeded supernet.pt."""
    import yaml

    from natv2.config import DEFAULT_CONFIG
    from natv2.nets import build_supernet
    from natv2.nets.checkpoint import save_supernet
    from natv2.splits import prepare_split

    override_file = tmp_path / "overrides.yaml"
    override_file.write_text(yaml.safe_dump(overrides))
    settings = load_settings([DEFAULT_CONFIG, override_file])
    split = prepare_split(settings, "digits", tmp_path / "data")
    torch.manual_seed(0)
    supernet = build_supernet(settings.supernet_for("digits"), 10)
    save_supernet(tmp_path / "supernet.pt", supernet)
    return ["--config", str(DEFAULT_CONFIG), "--config", str(override_file)], settings, split, supernet


def test_finetune_step_uses_aep_for_early_exit_supernets(tmp_path):
    """An EE_D member goes through AEP (exits 1..nd, finetune_natnet_ens.py:361), exported and
    reloadable; every contract column of its row describes the exported net."""
    import natv2
    from natv2.cli import main
    from natv2.splits import load_data

    overrides = {
        "device": "cpu",
        "datasets": {"digits": {"kind": "digits", "max_train": 60, "val_size": 40, "test_size": 80,
                                "image_size": 8, "resolutions": [8]}},
        "supernet": {"variant": "EE_D"},
        "finetune": {"patience": 1, "max_epochs": 1, "batch_size": 32, "lr": 0.01, "bn_images": 40,
                     "latency_repeats": 2},
    }
    config, settings, split, supernet = member_job(tmp_path, overrides)
    space = supernet.space
    genome = space.smallest().copy()
    genome[-1] = 3  # exit after stage 3: AEP attaches exits 1, 2 and 3
    pd.DataFrame({"id": [0], "genome": [space.to_string(space.validate(genome))], "top1_err": [50.0]}).to_csv(
        tmp_path / "front.csv", index=False)

    out = tmp_path / "nets" / "0"
    rc = main(["finetune", *config, "--data", str(split),
               "--supernet", str(tmp_path / "supernet.pt"), "--front", str(tmp_path / "front.csv"), "--id", "0",
               "--out", str(out)])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["aep_attached"] == [1, 2, 3] and metrics["aep_exits"] == [1, 2, 3]  # no pruning by default
    assert metrics["genome"] == metrics["search_genome"] == space.to_string(space.validate(genome))
    net = natv2.load_network(out)
    # params of the exported 3-exit net; the searched single-exit net (search_params) has fewer
    from natv2.costs import count_params

    assert metrics["params"] == count_params(net) > metrics["search_params"]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert net(x).shape == (2, 10)
    assert len(load_data(split).classes) == 10


def _seeded_tiny():
    torch.manual_seed(0)
    return TinyNet()


def _scripted(curve):
    """A val function replaying ``curve`` (epochs 0, 1, ...; top-1 falls as the loss rises), counting its calls."""
    calls = []

    def val_loss(model):
        calls.append(len(calls))
        return {"loss": curve[len(calls) - 1], "top1": 100.0 - 10.0 * curve[len(calls) - 1]}

    return val_loss, calls


def _killing_train(when):
    """natv2.train.train, killed (KeyboardInterrupt) after epoch ``when(cfg)`` of a run."""
    from natv2.train import train

    def train_fn(model, images, cfg, run):
        user = run.on_epoch_end
        kill_at = when(cfg)

        def on_epoch_end(epoch, row, net):
            stop = user(epoch, row, net)
            if epoch == kill_at:
                raise KeyboardInterrupt
            return stop

        return train(model, images, cfg, dataclasses.replace(run, on_epoch_end=on_epoch_end))

    return train_fn


@pytest.mark.parametrize("kill", ["step1", "step2"])
def test_a_killed_finetune_resumes_where_it_stopped_and_ends_bit_exact(tmp_path, kill):
    from natv2.finetune import FinetuneState

    data = tiny_bundle()
    cfg = finetune_cfg()  # patience 3 on CURVE: step 1 stops after epoch 7, best epoch 4
    val_loss, _ = _scripted(CURVE)
    full = two_step_finetune(_seeded_tiny, data, cfg, resolution=8, seed=0, validate=val_loss, progress=False)
    assert (full.best_epoch, full.step1_epochs, full.step2_epochs) == (4, 7, 4)

    fingerprint = {"member": 0}
    state = FinetuneState(tmp_path / ".0.state", fingerprint)
    val_loss, calls = _scripted(CURVE)
    # killed after epoch 5 of step 1 (max_epochs 20), or after epoch 3 of step 2 (4 epochs)
    when = (lambda c: 5 if c.epochs == 20 else None) if kill == "step1" else (lambda c: 3 if c.epochs == 4 else None)
    with pytest.raises(KeyboardInterrupt):
        two_step_finetune(_seeded_tiny, data, cfg, resolution=8, seed=0, validate=val_loss, state=state,
                          train_fn=_killing_train(when), progress=False)
    killed_calls = len(calls)
    assert killed_calls == (6 if kill == "step1" else 8)  # epochs 0..5, or all of step 1 (0..7)

    state = FinetuneState(tmp_path / ".0.state", fingerprint)  # a new job finds the state
    assert sorted(state.records) == list(range(killed_calls))
    rest = CURVE[killed_calls - 1:] if kill == "step1" else []
    val_loss, calls = _scripted(rest)
    resumed = two_step_finetune(_seeded_tiny, data, cfg, resolution=8, seed=0, validate=val_loss, state=state,
                                progress=False)
    # step 1: the killed epoch (its state was not saved) is redone, nothing before it; step 2 picks up
    assert len(calls) == (1 + 2 if kill == "step1" else 0)
    assert (resumed.best_epoch, resumed.step1_epochs, resumed.step2_epochs) == (4, 7, 4)
    assert resumed.val_losses == full.val_losses
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_finetune_state_of_another_run_is_discarded(tmp_path):
    from natv2.finetune import FinetuneState

    state = FinetuneState(tmp_path / "s", {"genome": "a", "lr": (0.1,)})
    state.record(0, 1.5, extra=[{"exits": [3]}], top1=40.0)
    again = FinetuneState(tmp_path / "s", {"genome": "a", "lr": (0.1,)})  # tuples compare as read back
    assert again.records == {0: {"loss": 1.5, "top1": 40.0, "extra": [{"exits": [3]}]}}
    other = FinetuneState(tmp_path / "s", {"genome": "b", "lr": (0.1,)})
    assert other.records == {} and not (tmp_path / "s" / "records.json").exists()
    other.remove()
    assert not (tmp_path / "s").exists()


def test_holdout_is_stratified_disjoint_and_fixed_by_the_seed():
    data = tiny_bundle(n_val=30)
    fit, select = data.holdout(0.5, seed=3)
    assert len(fit) == len(select) == 15
    assert torch.bincount(select.labels).tolist() == [5, 5, 5]
    # disjoint, and together exactly val (images are random, so rows identify them)
    rows = lambda s: {tuple(x.flatten().tolist()) for x in s.images}  # noqa: E731
    assert not rows(fit) & rows(select) and rows(fit) | rows(select) == rows(data.val)
    assert torch.equal(data.holdout(0.5, seed=3)[1].images, select.images)
    assert not torch.equal(data.holdout(0.5, seed=4)[1].images, select.images)
    assert len(data.trainval(fit)) == len(data.train) + 15
    with pytest.raises(Natv2Error, match="finetune.selection_holdout: 1.0 is not a fraction strictly between 0 and 1"):
        data.holdout(1.0, seed=0)
    with pytest.raises(Natv2Error, match="selection_holdout=0.01: holds out no image"):
        data.holdout(0.01, seed=0)


def test_step_two_of_the_member_job_never_sees_the_held_out_images(tmp_path, monkeypatch):
    import natv2.finetune
    from natv2.cli import main
    from natv2.splits import load_data

    overrides = {"device": "cpu", "datasets": {"digits": {"kind": "digits", "max_train": 60, "val_size": 40,
                                                          "test_size": 40, "image_size": 8, "resolutions": [8]}},
                 "finetune": {"selection_holdout": 0.25, "bn_images": 0, "latency_repeats": 1}}
    config, settings, split, supernet = member_job(tmp_path, overrides)
    pd.DataFrame({"id": [0], "genome": [supernet.space.to_string(supernet.space.smallest())]}).to_csv(
        tmp_path / "front.csv", index=False)
    seen = {}

    def spy(extract, data, cfg, **kwargs):  # records what step 2 would train on; trains nothing
        seen["step2"] = kwargs["step2_images"]
        return natv2.finetune.FinetuneResult(extract(), 0, 0, 0, [])

    monkeypatch.setattr(natv2.finetune, "two_step_finetune", spy)
    assert main(["finetune", *config, "--data", str(split),
                 "--supernet", str(tmp_path / "supernet.pt"), "--front", str(tmp_path / "front.csv"), "--id", "0",
                 "--out", str(tmp_path / "nets" / "0")]) == 0
    data = load_data(split)
    _, select = data.holdout(0.25, settings.seed)
    rows = lambda images: {bytes(x.flatten().tolist()) for x in images}  # noqa: E731
    step2 = rows(seen["step2"].images)
    assert len(seen["step2"]) == len(data.train) + 30 and len(select) == 10
    assert not step2 & rows(select.images)  # digits can repeat, so check no held-out image is in step 2
    assert json.loads((tmp_path / "nets" / "0" / "metrics.json").read_text())["select_images"] == 10


def test_the_member_job_takes_the_fronts_exact_costs_and_counts_a_row_without_them(tmp_path, monkeypatch):
    """A front row's params and MACs (the search's exact counts) stand for the searched and the
    fine-tuned net, so the job builds no flop counter; a row without them is counted."""
    import natv2.costs
    import natv2.finetune
    from natv2.cli import main
    from natv2.costs import count_macs, count_params

    overrides = {"device": "cpu", "datasets": {"digits": {"kind": "digits", "max_train": 60, "val_size": 40,
                                                          "test_size": 40, "image_size": 8, "resolutions": [8]}},
                 "finetune": {"bn_images": 0, "latency_repeats": 1}}
    config, settings, split, supernet = member_job(tmp_path, overrides)
    genome = supernet.space.smallest()
    static = supernet.extract(genome).eval()
    params, macs = count_params(static), count_macs(static, 8)
    front = pd.DataFrame({"id": [0, 1], "genome": [supernet.space.to_string(genome)] * 2,
                          "params": [params, np.nan], "macs": [macs, np.nan]})
    front.to_csv(tmp_path / "front.csv", index=False)
    monkeypatch.setattr(natv2.finetune, "two_step_finetune",  # trains nothing: the costs are what this checks
                        lambda extract, data, cfg, **kwargs: natv2.finetune.FinetuneResult(extract(), 0, 0, 0, []))
    counted = []
    monkeypatch.setattr(natv2.costs, "count_macs", lambda net, res, **kw: counted.append(res) or macs)

    def job(member: int) -> dict:
        out = tmp_path / "nets" / str(member)
        assert main(["finetune", *config, "--data", str(split), "--supernet", str(tmp_path / "supernet.pt"),
                     "--front", str(tmp_path / "front.csv"), "--id", str(member), "--out", str(out)]) == 0
        return json.loads((out / "metrics.json").read_text())

    first = job(0)
    assert counted == []  # the front's row had them
    assert (first["params"], first["macs"], first["search_params"], first["search_macs"]) == (params, macs, params, macs)
    second = job(1)
    assert counted == [8]  # once, for the searched net; the fine-tuned one has its architecture
    assert (second["params"], second["macs"], second["search_macs"]) == (params, macs, macs)


def test_tied_best_epochs_the_first_as_the_original_or_the_lowest_val_loss():
    """CURVE / TOP1 tie epochs 2 and 6 at 60 % (val loss 1.2 and 1.01); step 1 stops after epoch 7."""
    from natv2.finetune import best_top1_epoch

    records = {e: {"loss": loss, "top1": top1} for e, (loss, top1) in enumerate(zip(CURVE, TOP1))}
    assert best_top1_epoch(records, 7) == 2  # finetune_natnet.py:153-155: strict >, the first
    assert best_top1_epoch(records, 7, "loss") == 6
    assert best_top1_epoch(records, 5, "loss") == 2  # epoch 6 not reached yet
    assert best_top1_epoch(records, 9, "loss") == best_top1_epoch(records, 9) == 9  # no tie: the same
    nan_loss = {**records, 6: {"loss": float("nan"), "top1": 60.0}}
    assert best_top1_epoch(nan_loss, 7, "loss") == 2  # a NaN loss never wins a tie
    with pytest.raises(Natv2Error, match="best_epoch_ties='last'"):
        best_top1_epoch(records, 7, "last")
    with pytest.raises(Natv2Error, match="best_epoch_ties"):
        finetune_cfg(best_epoch_ties="last")

    cfg = finetune_cfg(best_epoch_ties="loss")
    curve = iter(zip(CURVE, TOP1))
    result = two_step_finetune(TinyNet, tiny_bundle(), cfg, resolution=8, seed=0, progress=False,
                               validate=lambda model: dict(zip(("loss", "top1"), next(curve))))
    assert (result.best_epoch, result.step1_epochs, result.step2_epochs) == (6, 7, 6)
    assert result.summary()["best_epoch_rule"].endswith("ties: lowest val loss")
