"""Both widths in one search: the width gene picks the w1.0 or the w1.2 supernet (NAT, NATv2)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from net_helpers import randomize

from natv2.nets import build_supernet
from natv2.nets.checkpoint import load_supernet, save_supernet
from natv2.nets.multiwidth import MultiWidthSupernet

RES = 16
CFG = {"resolutions": [RES], "stem_stride": 1, "widths": [1.0, 1.2]}
X = torch.randn(2, 3, RES, RES, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _width(space, g, index: int) -> np.ndarray:
    g = np.array(g)
    g[1] = index
    return g


@pytest.mark.parametrize("variant", ["ofa_mbv3", "EE_D"])
def test_the_width_gene_picks_the_supernet_of_its_width(variant, tmp_path):
    """NAT's ``GenSupernet`` (``NAT_extended/supernets/supernet.py:6-66``): one engine per entry of
    ``width_mult_list`` ([1.0, 1.2], ``ea_ofa_search_spaces.py:104``); ``set_active_subnet(w=...)``
    activates the engine of that width, forward and ``get_active_subnet`` use it."""
    torch.manual_seed(0)
    net = build_supernet({**CFG, "variant": variant}, 5)
    randomize(net, 1).eval()
    assert isinstance(net, MultiWidthSupernet) and net.space.widths == (1.0, 1.2)
    narrow, wide = net.engines
    assert narrow.space.widths == (1.0,) and wide.space.widths == (1.2,)
    assert narrow.stages[0][0].out_chs == 24 and wide.stages[0][0].out_chs == 32  # OFA w1.0 / w1.2
    g = net.space.sample(1, np.random.default_rng(0), "natv2")[0]
    with torch.no_grad():
        for index, engine in enumerate(net.engines):
            gi = _width(net.space, g, index)
            net.set_active(gi)
            static = net.extract(gi).eval()
            assert static.config["width"] == net.space.widths[index]
            assert static.config["genome"] == net.space.to_string(gi)
            engine.set_active(_width(engine.space, g, 0))
            assert torch.equal(net(X), engine(X))
            assert (static(X) - net(X)).abs().max() <= 1e-5 * net(X).abs().max()
    # both widths in one checkpoint: it round-trips to the same subnets
    save_supernet(tmp_path / "s.pt", net, {"phase": "test"})
    loaded, _ = load_supernet(tmp_path / "s.pt")
    assert isinstance(loaded, MultiWidthSupernet) and loaded.space == net.space
    loaded.eval()
    with torch.no_grad():
        for index in (0, 1):
            gi = _width(net.space, g, index)
            net.set_active(gi)
            loaded.set_active(gi)
            assert torch.equal(loaded(X), net(X))


def test_a_step_on_one_width_leaves_the_other_supernet_untouched():
    """Trained side by side: a batch on a w1.2 subnet changes only the w1.2 supernet (SGD with
    momentum and weight decay skips parameters without gradients)."""

    torch.manual_seed(0)
    net = build_supernet({**CFG, "variant": "EE_D"}, 5).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    g = _width(net.space, net.space.largest(), 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    opt.zero_grad(set_to_none=True)
    net.set_active(g)
    net(X).square().mean().backward()
    opt.step()
    after = net.state_dict()
    changed = {k.split(".")[1] for k, v in after.items() if v.dtype.is_floating_point and not torch.equal(v, before[k])}
    assert changed == {"1"}


def test_reset_classifier_and_bn_write_back_reach_the_right_width():
    torch.manual_seed(0)
    net = build_supernet({**CFG, "variant": "ofa_mbv3"}, 5)
    net.reset_classifier(3, torch.Generator().manual_seed(0))
    assert net.n_classes == 3 and all(e.head.classifier.out_features == 3 for e in net.engines)
    g = _width(net.space, net.space.smallest(), 0)
    net.set_active(g)
    static = net.extract(g)
    for m in static.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(0.5)
    wide_before = {k: v.clone() for k, v in net.engines[1].state_dict().items()}
    net.load_bn_stats_from(static)
    assert torch.all(net.engines[0].stages[0][0].project.bn.running_mean[:24] == 0.5)
    assert all(torch.equal(v, wide_before[k]) for k, v in net.engines[1].state_dict().items())


def test_paper_config_searches_both_widths():
    """NAT / NATv2 search w1.0 and w1.2 (``ea_ofa_search_spaces.py:104``, ``width_mult_list``)."""
    from pathlib import Path

    from natv2.config import load_settings

    paper = load_settings(Path(__file__).resolve().parents[1] / "config" / "paper.yaml")
    assert list(paper.supernet.widths) == [1.0, 1.2]


def test_shrinking_phases_train_every_width_on_every_batch():
    """OFAv2 trains the w1.0 and w1.2 supernets in separate runs of the same schedule
    (``OFA_mbv3_extended/train/utils.py:161-171``: one run per ``width_mult``); side by side, each
    batch draws ``subnets_per_step`` subnets per width (the width gene cycles)."""
    from natv2.shrinking import every_width, get_phase, phase_sampler
    from natv2.space import SearchSpace

    space = SearchSpace(widths=(1.0, 1.2), n_exits=5)
    sample = every_width(phase_sampler(space, get_phase("depth2")), space)
    rng = np.random.default_rng(0)
    widths = [int(sample(rng)[1]) for _ in range(8)]
    assert widths == [0, 1] * 4
    one = SearchSpace()
    plain = phase_sampler(one, get_phase("kernel"))
    assert every_width(plain, one) is plain


def test_evaluation_uses_each_widths_supernet_and_stem_cache(monkeypatch):
    """Genomes of both widths evaluate through their own supernet (same numbers as a one-width
    supernet of that width), with one stem cache per width and resolution."""
    import natv2.evaluate as ev
    from natv2.config import EvaluationConfig
    from natv2.splits import DataBundle, ImageSet

    def images(n, seed):
        g = torch.Generator().manual_seed(seed)
        return ImageSet(torch.randint(0, 256, (n, 3, RES, RES), generator=g, dtype=torch.uint8),
                        torch.randint(0, 4, (n,), generator=g))

    torch.manual_seed(0)
    net = randomize(build_supernet({**CFG, "variant": "ofa_mbv3"}, 4), 1).eval()
    data = DataBundle(["a", "b", "c", "d"], RES, (0.5,) * 3, (0.25,) * 3, images(48, 3), images(24, 4), images(8, 5))
    cfg = EvaluationConfig(bn_images=16, batch_size=16, channels_last=True, fold_bn=True, latency=False,
                           latency_batch_size=1, latency_repeats=1, latency_warmup=0)
    g = net.space.sample(2, np.random.default_rng(6), "natv2")
    genomes = [_width(net.space, g[0], 1), _width(net.space, g[1], 0), _width(net.space, g[0], 0)]
    stems = []
    real = ev.prepare_stem_cache
    monkeypatch.setattr(ev, "prepare_stem_cache", lambda stem, *a, **k: stems.append(stem) or real(stem, *a, **k))
    both = ev.evaluate_genomes(net, genomes, data, cfg, progress=False, seed=1)
    assert [id(s) for s in stems] == [id(net.engines[0].stem), id(net.engines[1].stem)]
    for k, genome in enumerate(genomes):
        engine = net.engines[int(genome[1])]
        alone = ev.evaluate_genomes(engine, [_width(engine.space, genome, 0)], data, cfg, progress=False, seed=1)
        assert both["top1"][k] == alone["top1"][0] and both["params"][k] == alone["params"][0]
    assert both["genome"].tolist() == [net.space.to_string(x) for x in genomes]
    assert both["params"][0] > both["params"][2]  # the same genome is larger at w1.2
