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


def _depth(arch, d: int) -> dict:
    """Changes that cut every stage of ``arch`` to depth ``d`` (branch sets too, in P spaces)."""
    out = {"stages": tuple(s[:d] for s in arch.stages)}
    if arch.branches is not None:
        out["branches"] = tuple(b[:d] for b in arch.branches)
    return out


@pytest.mark.parametrize("variant", ["SE_D", "EE_P", "SE_DP"])
def test_params_fall_as_depth_and_branches_shrink(variant):
    net = make(variant)
    space, g = net.space, net.space.largest()
    arch = space.decode(g)
    counts = [n_params(net.extract(_with(space, g, **_depth(arch, d)))) for d in (4, 3, 2)]
    assert counts[0] > counts[1] > counts[2]
    if space.levels:
        # all three branches > MBConv + 1x1 conv > MBConv alone (keys 7, 6, 4)
        by_set = [n_params(net.extract(_with(space, g, branches=((key,) * 4,) * 5))) for key in (7, 6, 4)]
        assert by_set[0] > by_set[1] > by_set[2]


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


def test_dense_skips_switch_with_depth_and_the_mbconv_branch_alone_is_the_plain_block():
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
    g2 = _with(space, space.largest(), **_depth(space.decode(space.largest()), 2))
    g4 = space.largest()
    with torch.no_grad():
        for net in (base, dense):
            net.set_active(g2)
        assert torch.allclose(base(X), dense(X), atol=1e-6)  # depth 2: block 2 only sees block 1
        for net in (base, dense):
            net.set_active(g4)
        assert (base(X) - dense(X)).abs().max() > 1e-3  # depth 4: earlier outputs are summed in
        pspace = par.space
        par.set_active(_with(pspace, pspace.largest(), branches=((4,) * 4,) * 5))  # key 4 = MBConv only
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
    # permuted sums: rounding only (relative to the logits' scale, large with random weights)
    assert (before - after).abs().max() <= 1e-5 * before.abs().max()


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
    assert SearchSpace.from_config({"variant": "EE_P"}).n_var == 2 + 20 + 1  # branch sets live in the slot codes
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
        assert ("level1" in names) == ("level2" in names) == f.parallel and ("exit1" in names) == f.early_exits, variant


def test_every_phase_runs_for_ee_d():
    from natv2.config import load_settings
    from natv2.shrinking import PHASE_NAMES, phases_for, run_phase
    from natv2.splits import DataBundle, ImageSet

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
        assert summary["skipped"] == name.startswith("level")
        if not summary["skipped"]:
            assert len(summary["history"]) == 1 and np.isfinite(summary["history"][0]["loss"])
    moved = [k for k, v in net.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, start[k])]
    assert any(k.startswith("exits.0.") for k in moved)  # the exit phase trained the first exit
    assert any(k.startswith("stages.4.3.") for k in moved)


# ----------------------------------------------------------------------------- fidelity to OFAv2


