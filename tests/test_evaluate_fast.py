"""The fast evaluation paths give the plain paths' numbers: stem cache, in-place BN, folded and chunked inference."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from net_helpers import randomize

import natv2.evaluate as ev
from natv2.config import EvaluationConfig
from natv2.evaluate import (
    StemCache,
    evaluate_genomes,
    prepare_batches,
    prepare_stem_cache,
    recalibrate_on,
    top1_on,
)
from natv2.nets import build_supernet
from natv2.nets.layers import MBConv, SqueezeExcite, fold_bn
from natv2.nets.mbv3 import Head
from natv2.splits import DataBundle, ImageSet

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
RES = 24


def image_set(n: int, seed: int, size: int = RES, n_classes: int = 4) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
                    torch.randint(0, n_classes, (n,), generator=g))


def supernet(variant: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = build_supernet({"variant": variant, "resolutions": [RES], "stem_stride": 1}, 4)
    return randomize(net, seed + 1).eval()


def batches(n: int, seed: int, batch_size: int, channels_last: bool = True):
    return prepare_batches(image_set(n, seed), resolution=RES, mean=MEAN, std=STD, batch_size=batch_size,
                           channels_last=channels_last)


def running_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model.eval()(x)
    return out if isinstance(out, torch.Tensor) else torch.stack(out)


@pytest.mark.parametrize("variant,channels_last", [("ofa_mbv3", True), ("ofa_mbv3", False), ("EE_D", True), ("EE_DP", True)])
def test_stem_cache_gives_the_whole_subnets_statistics_and_top1(variant, channels_last):
    net = supernet(variant)
    bn_b = batches(48, 1, 16, channels_last)
    val_b = batches(60, 2, 25, channels_last)
    bn_c, val_c = prepare_stem_cache(net.stem, bn_b, val_b, channels_last=channels_last)
    assert isinstance(bn_c, StemCache) and isinstance(val_c, StemCache)
    assert bn_c.batches is bn_b and len(val_c.features) == len(val_b)  # the plain batches ride along
    assert bn_c.features[0].shape == (16, net.spec.stem_block_chs, RES, RES)
    x = batches(8, 3, 8, channels_last)[0][0]
    for g in net.space.sample(3, np.random.default_rng(4), "natv2"):
        plain = net.extract(g)
        recalibrate_on(plain, bn_b, channels_last)
        fast = net.extract(g)
        calls = []
        hook = fast.stem.register_forward_hook(lambda *a, calls=calls: calls.append(1))
        recalibrate_on(fast, bn_c, channels_last)
        acc_fast = top1_on(fast, val_c, channels_last=channels_last)
        assert calls == []  # the stem never ran: the cache was used
        # the eval cache holds folded outputs: unfolded, the whole subnet runs
        acc_fast_unfolded = top1_on(fast, val_c, fold=False, channels_last=channels_last)
        assert len(calls) == len(val_b)
        hook.remove()
        assert isinstance(fast.stem, nn.Module) and not isinstance(fast.stem, nn.Identity)  # never swapped out
        a, b = running_stats(plain), running_stats(fast)
        assert a.keys() == b.keys()
        for k in a:  # including the stem's own BN layers, copied from the cache
            assert torch.allclose(a[k].float(), b[k].float(), rtol=1e-6, atol=1e-6), k
        assert top1_on(plain, val_b, channels_last=channels_last) == acc_fast
        assert top1_on(plain, val_b, fold=False, channels_last=channels_last) == acc_fast_unfolded
        assert torch.allclose(logits(plain, x), logits(fast, x), rtol=1e-5, atol=1e-5)


def test_stem_cache_without_bn_batches_uses_the_stems_statistics():
    net = supernet("ofa_mbv3")
    val_b = batches(40, 2, 20)
    bn_c, val_c = prepare_stem_cache(net.stem, None, val_b)
    assert bn_c is None and isinstance(val_c, StemCache)
    g = net.space.sample(1, np.random.default_rng(1), "natv2")[0]
    static = net.extract(g)
    assert top1_on(static, val_c) == top1_on(static, val_b)


def test_unfolded_stem_cache():
    net = supernet("EE_D")
    bn_b, val_b = batches(32, 1, 16), batches(40, 2, 20)
    bn_c, val_c = prepare_stem_cache(net.stem, bn_b, val_b, fold=False)
    for g in net.space.sample(2, np.random.default_rng(7), "natv2"):
        plain, fast = net.extract(g), net.extract(g)
        recalibrate_on(plain, bn_b)
        recalibrate_on(fast, bn_c)
        calls = []
        hook = fast.stem.register_forward_hook(lambda *a, calls=calls: calls.append(1))
        acc = top1_on(fast, val_c, fold=False)
        hook.remove()
        assert calls == [] and acc == top1_on(plain, val_b, fold=False)
        assert not ev._cache_fits(fast, val_c, "eval", channels_last=True, fold=True)


def test_stem_cache_memory_cap_falls_back_to_whole_subnets():
    net = supernet("ofa_mbv3")
    bn_b, val_b = batches(32, 1, 16), batches(40, 2, 20)
    per_image = 4 * net.spec.stem_block_chs * RES * RES
    bn_c, val_c = prepare_stem_cache(net.stem, bn_b, val_b, max_bytes=per_image * 72)  # exactly fits
    assert isinstance(val_c, StemCache) and bn_c.nbytes + val_c.nbytes == per_image * 72
    for cap in (per_image * 72 - 1, 0):
        assert prepare_stem_cache(net.stem, bn_b, val_b, max_bytes=cap) == (bn_b, val_b)
        out = prepare_stem_cache(net.stem, bn_b, val_b, max_bytes=cap)
        assert out[0] is bn_b and out[1] is val_b
    assert prepare_stem_cache(net.stem, None, None) == (None, None)


def test_a_different_stem_runs_whole():
    net = supernet("ofa_mbv3")
    bn_b, val_b = batches(32, 1, 16), batches(40, 2, 20)
    bn_c, val_c = prepare_stem_cache(net.stem, bn_b, val_b)
    g = net.space.sample(1, np.random.default_rng(2), "natv2")[0]

    def changed():
        static = net.extract(g)
        with torch.no_grad():
            static.stem.first.conv.weight.mul_(1.5)
        return static

    a, b = changed(), changed()
    recalibrate_on(a, bn_b)
    recalibrate_on(b, bn_c)  # other weights than the cache's: the whole subnet runs
    for k, v in running_stats(a).items():
        assert torch.allclose(v.float(), running_stats(b)[k].float(), rtol=1e-6, atol=1e-6), k
    assert top1_on(a, val_b) == top1_on(b, val_c)
    # the same weights but other BN statistics: the eval cache does not fit either
    c = net.extract(g)
    recalibrate_on(c, bn_c)
    with torch.no_grad():
        c.stem.first.bn.running_var.mul_(2.0)
    assert not ev._cache_fits(c, val_c, "eval", channels_last=True)
    assert top1_on(c, val_c) == top1_on(c, val_b)
    # another stride, same weights
    d = net.extract(g)
    d.stem.first.conv.stride = (2, 2)
    assert not ev._cache_fits(d, bn_c, "train", channels_last=True)
    # the supernet's stem trained after the cache was made: the cache keeps the old weights
    with torch.no_grad():
        net.stem.block.project.conv.weight.add_(0.01)
    e = net.extract(g)
    assert not ev._cache_fits(e, bn_c, "train", channels_last=True)
    with torch.no_grad():
        net.stem.block.project.conv.weight.sub_(0.01)


def test_in_place_recalibration_bn_is_bit_identical_to_batchnorm():
    g = torch.Generator().manual_seed(0)
    for fmt in (torch.contiguous_format, torch.channels_last):
        for affine in (True, False):
            ref = nn.BatchNorm2d(6, affine=affine, momentum=None).train()
            mine = nn.BatchNorm2d(6, affine=affine, momentum=None).train()
            if affine:
                with torch.no_grad():
                    for bn in (ref, mine):
                        bn.weight.copy_(torch.arange(6) * 0.3 + 0.5)
                        bn.bias.copy_(torch.arange(6) * -0.1)
            wrapped = ev._InPlaceBN(mine)
            for _ in range(3):
                x = (3 * torch.randn(5, 6, 7, 7, generator=g) + 2).contiguous(memory_format=fmt)
                with torch.no_grad():
                    expected = ref(x.clone())
                    got = wrapped(x)
                assert got.data_ptr() == x.data_ptr()  # in place
                assert torch.equal(got, expected)
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                assert torch.equal(getattr(ref, name), getattr(mine, name)), name


def test_recalibration_leaves_bn_modules_and_momenta_as_they_were():
    net = supernet("ofa_mbv3")
    static = net.extract(net.space.largest())
    bns = {n: m for n, m in static.named_modules() if isinstance(m, nn.BatchNorm2d)}
    recalibrate_on(static, batches(20, 1, 10))
    after = {n: m for n, m in static.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert after.keys() == bns.keys() and all(after[n] is bns[n] for n in bns)
    assert all(m.momentum == 0.1 for m in after.values())
    assert not any(isinstance(m, ev._InPlaceBN) for m in static.modules())
    assert all(int(m.num_batches_tracked) == 2 for m in after.values())


def test_the_accuracy_pass_runs_public_ops_only():
    """_inference_net folds BN and nothing else: the fused oneDNN conv (0.98x in bench/private_ops.py) is gone."""
    net = supernet("EE_DP")
    static = net.extract(net.space.sample(1, np.random.default_rng(3), "natv2")[0])
    recalibrate_on(static, batches(20, 1, 10))
    inference = ev._inference_net(static, True, True)
    convs = [m for m in inference.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is nn.Conv2d for m in convs)
    x = batches(6, 2, 6)[0][0]
    with torch.inference_mode():  # exactly the BN-folded net
        assert torch.equal(inference(x), fold_bn(static).to(memory_format=torch.channels_last)(x))


def test_top1_on_chunks_give_the_same_accuracy(monkeypatch):
    net = supernet("ofa_mbv3")
    static = net.extract(net.space.sample(1, np.random.default_rng(5), "natv2")[0])
    recalibrate_on(static, batches(20, 1, 10))
    val_b = batches(90, 2, 45)
    whole = top1_on(static, val_b)
    monkeypatch.setattr(ev, "EVAL_CHUNK_PIXELS", 7 * RES * RES)  # 45 -> 7+7+...+3
    assert [len(x) for x, _ in ev._chunks(*val_b[0])] == [7] * 6 + [3]
    assert top1_on(static, val_b) == whole
    x, y = val_b[0]
    assert top1_on(static, [(x[:1], y[:1])]) in (0.0, 100.0)


def test_squeeze_excite_and_head_match_their_conv_forms():
    g = torch.Generator().manual_seed(0)
    se = SqueezeExcite(16, 8)
    head = Head(16, 24, 32, 5, 0.0).eval()
    x = torch.randn(3, 16, 5, 5, generator=g).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        s = x.mean((2, 3), keepdim=True)
        expected = x * F.hardsigmoid(se.expand(F.relu(se.reduce(s))))
        assert torch.allclose(se(x), expected, atol=1e-6)
        h = head.expand(x).mean((2, 3), keepdim=True)
        expected = head.classifier(F.hardswish(head.mix.conv(h)).flatten(1))
        assert torch.allclose(head(x), expected, atol=1e-5)


def test_mbconv_in_place_only_without_autograd():
    g = torch.Generator().manual_seed(0)
    block = MBConv(16, 16, kernel=3, stride=1, mid_chs=48, act="h_swish", se=True).eval()
    x = torch.randn(2, 16, 6, 6, generator=g)
    before = x.clone()
    with torch.no_grad():
        y_nograd = block(x)
    assert torch.equal(x, before)  # the input is never written
    xg = x.clone().requires_grad_(True)
    y = block(xg)
    assert torch.allclose(y, y_nograd, atol=1e-6)
    y.square().sum().backward()  # the autograd path keeps out-of-place ops
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def test_evaluate_genomes_with_and_without_the_stem_cache(monkeypatch):
    net = supernet("EE_D")
    data = DataBundle(["a", "b", "c", "d"], RES, MEAN, STD, image_set(64, 3), image_set(30, 4), image_set(10, 5))
    cfg = EvaluationConfig(bn_images=32, batch_size=16, channels_last=True, fold_bn=True, latency=False,
                           latency_batch_size=1, latency_repeats=1, latency_warmup=0)
    genomes = net.space.sample(3, np.random.default_rng(6), "natv2")
    made = []
    real = ev.prepare_stem_cache
    monkeypatch.setattr(ev, "prepare_stem_cache", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    fast = evaluate_genomes(net, genomes, data, cfg, progress=False, seed=1)
    assert isinstance(made[-1][1], StemCache)
    whole = evaluate_genomes(net, genomes, data, cfg, progress=False, seed=1, stem_cache_bytes=0)
    assert not isinstance(made[-1][1], StemCache)
    assert fast["top1"].tolist() == whole["top1"].tolist()
    assert fast[["genome", "params", "macs"]].equals(whole[["genome", "params", "macs"]])
    unfolded = evaluate_genomes(net, genomes, data, dataclasses.replace(cfg, fold_bn=False), progress=False, seed=1)
    assert np.allclose(unfolded["top1"], fast["top1"], atol=100 / 30 + 1e-9)  # at most one image flips


def test_public_ops_path_is_the_reference_of_the_private_ops(monkeypatch):
    """NATV2_PRIVATE_OPS=0: no aten.native_batch_norm.out; same statistics and outputs."""
    net = supernet("EE_DP")
    g = net.space.sample(1, np.random.default_rng(4), "natv2")[0]
    bn_b, x = batches(20, 1, 10), batches(6, 2, 6)[0][0]

    def run():
        static = net.extract(g)
        recalibrate_on(static, bn_b)
        stats = {k: v.clone() for k, v in static.state_dict().items() if "running" in k}
        folded = fold_bn(static).to(memory_format=torch.channels_last)
        with torch.inference_mode():
            return stats, folded(x)

    monkeypatch.setenv("NATV2_PRIVATE_OPS", "1")
    private_stats, private_out = run()
    assert ev._in_place_bns(net.extract(g)) or not any(p.device.type == "cpu" for p in net.parameters())
    monkeypatch.setenv("NATV2_PRIVATE_OPS", "0")
    public_stats, public_out = run()
    assert not ev._in_place_bns(net.extract(g))
    for key, value in public_stats.items():
        assert torch.equal(value, private_stats[key]), key  # in-place BN: bit-identical statistics
    assert torch.equal(private_out, public_out)  # the same statistics: the same outputs


@pytest.mark.parametrize("variant", ["ofa_mbv3", "EE_D"])
def test_recalibration_stops_at_the_last_bn_with_the_whole_forwards_statistics(variant):
    net = supernet(variant)
    bn_b = batches(32, 1, 16)
    g = net.space.sample(1, np.random.default_rng(2), "natv2")[0]
    short, whole = net.extract(g), net.extract(g)
    heads = [m for m in short.modules() if type(m).__name__ == "Head"]
    calls = []
    hooks = [h.classifier.register_forward_hook(lambda *a: calls.append(1)) for h in heads]
    recalibrate_on(short, bn_b)
    for h in hooks:
        h.remove()
    assert heads and calls == []  # the pass ended at the heads' BN: no classifier ran
    whole.train()
    ev._recalibrate(whole, [x for x, _ in bn_b])  # the whole forward
    a, b = running_stats(short), running_stats(whole)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
