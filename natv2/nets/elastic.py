"""Elastic layers (OFA, Cai et al. ICLR 2020): weights stored at the largest size, sliced on use.

- elastic width (expand ratio): the leading channels of the expansion, depthwise, SE and
  projection weights and of BN parameters and statistics;
- elastic kernel: the centre of the 7x7 depthwise kernel, passed through a learned per-layer
  linear map (25x25 for 7->5, then 9x9 for 5->3), initialised to identity;
- elastic depth lives in the supernet (first d blocks of a stage).

Child names equal those of the static layers in :mod:`natv2.nets.layers`, so
``static.state_dict()`` keys are a subset of the supernet's.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from natv2.nets.depthwise import depthwise_conv2d
from natv2.nets.layers import MBConv, crop_pays, make_act, make_divisible, reachable_taps, se_channels


class ElasticBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the leading ``x.size(1)`` channels; running stats of those channels update in place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or not self.track_running_stats
        return F.batch_norm(
            x,
            self.running_mean[:c] if self.running_mean is not None else None,
            self.running_var[:c] if self.running_var is not None else None,
            self.weight[:c],
            self.bias[:c],
            use_batch_stats,
            factor,
            self.eps,
        )

    def copy_to(self, bn: nn.BatchNorm2d) -> None:
        """Copy the leading ``bn.num_features`` channels (parameters and statistics) into ``bn``."""
        c = bn.num_features
        with torch.no_grad():
            bn.weight.copy_(self.weight[:c])
            bn.bias.copy_(self.bias[:c])
            bn.running_mean.copy_(self.running_mean[:c])
            bn.running_var.copy_(self.running_var[:c])
            bn.num_batches_tracked.copy_(self.num_batches_tracked)
        bn.eps, bn.momentum = self.eps, self.momentum

    def permute_(self, idx: torch.Tensor) -> None:
        with torch.no_grad():
            for t in (self.weight, self.bias, self.running_mean, self.running_var):
                t.copy_(t[idx])


class ElasticPointwise(nn.Module):
    """1x1 conv -> elastic BN -> activation; output channels chosen per call, input = x's channels."""

    def __init__(self, max_in: int, max_out: int, act: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(max_in, max_out, 1, bias=False)
        self.bn = ElasticBatchNorm2d(max_out)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor, out_chs: int) -> torch.Tensor:
        w = self.conv.weight[:out_chs, : x.shape[1]]
        return self.act(self.bn(F.conv2d(x, w)))


class ElasticDepthwiseConv(nn.Module):
    """Depthwise conv with elastic kernel size via kernel transformation matrices."""

    def __init__(self, max_chs: int, kernels: tuple[int, ...], stride: int) -> None:
        super().__init__()
        self.kernels = tuple(sorted(kernels))
        self.stride = stride
        kmax = self.kernels[-1]
        self.weight = nn.Parameter(torch.empty(max_chs, 1, kmax, kmax))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        # transform_{big}to{small}: (small^2 x small^2), identity at init (OFA §3.2)
        for big, small in zip(self.kernels[1:], self.kernels[:-1]):
            self.register_parameter(f"transform_{big}to{small}", nn.Parameter(torch.eye(small * small)))

    def filter(self, chs: int, kernel: int) -> torch.Tensor:
        """The (chs, 1, kernel, kernel) depthwise filter of the active configuration."""
        w = self.weight[:chs]
        # walk down 7 -> 5 -> 3: centre-crop, then the learned linear map of the smaller kernel
        for big, small in zip(reversed(self.kernels[1:]), reversed(self.kernels[:-1])):
            if big <= kernel:
                break
            start = (big - small) // 2
            crop = w[:, :, start : start + small, start : start + small].reshape(-1, small * small)
            w = F.linear(crop, getattr(self, f"transform_{big}to{small}")).view(chs, 1, small, small)
        if w.shape[-1] != kernel:
            raise ValueError(f"kernel {kernel} not in {self.kernels}")
        return w

    def forward(self, x: torch.Tensor, kernel: int) -> torch.Tensor:
        chs = x.shape[1]
        w = self.filter(chs, kernel)
        if self.stride == 1 and crop_pays(w):
            w, padding = reachable_taps(w, x)  # exact: taps beyond a small map only see padding
            return depthwise_conv2d(x, w.contiguous(), 1, padding)
        return depthwise_conv2d(x, w.contiguous(), self.stride, kernel // 2)


class ElasticDepthwise(nn.Module):
    def __init__(self, max_chs: int, kernels: tuple[int, ...], stride: int, act: str) -> None:
        super().__init__()
        self.conv = ElasticDepthwiseConv(max_chs, kernels, stride)
        self.bn = ElasticBatchNorm2d(max_chs)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor, kernel: int) -> torch.Tensor:
        return self.act(self.bn(self.conv(x, kernel)))


