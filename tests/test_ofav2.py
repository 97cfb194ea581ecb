"""OFAv2 supernets: every registered variant extracts exactly, round-trips, shrinks, trains."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from net_helpers import randomize

from natv2.errors import Natv2Error
from natv2.nets import SUPERNETS, build_supernet, static_from_config
from natv2.nets.checkpoint import load_static, load_supernet, save_static, save_supernet
from natv2.nets.elastic import ElasticMBConv
from natv2.space import SearchSpace
from natv2.variants import OFAV2_VARIANTS, features

RES = 16
CFG = {"resolutions": [RES], "stem_stride": 1}


def make(variant: str, seed: int = 0, **cfg) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomize(build_supernet({**CFG, "variant": variant, **cfg}, 5), seed + 1).eval()


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


X = torch.randn(2, 3, RES, RES, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny tensors: a second intra-op thread only adds synchronisation (30x slower on a busy 2-core box)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_registry_holds_every_ofav2_variant():
    assert set(OFAV2_VARIANTS) | {"ofa_mbv3"} <= set(SUPERNETS)
    assert features("EE_DP") == features("EE_DP").__class__("EE_DP", early_exits=True, dense=True, parallel=True)
    with pytest.raises(Natv2Error, match="expected one of"):
        build_supernet({**CFG, "variant": "EE_X"}, 5)


@pytest.mark.parametrize("variant", sorted(SUPERNETS))
def test_extract_equals_supernet_and_round_trips(variant, tmp_path):
    net = make(variant)
    space = net.space
    f = features(variant)
    assert (space.n_exits == 5) == f.early_exits and bool(space.levels) == f.parallel
    genomes = [space.largest(), space.smallest(), *space.sample(2, np.random.default_rng(1), "natv2")]
    for g in genomes:
        net.set_active(g)
        with torch.no_grad():
            dyn = net(X)
            static = net.extract(g).eval()
            st = static(X)
            again = static_from_config(static.config)
            again.load_state_dict(static.state_dict())
            re = again.eval()(X)
        assert dyn.shape == (2, 5) and dyn.abs().max() > 1e-3
        assert (dyn - st).abs().max().item() <= 1e-5
        assert torch.equal(st, re)
        assert not any(isinstance(m, ElasticMBConv) for m in static.modules())
        # the static net's keys are a subset of the supernet's (BN write-back by name)
        assert set(static.state_dict()) <= set(net.state_dict())
    # a checkpoint of the supernet and of a static net round-trips too
    save_supernet(tmp_path / "s.pt", net, {"phase": "test"})
    loaded, meta = load_supernet(tmp_path / "s.pt")
    loaded.eval().set_active(genomes[-1])
    net.set_active(genomes[-1])
    assert meta == {"phase": "test"} and loaded.space == space
    with torch.no_grad():
        assert torch.equal(loaded(X), net(X))
    save_static(tmp_path / "n.pt", static)
    st2, _ = load_static(tmp_path / "n.pt")
    with torch.no_grad():
        assert torch.equal(st2.eval()(X), re)


@pytest.mark.parametrize("variant", OFAV2_VARIANTS)
def test_forward_backward_is_finite(variant):
    torch.manual_seed(0)
    net = build_supernet({**CFG, "variant": variant, "kernels": [3, 5], "expands": [3, 4]}, 5).train()
    g = net.space.sample(1, np.random.default_rng(2), "natv2")[0]
    net.set_active(g)
    out = net(X)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads)


def _with(space: SearchSpace, g: np.ndarray, **changes) -> np.ndarray:
    return space.encode(dataclasses.replace(space.decode(g), **changes))


@pytest.mark.parametrize("variant", ["EE_B", "EE_DP"])
def test_params_fall_as_the_exit_moves_earlier(variant):
    net = make(variant)
    g = net.space.largest()
    counts = [n_params(net.extract(_with(net.space, g, exit=e))) for e in range(5, 0, -1)]
    assert all(a > b for a, b in zip(counts, counts[1:])), counts


@pytest.mark.parametrize("variant", ["SE_D", "EE_P", "SE_DP"])
def test_params_fall_as_depth_and_level_shrink(variant):
    net = make(variant)
    space, g = net.space, net.space.largest()
    arch = space.decode(g)
    counts = []
    for d in (4, 3, 2):
        stages = tuple(s[:d] for s in arch.stages)
        counts.append(n_params(net.extract(_with(space, g, stages=stages))))
    assert counts[0] > counts[1] > counts[2]
    if space.levels:
        by_level = [n_params(net.extract(_with(space, g, levels=(lv,) * 5))) for lv in (3, 2, 1)]
        assert by_level[0] > by_level[1] > by_level[2]


def test_multi_exit_extract_gives_every_exit_and_subsets():
    net = make("EE_D")
    space = net.space
    g = space.sample(1, np.random.default_rng(4), "natv2")[0]
    multi = net.extract(g, all_exits=True).eval()
    with torch.no_grad():
        outs = multi(X)
        assert isinstance(outs, list) and len(outs) == 5
        for e in range(1, 6):
            net.set_active(_with(space, g, exit=e))
            assert (net(X) - outs[e - 1]).abs().max().item() <= 1e-5
        # AEP: the chosen exit and the later ones, combined with weights (normalised)
        aep = net.extract(_with(space, g, exit=3), exits=[3, 4, 5]).eval()
        assert [s + 1 for s in aep.exit_stages] == [3, 4, 5] and len(aep(X)) == 3
        sub = aep.with_exits([3, 5], weights=[1.0, 3.0])
        assert torch.allclose(sub(X), 0.25 * outs[2] + 0.75 * outs[4], atol=1e-5)
        rebuilt = static_from_config(sub.config)
        rebuilt.load_state_dict(sub.state_dict())
        assert torch.equal(rebuilt.eval()(X), sub(X))
    assert n_params(sub) < n_params(aep) < n_params(multi)
    with pytest.raises(Natv2Error, match="no early exits"):
        make("SE_D").extract(all_exits=True)
    with pytest.raises(Natv2Error, match="subset of the attached exits"):
        aep.with_exits([1])


def test_dense_skips_switch_with_depth_and_level_1_is_the_plain_block():
    base, dense, par = make("SE_B"), make("SE_D"), make("SE_P")
    dense.load_state_dict(base.state_dict())  # the same keys: dense skips add no weights
    # parallel blocks hold the MBConv under .mbconv; copy the base weights there
    par_state = par.state_dict()
    for k, v in base.state_dict().items():
        parts = k.split(".")
        key = ".".join(parts[:3] + ["mbconv"] + parts[3:]) if parts[0] == "stages" else k
        par_state[key] = v
    par.load_state_dict(par_state)
    space = base.space
    g2 = _with(space, space.largest(), stages=tuple(s[:2] for s in space.decode(space.largest()).stages))
    g4 = space.largest()
    with torch.no_grad():
        for net in (base, dense):
            net.set_active(g2)
        assert torch.allclose(base(X), dense(X), atol=1e-6)  # depth 2: block 2 only sees block 1
        for net in (base, dense):
            net.set_active(g4)
        assert (base(X) - dense(X)).abs().max() > 1e-3  # depth 4: earlier outputs are summed in
        pspace = par.space
        par.set_active(_with(pspace, pspace.largest(), levels=(1,) * 5))
        assert torch.allclose(par(X), base(X), atol=1e-5)
        par.set_active(pspace.largest())
        assert (par(X) - base(X)).abs().max() > 1e-3


@pytest.mark.parametrize("variant", ["EE_DP", "SE_P"])
def test_reorder_channels_keeps_the_largest_subnet(variant):
    net = make(variant)
    net.set_active(net.space.largest())
    with torch.no_grad():
        before = net(X)
        net.reorder_channels()
        after = net(X)
    assert torch.allclose(before, after, rtol=1e-5, atol=1e-4)  # permuted sums: rounding only


def test_bn_recalibration_through_the_supernet():
    from natv2.evaluate import recalibrate_on

    net = make("EE_DP")
    g = net.space.sample(1, np.random.default_rng(5), "natv2")[0]
    net.set_active(g)
    batches = [(torch.randn(8, 3, RES, RES, generator=torch.Generator().manual_seed(i)), None) for i in range(2)]
    static = recalibrate_on(net.extract(g), batches, channels_last=False)
    recalibrate_on(net, batches, channels_last=False)
    with torch.no_grad():
        assert torch.allclose(net.eval()(X), static.eval()(X), atol=1e-5)


def test_variant_implies_its_genes():
    assert SearchSpace.from_config({"variant": "EE_P"}).n_var == 2 + 20 + 5 + 1
    assert SearchSpace.from_config({"variant": "SE_D"}).n_var == 22
    with pytest.raises(Natv2Error, match="n_exits=3: the EE_B variant has 5 exits"):
        SearchSpace.from_config({"variant": "EE_B", "n_exits": 3})
    with pytest.raises(Natv2Error, match="only parallel-block variants"):
        SearchSpace.from_config({"variant": "SE_D", "levels": [1, 2]})


# ----------------------------------------------------------------------------- shrinking phases


def test_phases_for_variants():
    from natv2.shrinking import phases_for

    for variant in sorted(SUPERNETS):
        f = features(variant)
        names = phases_for(SearchSpace.from_config({"variant": variant}))
        assert ("level" in names) == f.parallel and ("exit1" in names) == f.early_exits, variant


def test_every_phase_runs_for_ee_d():
    from natv2.config import load_settings
    from natv2.data import DataBundle, ImageSet
    from natv2.shrinking import PHASE_NAMES, phases_for, run_phase

    g = torch.Generator().manual_seed(0)

    def images(n):
        return ImageSet(torch.randint(0, 256, (n, 3, RES, RES), dtype=torch.uint8, generator=g),
                        torch.randint(0, 3, (n,), generator=g))

    data = DataBundle(["a", "b", "c"], RES, (0.5,) * 3, (0.25,) * 3, images(32), images(8), images(8))
    settings = load_settings(overrides={
        "supernet": {"variant": "EE_D", "resolutions": [12, RES], "kernels": [3, 5], "expands": [2, 3], "stem_stride": 1},
        "supernet_train": {"batch_size": 16, "teacher_bn_images": 16,
                           "phases": {n: {"epochs": 1, "warmup_epochs": 0.0, "subnets_per_step": 2} for n in PHASE_NAMES}},
    })
    torch.manual_seed(0)
    net = build_supernet(settings.supernet, data.n_classes)
    assert phases_for(net.space) == ["full", "kernel", "exit1", "exit2", "exit3", "exit4", "depth1", "depth2",
                                     "expand1", "expand2"]
    start = {k: v.clone() for k, v in net.state_dict().items()}
    for name in PHASE_NAMES:
        summary = run_phase(net, name, data, settings.supernet_train, device="cpu", seed=0, progress=False)
        assert summary["skipped"] == (name == "level")
        if not summary["skipped"]:
            assert len(summary["history"]) == 1 and np.isfinite(summary["history"][0]["loss"])
    moved = [k for k, v in net.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, start[k])]
    assert any(k.startswith("exits.0.") for k in moved)  # the exit phase trained the first exit
    assert any(k.startswith("stages.4.3.") for k in moved)
