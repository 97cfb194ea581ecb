"""Peer test: our OFA MobileNetV3 against the reference ``ofa`` package, to the last digit.

Their supernet gets random weights, random kernel-transformation matrices and random BN
statistics (so that a wrong slice or a wrong key cannot hide behind identity-like defaults),
is saved the way the official checkpoints are (``{"state_dict": ...}``) and loaded with our
official loader. For random genomes at several resolutions our supernet and our extracted
static net must give their logits, and our static net must have as many parameters as their
``get_active_subnet()``.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from natv2.nets import official
from natv2.space import SearchSpace

ofa_networks = pytest.importorskip("ofa.imagenet_classification.elastic_nn.networks")

RESOLUTIONS = (32, 48, 64)
N_GENOMES = 20
TOL = 1e-4


def _their_net(width: float, n_classes: int, seed: int):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = ofa_networks.OFAMobileNetV3(
            n_classes=n_classes, dropout_rate=0.1, width_mult=width,
            ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4],
        )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("_matrix"):  # identity + noise: the transform must really be applied
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bn.weight") or name.endswith("bn.bn.weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return net.eval()


def _their_setting(space: SearchSpace, genome: np.ndarray) -> dict:
    arch = space.decode(genome)
    ks, es = [], []
    for blocks in arch.stages:
        padded = list(blocks) + [(3, 3)] * (space.max_blocks - len(blocks))
        ks += [k for k, _ in padded]
        es += [e for _, e in padded]
    return {"ks": ks, "e": es, "d": list(arch.depths)}


@pytest.mark.parametrize("width", [1.0, 1.2])
def test_same_logits_and_params_as_ofa(width, tmp_path):
    n_classes = 10
    theirs = _their_net(width, n_classes, seed=int(width * 10))
    path = tmp_path / "ofa.pth"
    torch.save({"state_dict": theirs.state_dict()}, path)

    cfg = {"variant": "ofa_mbv3", "resolutions": list(RESOLUTIONS), "widths": [width], "stem_stride": 2}
    ours = official.load_official(path, cfg, n_classes).eval()
    space = ours.space
    n = N_GENOMES if width == 1.0 else 4  # width 1.2: a shorter check of the other channel counts
    genomes = np.concatenate([space.sample(n - 2, np.random.default_rng(0), "natv2"), [space.smallest(), space.largest()]])
    genomes[:, 0] = np.arange(len(genomes)) % len(RESOLUTIONS)  # every resolution, several times
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    for genome in genomes:
        res = space.decode(genome).resolution
        x = torch.randn(2, 3, res, res, generator=gen)
        setting = _their_setting(space, genome)
        theirs.set_active_subnet(**setting)
        ours.set_active(genome)
        with torch.no_grad():
            ref = theirs(x)
            ours_dyn = ours(x)
            static = ours.extract(genome).eval()
            ours_static = static(x)
            their_sub = theirs.get_active_subnet(preserve_weight=True).eval()
            ref_sub = their_sub(x)
        assert ref.abs().max() > 1e-2  # not a degenerate all-zero comparison
        diff = max((ours_dyn - ref).abs().max().item(), (ours_static - ref).abs().max().item())
        assert (ref_sub - ref).abs().max().item() <= TOL  # their own extraction agrees with them
        assert diff <= TOL, f"{space.to_string(genome)}: max abs diff {diff:.2e}"
        worst = max(worst, diff)
        assert sum(p.numel() for p in static.parameters()) == sum(p.numel() for p in their_sub.parameters())
    assert len(set(space.decode(g).resolution for g in genomes)) == len(RESOLUTIONS)
    print(f"width {width}: {len(genomes)} genomes, worst |diff| {worst:.2e}")


def test_full_supernet_param_count_and_old_key_spelling(tmp_path):
    theirs = _their_net(1.0, 1000, seed=3)
    # the oldest hosted files use 'mobile_inverted_conv' and un-nested elastic names
    state = {}
    for k, v in theirs.state_dict().items():
        k = k.replace(".conv.conv.weight", ".conv.weight").replace(".bn.bn.", ".bn.").replace(".linear.linear.", ".linear.")
        state[k.replace("blocks.5.conv.", "blocks.5.mobile_inverted_conv.")] = v
    path = tmp_path / "old.pth"
    torch.save({"state_dict": state}, path)
    ours = official.load_official(path, {"resolutions": [64], "stem_stride": 2}, 1000).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    theirs.set_max_net()
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() <= TOL