class ElasticSqueezeExcite(nn.Module):
    """Squeeze-excite over the leading channels; hidden width se_channels(active channels)."""

    def __init__(self, max_chs: int) -> None:
        super().__init__()
        mid = se_channels(max_chs)
        self.reduce = nn.Conv2d(max_chs, mid, 1, bias=True)
        self.expand = nn.Conv2d(mid, max_chs, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        m = se_channels(c)
        # matrix products on the pooled (N, C), as the static SqueezeExcite (same values)
        y = x.mean((2, 3))
        y = F.relu(F.linear(y, self.reduce.weight[:m, :c].flatten(1), self.reduce.bias[:m]))
        y = F.linear(y, self.expand.weight[:c, :m].flatten(1), self.expand.bias[:c])
        return x * F.hardsigmoid(y)[:, :, None, None]


class ElasticMBConv(nn.Module):
    """An MBConv whose kernel and expand ratio are set by ``active_kernel`` / ``active_expand``."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        kernels: tuple[int, ...],
        expands: tuple[int, ...],
        stride: int,
        act: str,
        se: bool,
    ) -> None:
        super().__init__()
        self.in_chs, self.out_chs, self.stride, self.act_name, self.use_se = in_chs, out_chs, stride, act, se
        self.kernels, self.expands = tuple(sorted(kernels)), tuple(sorted(expands))
        self.has_skip = stride == 1 and in_chs == out_chs
        max_mid = self.mid_channels(max(self.expands))
        self.expand = ElasticPointwise(in_chs, max_mid, act)
        self.dw = ElasticDepthwise(max_mid, self.kernels, stride, act)
        self.se = ElasticSqueezeExcite(max_mid) if se else None
        self.project = ElasticPointwise(max_mid, out_chs, "none")
        self.active_kernel = max(self.kernels)
        self.active_expand = max(self.expands)

    def mid_channels(self, expand: int) -> int:
        return make_divisible(round(self.in_chs * expand), 8)

    def set_active(self, kernel: int, expand: int) -> None:
        if kernel not in self.kernels or expand not in self.expands:
            raise ValueError(f"(kernel {kernel}, expand {expand}) not in {self.kernels} x {self.expands}")
        self.active_kernel, self.active_expand = kernel, expand

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.mid_channels(self.active_expand)
        y = self.expand(x, mid)
        y = self.dw(y, self.active_kernel)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y, self.out_chs)
        return y + x if self.has_skip else y

    def active_config(self) -> dict:
        """The static MBConv config of the active configuration."""
        return {
            "in_chs": self.in_chs,
            "out_chs": self.out_chs,
            "kernel": self.active_kernel,
            "stride": self.stride,
            "mid_chs": self.mid_channels(self.active_expand),
            "act": self.act_name,
            "se": self.use_se,
        }

    @torch.no_grad()
    def extract(self) -> MBConv:
        """A static MBConv holding the active slices (and the transformed depthwise kernel)."""
        cfg = self.active_config()
        block = MBConv(**cfg)
        mid = cfg["mid_chs"]
        block.expand.conv.weight.copy_(self.expand.conv.weight[:mid])
        self.expand.bn.copy_to(block.expand.bn)
        block.dw.conv.weight.copy_(self.dw.conv.filter(mid, self.active_kernel))
        self.dw.bn.copy_to(block.dw.bn)
        if self.se is not None:
            m = se_channels(mid)
            block.se.reduce.weight.copy_(self.se.reduce.weight[:m, :mid])
            block.se.reduce.bias.copy_(self.se.reduce.bias[:m])
            block.se.expand.weight.copy_(self.se.expand.weight[:mid, :m])
            block.se.expand.bias.copy_(self.se.expand.bias[:mid])
        block.project.conv.weight.copy_(self.project.conv.weight[:, :mid])
        self.project.bn.copy_to(block.project.bn)
        return block

    @torch.no_grad()
    def reorder_channels(self) -> None:
        """Sort the hidden channels by importance (L1 norm of the projection weights), descending.

        Smaller expand ratios use the leading channels, so they keep the most important ones
        (OFA's re_organize_middle_weights). The block's function at full width is unchanged:
        the same channels are only permuted consistently through every layer.
        """
        importance = self.project.conv.weight.abs().sum(dim=(0, 2, 3))
        idx = torch.argsort(importance, descending=True, stable=True)
        self.project.conv.weight.copy_(self.project.conv.weight[:, idx])
        self.dw.conv.weight.copy_(self.dw.conv.weight[idx])
        self.dw.bn.permute_(idx)
        self.expand.conv.weight.copy_(self.expand.conv.weight[idx])
        self.expand.bn.permute_(idx)
        if self.se is not None:
            se = self.se
            se.expand.weight.copy_(se.expand.weight[idx])
            se.expand.bias.copy_(se.expand.bias[idx])
            se.reduce.weight.copy_(se.reduce.weight[:, idx])
            # the SE hidden units too, by the L1 norm of their expand weights
            se_idx = torch.argsort(se.expand.weight.abs().sum(dim=(0, 2, 3)), descending=True, stable=True)
            se.expand.weight.copy_(se.expand.weight[:, se_idx])
            se.reduce.weight.copy_(se.reduce.weight[se_idx])
            se.reduce.bias.copy_(se.reduce.bias[se_idx])
