"""BN recalibration, top-1, and evaluate_genomes on small random image sets."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn

from natv2.config import EvaluationConfig
from natv2.costs import count_params
from natv2.errors import Natv2Error
from natv2.evaluate import COLUMNS, evaluate_genomes, prepare_batches, recalibrate_bn, top1
from natv2.nets import build_supernet
from natv2.splits import DataBundle, ImageSet

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def image_set(n: int, seed: int, size: int = 32, n_classes: int = 4) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
                    torch.randint(0, n_classes, (n,), generator=g))


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    return build_supernet({"resolutions": [32, 40], "stem_stride": 1}, 4).eval()


def _reference_recalibration(model: nn.Module, batches) -> dict:
    """Plain PyTorch: reset, momentum=None, train-mode forward of every batch (the definition)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


def test_recalibration_is_the_cumulative_average_of_batch_statistics(supernet):
    images = image_set(60, 0)
    g = supernet.space.sample(1, np.random.default_rng(0), "natv2")[0]
    batches = prepare_batches(images, resolution=32, mean=MEAN, std=STD, batch_size=20, channels_last=False)
    expected = _reference_recalibration(supernet.extract(g), batches)
    static = supernet.extract(g).eval()
    recalibrate_bn(static, images, resolution=32, mean=MEAN, std=STD, batch_size=20)
    assert not static.training and all(bn.momentum == 0.1 for bn in static.modules() if isinstance(bn, nn.BatchNorm2d))
    got = {k: v for k, v in static.state_dict().items() if "running" in k}
    assert got.keys() == expected.keys()
    for k in got:  # every layer, including the last BN before the head (the pass stops after it)
        assert torch.allclose(got[k], expected[k], atol=1e-5, rtol=1e-5), k
    # the first BN by hand: mean over the 3 batches of the batch means of the stem conv output
    conv = static.stem.first.conv
    with torch.no_grad():
        means = torch.stack([conv(x).mean((0, 2, 3)) for x, _ in batches])
    assert torch.allclose(static.stem.first.bn.running_mean, means.mean(0), atol=1e-5)
    # the statistics it had before do not matter
    other = supernet.extract(g)
    for bn in other.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.fill_(5.0)
    recalibrate_bn(other, images, resolution=32, mean=MEAN, std=STD, batch_size=20)
    assert torch.allclose(other.stages[0][0].dw.bn.running_var, static.stages[0][0].dw.bn.running_var, atol=1e-6)


def test_recalibrating_a_supernet_changes_only_the_active_channels():
    torch.manual_seed(1)
    net = build_supernet({"resolutions": [32], "stem_stride": 1}, 4).eval()
    space = net.space
    g = space.smallest()
    net.set_active(g)
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    images = image_set(16, 1)
    recalibrate_bn(net, images, resolution=32, mean=MEAN, std=STD, batch_size=8)
    after = net.state_dict()
    block = net.stages[0][0]
    active = block.mid_channels(3)
    key = "stages.0.0.dw.bn.running_var"
    assert not torch.allclose(after[key][:active], before[key][:active])
    assert torch.equal(after[key][active:], before[key][active:])
    assert torch.equal(after["stages.0.3.dw.bn.running_var"], before["stages.0.3.dw.bn.running_var"])  # skipped block
    static = net.extract(g)
    ref = net.extract(g)
    recalibrate_bn(ref, images, resolution=32, mean=MEAN, std=STD, batch_size=8)
    assert torch.allclose(static.stages[0][0].dw.bn.running_var, ref.stages[0][0].dw.bn.running_var, atol=1e-6)


