"""AEP fine-tuning of early-exit subnets: exits re-attached, weighted per-exit loss, subset on val."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from natv2.config import load_settings
from natv2.data import DataBundle, ImageSet
from natv2.errors import Natv2Error
from natv2.finetune import aep_exits, aep_finetune, exit_loss, subset_scores, train_config
from natv2.nets import build_supernet
from natv2.space import SearchSpace

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


def test_aep_attaches_the_chosen_exit_and_the_later_ones(supernet):
    space = supernet.space
    assert aep_exits(space, genome_with_exit(space, 3)) == [3, 4, 5]
    assert aep_exits(space, genome_with_exit(space, 5)) == [5]
    with pytest.raises(Natv2Error, match="no exit gene"):
        aep_exits(SearchSpace(), SearchSpace().smallest())


def test_exit_loss_is_the_weighted_sum_of_per_exit_losses():
    g = torch.Generator().manual_seed(0)
    outs = [torch.randn(6, 4, generator=g) for _ in range(3)]
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    ce = [float(F.cross_entropy(z, y)) for z in outs]
    assert float(exit_loss(outs, y)) == pytest.approx(sum(ce) / 3, rel=1e-6)  # uniform by default
    assert float(exit_loss(outs, y, [1, 0, 3])) == pytest.approx(0.25 * ce[0] + 0.75 * ce[2], rel=1e-6)
    with pytest.raises(Natv2Error, match="expected 3 non-negative"):
        exit_loss(outs, y, [1, 1])


def test_subset_scores_find_the_complementary_pair_and_break_ties_by_depth():
    labels = torch.tensor([0, 0, 1, 1])
    # exit 3 is right on samples 0, 1 (confidently) and wrong on 2, 3 (barely); exit 5 the other way;
    # exit 4 is always wrong. Only the sum of exits 3 and 5 gets all four right.
    e3 = torch.tensor([[4.0, 0.0], [4.0, 0.0], [0.5, 0.0], [0.5, 0.0]])
    e5 = torch.tensor([[0.0, 0.5], [0.0, 0.5], [0.0, 4.0], [0.0, 4.0]])
    e4 = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    rows = subset_scores([e3, e4, e5], labels, [3, 4, 5])
    assert len(rows) == 7
    assert rows[0]["exits"] == [3, 5] and rows[0]["top1"] == 100.0 and rows[0]["weights"] == [0.5, 0.5]
    by_exits = {tuple(r["exits"]): r["top1"] for r in rows}
    assert by_exits[(3,)] == 50.0 and by_exits[(4,)] == 0.0 and by_exits[(5,)] == 50.0
    # ties: exit 3 alone (50 %) ranks before exit 5 alone (50 %), the shallower deepest exit
    fifty = [r["exits"] for r in rows if r["top1"] == 50.0]
    assert fifty[0] == [3]


def test_the_engine_with_the_exit_loss_lowers_it_and_trains_every_exit(supernet):
    from functools import partial

    from natv2.train import train

    data = bundle()
    g = genome_with_exit(supernet.space, 3)
    net = supernet.extract(g, exits=aep_exits(supernet.space, g))
    before = {k: v.clone() for k, v in net.state_dict().items() if "classifier" in k}
    cfg = train_config(finetune_cfg(lr=0.01), epochs=6, early_exit=True)
    assert cfg.optimizer == "adamw"  # NATv2: AdamW for early-exit supernets
    hist = train(net, data.train, cfg, resolution=RES, mean=data.mean, std=data.std, seed=0, progress=False,
                 loss_fn=partial(exit_loss, weights=None))
    assert len(hist.rows) == 6 and hist.losses[-1] < hist.losses[0]
    changed = {k.split(".")[1] for k, v in net.state_dict().items() if k in before and not torch.equal(v, before[k])}
    assert changed == {"2", "3", "4"}  # the classifiers of exits 3, 4 and 5 all learned


def test_aep_finetune_chooses_a_subset_on_val_and_predicts_with_it(supernet):
    data = bundle()
    space = supernet.space
    g = genome_with_exit(space, 3)
    extracted = []

    def extract():
        extracted.append(supernet.extract(g, exits=aep_exits(space, g)).eval())
        return extracted[-1]

    result = aep_finetune(extract, data, finetune_cfg(), resolution=RES, seed=0, progress=False)
    assert len(extracted) == 2 and result.attached == [3, 4, 5]
    assert len(result.subset_top1) == 7 and result.exits == result.subset_top1[0]["exits"]
    assert result.step2_epochs == result.best_epoch <= result.step1_epochs <= 3
    summary = result.summary()
    assert summary["aep_exits"] == result.exits and summary["aep_val_top1"] == result.subset_top1[0]["top1"]
    # the model predicts with the weighted (uniform) sum of the chosen exits of the step-2 net
    x = torch.randn(4, 3, RES, RES, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outs = extracted[1].eval()(x)
        expected = sum(outs[e - 3] for e in result.exits) / len(result.exits)
        assert torch.allclose(result.model(x), expected, atol=1e-5)
    assert [s + 1 for s in result.model.exit_stages] == result.exits and not result.model.training


def test_aep_killed_in_step_one_resumes_with_the_recorded_subset_scores(supernet, tmp_path):
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

    def dying_train(model, images, tcfg, weights=None, **kwargs):
        user = kwargs.pop("on_epoch_end")

        def on_epoch_end(epoch, row, net):
            user(epoch, row, net)
            if epoch == 2:
                raise KeyboardInterrupt

        return train(model, images, tcfg, loss_fn=partial(exit_loss, weights=weights), on_epoch_end=on_epoch_end,
                     **kwargs)

    with pytest.raises(KeyboardInterrupt):
        aep_finetune(extract, data, cfg, resolution=RES, seed=0, train_fn=dying_train,
                     state=FinetuneState(tmp_path / "st", {"g": 3}), progress=False)
    state = FinetuneState(tmp_path / "st", {"g": 3})
    assert sorted(state.records) == [0, 1, 2] and len(state.records[0]["extra"]) == 7  # 7 exit subsets each
    resumed = aep_finetune(extract, data, cfg, resolution=RES, seed=0, state=state, progress=False)
    assert (resumed.best_epoch, resumed.exits, resumed.attached) == (full.best_epoch, full.exits, full.attached)
    assert resumed.subset_top1 == full.subset_top1
    x = torch.randn(4, 3, RES, RES, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(resumed.model(x), full.model(x))
