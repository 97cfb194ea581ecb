"""Helpers shared by the network tests."""
from __future__ import annotations

import torch


def randomize(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random BN statistics/affine and perturbed kernel transforms: no identity-like shortcuts."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "transform_" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bn.weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return net