class _Fixed(nn.Module):
    """Predicts class 0 for every image (tiny conv so it has parameters and a BN)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x):
        out = torch.zeros(x.shape[0], 4)
        out[:, 0] = 1.0
        return out + 0 * self.bn(self.conv(x)).mean((1, 2, 3))[:, None]


def test_top1_counts_correct_predictions():
    images = image_set(50, 2)
    share = 100.0 * float((images.labels == 0).float().mean())
    assert top1(_Fixed(), images, resolution=16, mean=MEAN, std=STD, batch_size=16, fold=False) == pytest.approx(share)
    empty = ImageSet(torch.zeros(0, 3, 8, 8, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(Natv2Error, match="empty image set"):
        top1(_Fixed(), empty, resolution=8, mean=MEAN, std=STD)


def test_evaluate_genomes_table(supernet):
    data = DataBundle(["a", "b", "c", "d"], 32, MEAN, STD, image_set(80, 3), image_set(40, 4), image_set(20, 5))
    cfg = EvaluationConfig(bn_images=48, batch_size=32, channels_last=True, fold_bn=True, latency=True,
                           latency_batch_size=1, latency_repeats=2, latency_warmup=0)
    space = supernet.space
    X = space.sample(3, np.random.default_rng(4), "natv2")
    X[0, 0], X[1, 0], X[2, 0] = 1, 0, 1  # mixed resolutions: the table keeps the input order
    genomes = [X[0], space.to_string(X[1]), X[2]]
    table = evaluate_genomes(supernet, genomes, data, cfg, device="cpu", progress=False, seed=7)
    assert list(table.columns) == COLUMNS and len(table) == 3
    assert table["genome"].tolist() == [space.to_string(g) for g in X]
    assert table["resolution"].tolist() == [40, 32, 40]
    assert np.allclose(table["top1"] + table["top1_err"], 100.0)
    assert table["params"].tolist() == [count_params(supernet.extract(g)) for g in X]
    assert (table["macs"] > 0).all() and (table["latency_ms"] > 0).all()
    # the same as doing it by hand with the same BN images
    from natv2.rng import torch_stream

    bn_set = data.train.subset(48, torch_stream(7, "bn-images"))
    static = supernet.extract(X[1])
    recalibrate_bn(static, bn_set, resolution=32, mean=MEAN, std=STD, batch_size=32)
    assert table["top1"][1] == pytest.approx(top1(static, data.val, resolution=32, mean=MEAN, std=STD, batch_size=32))
    # deterministic; latency can be switched off
    again = evaluate_genomes(supernet, genomes, data, dataclasses.replace(cfg, latency=False), device="cpu", progress=False, seed=7)
    assert again["top1"].tolist() == table["top1"].tolist() and again["latency_ms"].isna().all()
    with pytest.raises(Natv2Error, match="genome string"):
        evaluate_genomes(supernet, ["r99-bad"], data, cfg, progress=False)


def test_recorded_costs_are_reused_and_only_accuracy_is_measured_again(supernet, monkeypatch):
    """NAT's re-evaluation (``natv2 evaluate --reuse-costs``): costs are the architecture's, so a
    genome's finite recorded params / MACs / latency stand; a missing or NaN one is measured."""
    import natv2.costs as costs
    from natv2.steps.evaluate import recorded_costs

    data = DataBundle(["a", "b", "c", "d"], 32, MEAN, STD, image_set(80, 3), image_set(40, 4), image_set(20, 5))
    cfg = EvaluationConfig(bn_images=48, batch_size=32, channels_last=True, fold_bn=True, latency=True,
                           latency_batch_size=1, latency_repeats=1,
                           latency_warmup=0)
    X = supernet.space.sample(3, np.random.default_rng(5), "natv2")
    names = [supernet.space.to_string(g) for g in X]
    timed = []
    real = costs.measure_latency
    monkeypatch.setattr(costs, "measure_latency", lambda *a, **k: timed.append(1) or real(*a, **k))
    fresh = evaluate_genomes(supernet, names, data, cfg, progress=False, seed=7)
    assert len(timed) == 3
    import pandas as pd

    recorded = pd.DataFrame({"genome": names, "params": [11, 12, float("nan")], "macs": [21, 22, 23],
                             "latency_ms": [0.5, float("nan"), 0.7]})
    known = recorded_costs(recorded)
    assert known[names[0]] == {"params": 11, "macs": 21, "latency_ms": 0.5}
    timed.clear()
    again = evaluate_genomes(supernet, names, data, cfg, progress=False, seed=7, known_costs=known)
    assert len(timed) == 1  # only the genome whose latency was NaN is timed
    assert again["params"].tolist() == [11, 12, fresh["params"][2]]
    assert again["macs"].tolist() == [21, 22, 23]
    assert again["latency_ms"][0] == 0.5 and again["latency_ms"][2] == 0.7 and again["latency_ms"][1] > 0
    assert again["top1"].tolist() == fresh["top1"].tolist()  # accuracy is always measured
    assert recorded_costs(pd.DataFrame({"genome": names})) == {}
    # switched off, latency stays NaN even where a value was recorded
    off = evaluate_genomes(supernet, names, data, dataclasses.replace(cfg, latency=False), progress=False, seed=7,
                           known_costs=known)
    assert off["latency_ms"].isna().all() and off["params"].tolist()[:2] == [11, 12]


def test_the_pool_takes_params_and_macs_from_the_runs_part_costs(supernet, monkeypatch):
    """``natv2 evaluate --part-costs``: the rows without recorded params / MACs get them from the
    supernet's table of part counts (natv2.part_costs), the same integers, and no net is counted."""
    import pandas as pd

    import natv2.costs as costs
    import natv2.part_costs as pc
    from natv2.config import load_settings
    from natv2.steps.evaluate import evaluate_table

    data = DataBundle(["a", "b", "c", "d"], 32, MEAN, STD, image_set(80, 3), image_set(40, 4), image_set(20, 5))
    settings = load_settings(overrides={"evaluation": {"bn_images": 48, "batch_size": 32, "latency": False}})
    X = supernet.space.sample(3, np.random.default_rng(6), "natv2")
    names = [supernet.space.to_string(g) for g in X]
    table = pd.DataFrame({"genome": names, "params": [11.0, float("nan"), float("nan")]})
    plain = evaluate_table(table, supernet, data, settings, shard=0, shards=1, split="val", tag="warmup", progress=False)
    part_costs = pc.part_cost_table(supernet)
    for module, name in ((costs, "count_macs"), (pc, "count_parts")):
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("a net was counted"))
    fast = evaluate_table(table, supernet, data, settings, shard=0, shards=1, split="val", tag="warmup",
                          progress=False, part_costs=part_costs)
    assert fast["params"].tolist() == plain["params"].tolist() and fast["macs"].tolist() == plain["macs"].tolist()
    assert fast["top1"].tolist() == plain["top1"].tolist()
    assert min(fast["macs"]) > 0 and len(set(fast["params"])) == 3
    # with --reuse-costs a recorded value stands; the table fills only what is missing
    both = evaluate_table(table, supernet, data, settings, shard=0, shards=1, split="val", tag="warmup",
                          progress=False, reuse_costs=True, part_costs=part_costs)
    assert both["params"].tolist() == [11, *plain["params"].tolist()[1:]]