class _Tagged(torch.nn.Module):
    """A stand-in block: records its input, returns a constant map (the block's 'output')."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value, self.seen = value, None

    def forward(self, x):
        self.seen = x.clone()
        return torch.full_like(x, self.value)


def test_dense_stage_wiring_is_the_originals():
    """OFAv2 dense stage, ``OFA_mbv3_extended/networks/stages/dynamic_stages/dyn_stages.py:189-197``
    with ``OFA_mbv3_extended/utils/common_tools.py:29-42`` (``get_input_tensor``): block inputs
    x, o1, o2, o3 + o1; stage output o2 at depth 2, o3 + o1 at depth 3, o4 + o1 + o2 at depth 4."""
    from natv2.nets.ofav2 import run_stage

    x = torch.full((1, 1, 2, 2), 0.5)
    expected_out = {2: 10.0, 3: 100.0 + 1.0, 4: 1000.0 + 1.0 + 10.0}
    for depth, out in expected_out.items():
        blocks = [_Tagged(v) for v in (1.0, 10.0, 100.0, 1000.0)[:depth]]
        y = run_stage(blocks, x, dense=True)
        assert torch.equal(y, torch.full_like(x, out)), depth
        seen = [b.seen.flatten()[0].item() for b in blocks]
        assert seen == [0.5, 1.0, 10.0, 101.0][:depth]
    # the supernet and its static subnets follow the same wiring (checked on real blocks)
    net = make("SE_D")
    g = net.space.largest()
    net.set_active(g)
    with torch.no_grad():
        h = net.stem(X)
        for stage in net.stages:
            o1 = stage[0](h)
            o2 = stage[1](o1)
            o3 = stage[2](o2)
            o4 = stage[3](o3 + o1)
            h = o4 + o1 + o2
        manual = net.head(h)
        assert (net(X) - manual).abs().max() <= 1e-5 * manual.abs().max()
        assert (net.extract(g).eval()(X) - manual).abs().max() <= 1e-5 * manual.abs().max()


def test_parallel_block_branches_are_the_originals():
    """OFAv2 parallel blocks, ``OFA_mbv3_extended/networks/stages/dynamic_stages/dyn_layers_builders.py:76-129``
    (MBConv residual block, ``conv1x1_layers_builder``: 1x1 ConvLayer + BN + act with the block's
    stride, ``transformation_layers_builder``) and ``OFA_mbv3_extended/networks/layers/static_layers/
    stat_layers.py:50-85`` (``TransformationLayer``: MaxPool2d(stride, stride, ceil_mode) if strided,
    1x1 Conv2d with bias if the width changes, then BN + act); the active branches are summed
    (``dyn_stages.py:295-313``), the branch set given by the nw key (``my_networks.py:403-411``)."""
    import torch.nn.functional as F

    from natv2.nets.ofav2 import ParallelBlock

    def bn(m, x):
        return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    gen = torch.Generator().manual_seed(0)
    # first block of a stage: strided, width change, h_swish
    cfg = {"in_chs": 8, "out_chs": 16, "kernel": 3, "stride": 2, "mid_chs": 24, "act": "h_swish", "se": False}
    full = randomize(ParallelBlock(cfg, 7), 3).eval()
    x = torch.randn(2, 8, 7, 7, generator=gen)
    with torch.no_grad():
        conv = F.hardswish(bn(full.conv.bn, F.conv2d(x, full.conv.conv.weight, stride=2)))
        pooled = F.max_pool2d(x, 2, 2, ceil_mode=True)
        pool = F.hardswish(bn(full.pool.bn, F.conv2d(pooled, full.pool.conv.weight, full.pool.conv.bias)))
        mb = full.mbconv(x)
        assert conv.shape == pool.shape == mb.shape == (2, 16, 4, 4)
        assert torch.allclose(full(x), mb + conv + pool, atol=1e-5)
        for key, parts in {4: mb, 2: conv, 1: pool, 6: mb + conv, 5: mb + pool, 3: conv + pool}.items():
            block = ParallelBlock(cfg, key).eval()
            block.load_state_dict({k: v for k, v in full.state_dict().items() if k in block.state_dict()})
            assert torch.allclose(block(x), parts, atol=1e-5), key
    # a later block: stride 1, same width -> the pool branch is BN + act alone; the MBConv keeps its
    # residual, so a block without the MBConv branch has no identity path
    cfg2 = {"in_chs": 16, "out_chs": 16, "kernel": 5, "stride": 1, "mid_chs": 48, "act": "relu", "se": True}
    later = randomize(ParallelBlock(cfg2, 3), 4).eval()
    assert isinstance(later.pool.conv, torch.nn.Identity) and isinstance(later.pool.pool, torch.nn.Identity)
    assert later.mbconv is None
    y = torch.randn(2, 16, 4, 4, generator=gen)
    with torch.no_grad():
        conv = F.relu(bn(later.conv.bn, F.conv2d(y, later.conv.conv.weight)))
        assert torch.allclose(later(y), conv + F.relu(bn(later.pool.bn, y)), atol=1e-5)
    # parameters: 1x1 conv + BN; pool branch of the first block adds the conv's bias
    assert sum(p.numel() for p in full.conv.parameters()) == 8 * 16 + 2 * 16
    assert sum(p.numel() for p in full.pool.parameters()) == 8 * 16 + 16 + 2 * 16
    assert sum(p.numel() for p in later.pool.parameters()) == 2 * 16


def test_parallel_supernet_picks_branch_sets_per_block():
    """Each block of a parallel supernet runs its own branch set (OFAv2 sets the nw key per block,
    ``dyn_stages.py:350-370``); the static subnet holds only the active branches."""
    net = make("SE_P")
    space = net.space
    arch = space.decode(space.largest())
    keys = ((4, 1, 2, 7), (3, 5, 6, 4), (1, 2, 4, 7), (7, 7, 7, 7), (2, 2, 2, 2))
    g = _with(space, space.largest(), branches=keys)
    static = net.extract(g).eval()
    for s, stage in enumerate(static.stages):
        for b, block in enumerate(stage):
            want = keys[s][b]
            assert block.branches == want
            assert [block.mbconv is not None, block.conv is not None, block.pool is not None] == [
                bool(want & 4), bool(want & 2), bool(want & 1)]
    net.set_active(g)
    with torch.no_grad():
        assert (net(X) - static(X)).abs().max() <= 1e-5 * static(X).abs().max()
    assert arch.branches == ((7,) * 4,) * 5
