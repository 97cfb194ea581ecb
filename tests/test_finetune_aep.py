"""AEP fine-tuning of early-exit subnets: exits 1..nd attached, weighted per-exit loss, optional prefix prune."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from natv2.config import load_settings
from natv2.errors import Natv2Error
from natv2.exits import exit_loss
from natv2.finetune import aep_exits, aep_finetune, prefix_scores, prune_choice, train_config
from natv2.nets import build_supernet
from natv2.space import SearchSpace
from natv2.splits import DataBundle, ImageSet

RES = 12


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny convolutions: a second OpenMP thread only adds contention on a shared 2-core machine
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def bundle(n_train=32, n_val=16, n_test=8, n_classes=3, seed=0) -> DataBundle:
    gen = torch.Generator().manual_seed(seed)

    def images(n):
        return ImageSet(torch.randint(0, 256, (n, 3, RES, RES), generator=gen, dtype=torch.uint8),
                        (torch.arange(n) % n_classes).to(torch.int64))

    return DataBundle([f"c{i}" for i in range(n_classes)], RES, (0.5,) * 3, (0.25,) * 3,
                      images(n_train), images(n_val), images(n_test))


def finetune_cfg(**overrides):
    base = {"patience": 2, "max_epochs": 3, "batch_size": 8, "lr": 0.003, "optimizer": "auto"}
    return load_settings(overrides={"finetune": {**base, **overrides}}).finetune


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    cfg = {"variant": "EE_B", "resolutions": [RES], "kernels": [3], "expands": [2, 3], "stem_stride": 1}
    return build_supernet(cfg, 3).eval()


def genome_with_exit(space: SearchSpace, exit_: int) -> np.ndarray:
    g = space.smallest().copy()
    g[space.exit_position] = exit_
    return g


def test_aep_attaches_the_chosen_exit_and_every_shallower_one(supernet):
    """finetune_natnet_ens.py:361: get_active_some_exits_subnet(list(range(1, nd + 1))), the exits
    kept on the chosen body (early_exit_ofa_mbv3.py:712-733): never deeper than the searched net."""
    space = supernet.space
    assert aep_exits(space, genome_with_exit(space, 3)) == [1, 2, 3]
    assert aep_exits(space, genome_with_exit(space, 1)) == [1]
    g = genome_with_exit(space, 3)
    single, aep = supernet.extract(g), supernet.extract(g, exits=aep_exits(space, g))
    assert len(aep.stages) == len(single.stages) == 3  # same body: the stages up to exit 3
    with pytest.raises(Natv2Error, match="no exit gene"):
        aep_exits(SearchSpace(), SearchSpace().smallest())


def test_exit_loss_is_the_weighted_sum_of_per_exit_losses():
    """finetune_natnet_ens.py:241-250 (sum of branch_loss * branch_weight); default weights
    OFA_mbv3_extended/train/utils.py:286 restricted to the exits and renormalised (natv2.exits)."""
    g = torch.Generator().manual_seed(0)
    outs = [torch.randn(6, 4, generator=g) for _ in range(3)]
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    ce = [float(F.cross_entropy(z, y)) for z in outs]
    w = [0.06 / 0.39, 0.13 / 0.39, 0.20 / 0.39]  # exits 1..3 of [.06, .13, .20, .27, .34]
    assert float(exit_loss(outs, y)) == pytest.approx(sum(wi * c for wi, c in zip(w, ce)), rel=1e-6)
    assert float(exit_loss(outs, y, [1, 0, 3])) == pytest.approx(0.25 * ce[0] + 0.75 * ce[2], rel=1e-6)
    with pytest.raises(Natv2Error, match="2 weights for 3 exits"):
        exit_loss(outs, y, [1, 1])


def test_prefix_scores_and_the_prune_rule():
    labels = torch.tensor([0, 0, 1, 1])
    e1 = torch.tensor([[4.0, 0.0], [4.0, 0.0], [0.5, 0.0], [0.5, 0.0]])  # right on 0, 1
    e2 = torch.tensor([[0.0, 0.5], [0.0, 0.5], [0.0, 8.0], [0.0, 8.0]])  # right on 2, 3
    e3 = torch.tensor([[0.0, 9.0], [0.0, 9.0], [9.0, 0.0], [9.0, 0.0]])  # always wrong, loud
    rows = prefix_scores([e1, e2, e3], labels, [1, 2, 3])
    assert [r["exits"] for r in rows] == [[1], [1, 2], [1, 2, 3]]
    assert [r["top1"] for r in rows] == [50.0, 100.0, 0.0]
    assert rows[1]["weights"] == pytest.approx([0.06 / 0.19, 0.13 / 0.19])
    assert prune_choice(rows, prune=False)["exits"] == [1, 2, 3]  # the original code keeps 1..nd
    assert prune_choice(rows, prune=True)["exits"] == [1, 2]
    tie = [{"exits": [1], "top1": 80.0}, {"exits": [1, 2], "top1": 80.0}]
    assert prune_choice(tie, prune=True)["exits"] == [1]  # ties: fewer exits, the smaller net


def test_the_engine_with_the_exit_loss_lowers_it_and_trains_every_exit(supernet):
    from functools import partial

    from natv2.train import TrainRun, train

    data = bundle()
    g = genome_with_exit(supernet.space, 3)
    net = supernet.extract(g, exits=aep_exits(supernet.space, g))
    before = {k: v.clone() for k, v in net.state_dict().items() if "classifier" in k}
    cfg = train_config(finetune_cfg(lr=0.01), epochs=6, early_exit=True)
    assert cfg.optimizer == "adamw"  # NATv2: AdamW for early-exit supernets
    hist = train(net, data.train, cfg, TrainRun(resolution=RES, mean=data.mean, std=data.std, seed=0, progress=False,
                                                loss_fn=partial(exit_loss, weights=None)))
    assert len(hist.rows) == 6 and hist.losses[-1] < hist.losses[0]
    changed = {k.split(".")[1] for k, v in net.state_dict().items() if k in before and not torch.equal(v, before[k])}
    assert changed == {"0", "1", "2"}  # the classifiers of exits 1, 2 and 3 all learned


def test_aep_finetune_keeps_exits_one_to_nd_and_predicts_with_their_weighted_logits(supernet):
    """finetune_natnet_ens.py:252-258 (net output = sum of output * ensemble weight), 361-362."""
    from natv2.exits import exit_weights

    data = bundle()
    space = supernet.space
    g = genome_with_exit(space, 3)
    extracted = []

    def extract():
        extracted.append(supernet.extract(g, exits=aep_exits(space, g)).eval())
        return extracted[-1]

    result = aep_finetune(extract, data, finetune_cfg(), resolution=RES, seed=0, progress=False)
    assert len(extracted) == 2 and result.attached == [1, 2, 3] and result.exits == [1, 2, 3]
    assert len(result.prefix_top1) == 3 and not result.pruned
    assert result.step2_epochs == result.best_epoch <= result.step1_epochs <= 3
    summary = result.summary()
    assert summary["aep_exits"] == [1, 2, 3] and summary["aep_val_top1"] == result.prefix_top1[-1]["top1"]
    x = torch.randn(4, 3, RES, RES, generator=torch.Generator().manual_seed(1))
    w = exit_weights([1, 2, 3])
    with torch.no_grad():
        outs = extracted[1].eval()(x)
        expected = sum(wi * z for wi, z in zip(w, outs))
        assert torch.allclose(result.model(x), expected, atol=1e-5)
    assert [s + 1 for s in result.model.exit_stages] == [1, 2, 3] and not result.model.training
    pruned = aep_finetune(extract, data, finetune_cfg(), resolution=RES, seed=0, prune=True, progress=False)
    best = prune_choice(pruned.prefix_top1, prune=True)
    assert pruned.exits == best["exits"] and len(pruned.model.stages) == best["exits"][-1]


def test_aep_killed_in_step_one_resumes_with_the_recorded_prefix_scores(supernet, tmp_path):
    from functools import partial

    from natv2.finetune import FinetuneState
    from natv2.train import train

    data = bundle()
    space = supernet.space
    g = genome_with_exit(space, 3)
    cfg = finetune_cfg(patience=3, max_epochs=3)

    def extract():
        return supernet.extract(g, exits=aep_exits(space, g)).eval()

    full = aep_finetune(extract, data, cfg, resolution=RES, seed=0, progress=False)

    def dying_train(model, images, tcfg, run, weights=None):
        user = run.on_epoch_end

        def on_epoch_end(epoch, row, net):
            stop = user(epoch, row, net)
            if epoch == 2:
                raise KeyboardInterrupt
            return stop

        return train(model, images, tcfg,
                     dataclasses.replace(run, loss_fn=partial(exit_loss, weights=weights), on_epoch_end=on_epoch_end))

    with pytest.raises(KeyboardInterrupt):
        aep_finetune(extract, data, cfg, resolution=RES, seed=0, train_fn=dying_train,
                     state=FinetuneState(tmp_path / "st", {"g": 3}), progress=False)
    state = FinetuneState(tmp_path / "st", {"g": 3})
    assert sorted(state.records) == [0, 1, 2] and len(state.records[0]["extra"]) == 3  # 3 prefixes each
    resumed = aep_finetune(extract, data, cfg, resolution=RES, seed=0, state=state, progress=False)
    assert (resumed.best_epoch, resumed.exits, resumed.attached) == (full.best_epoch, full.exits, full.attached)
    assert resumed.prefix_top1 == full.prefix_top1
    x = torch.randn(4, 3, RES, RES, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(resumed.model(x), full.model(x))
