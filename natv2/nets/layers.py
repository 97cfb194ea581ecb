"""Generic static layers: conv-BN-activation, squeeze-excite, the MBConv block, BN folding.

These are the plain building blocks of every static (extracted) network; the elastic versions
in :mod:`natv2.nets.elastic` use the same child names, so a static net's state_dict keys are a
subset of its supernet's (with sliced shapes).
"""
from __future__ import annotations

import copy
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from natv2.nets.depthwise import depthwise_conv2d

ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=True),
    "h_swish": lambda: nn.Hardswish(inplace=True),
    "none": nn.Identity,
}


def make_divisible(v: float, divisor: int = 8, min_val: int | None = None) -> int:
    """Round channels to a multiple of ``divisor``, never more than 10% down.

    From the TF MobileNet code, as used by OFA (ofa.utils.make_divisible): widths must match
    the official checkpoints to the channel.
    """
    min_val = divisor if min_val is None else min_val
    new_v = max(min_val, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def reachable_taps(weight: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """A stride-1 'same' conv filter centre-cropped to the taps that can touch an ``x``-sized map,
    and the padding that goes with it: the same output and the same gradients, exactly.

    On an H x W map, a tap more than H - 1 rows (W - 1 columns) from the centre only ever
    multiplies zero padding, and its gradient is zero either way. At 32 px the last stages run on
    2 x 2 and 1 x 1 maps, where a 7 x 7 depthwise filter's backward costs 10-100x that of the
    3 x 3 / 1 x 1 that reaches (oneDNN, CPU): most of a training step of the largest subnet.
    """
    kh, kw = weight.shape[-2:]
    ph, pw = min(kh // 2, x.shape[-2] - 1), min(kw // 2, x.shape[-1] - 1)
    if (ph, pw) != (kh // 2, kw // 2):
        ch, cw = kh // 2 - ph, kw // 2 - pw
        weight = weight[:, :, ch : kh - ch, cw : kw - cw]
    return weight, (ph, pw)


def crop_pays(weight: torch.Tensor) -> bool:
    """Whether to try :func:`reachable_taps` (the caller checks stride 1, no dilation): a filter
    larger than 1 x 1 in a training step (autograd on, no export trace); inference and export
    keep the filter as deployed."""
    return weight.shape[-1] > 1 and torch.is_grad_enabled() and not torch.jit.is_tracing()


def se_channels(chs: int) -> int:
    """Hidden width of the squeeze-excite of a ``chs``-channel feature map (reduction 4, as in OFA)."""
    return make_divisible(chs // 4, 8)


def make_act(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


class ConvBNAct(nn.Module):
    """conv -> BN (optional) -> activation, 'same' padding."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        *,
        groups: int = 1,
        act: str = "relu",
        bn: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(out_chs) if bn else nn.Identity()
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if (type(conv) is nn.Conv2d and conv.dilation == (1, 1) and conv.padding_mode == "zeros"
                and crop_pays(conv.weight)):
            weight, padding = conv.weight, conv.padding
            if conv.stride == (1, 1):  # a late-stage map smaller than the filter: same result, less work
                weight, padding = reachable_taps(weight, x)
            if conv.bias is None and conv.groups == conv.in_channels == conv.out_channels > 1:
                return self.act(self.bn(depthwise_conv2d(x, weight, conv.stride[0], padding)))
            if weight is not conv.weight:
                return self.act(self.bn(F.conv2d(x, weight, conv.bias, 1, padding, conv.dilation, conv.groups)))
        return self.act(self.bn(conv(x)))


class SqueezeExcite(nn.Module):
    """x * hard_sigmoid(expand(relu(reduce(mean_hw(x)))))."""

    def __init__(self, chs: int, mid_chs: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(chs, mid_chs, 1, bias=True)
        self.expand = nn.Conv2d(mid_chs, chs, 1, bias=True)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The per-image, per-channel factors (N, C, 1, 1) that multiply ``x``."""
        # the 1x1 convs act on a 1x1 map: matrix products (same weights, state_dict and MACs),
        # several times faster on CPU than convolutions over N x C x 1 x 1
        y = x.mean((2, 3))
        y = F.relu(F.linear(y, self.reduce.weight.flatten(1), self.reduce.bias))
        y = F.linear(y, self.expand.weight.flatten(1), self.expand.bias)
        return F.hardsigmoid(y)[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale(x)


class MBConv(nn.Module):
    """Inverted residual block: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 project (+ skip)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        kernel: int,
        stride: int,
        mid_chs: int,
        act: str,
        se: bool,
    ) -> None:
        super().__init__()
        self.in_chs, self.out_chs, self.kernel, self.stride = in_chs, out_chs, kernel, stride
        self.mid_chs, self.act_name, self.use_se = mid_chs, act, se
        self.has_skip = stride == 1 and in_chs == out_chs
        # expand ratio 1 (the stem block) has no expansion conv
        self.expand = ConvBNAct(in_chs, mid_chs, 1, act=act) if mid_chs != in_chs else None
        self.dw = ConvBNAct(mid_chs, mid_chs, kernel, stride, groups=mid_chs, act=act)
        self.se = SqueezeExcite(mid_chs, se_channels(mid_chs)) if se else None
        self.project = ConvBNAct(mid_chs, out_chs, 1, act="none")

    def config(self) -> dict:
        return {
            "in_chs": self.in_chs,
            "out_chs": self.out_chs,
            "kernel": self.kernel,
            "stride": self.stride,
            "mid_chs": self.mid_chs,
            "act": self.act_name,
            "se": self.use_se,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # without autograd the SE product and the skip sum go in place (into tensors made here)
        inplace = not torch.is_grad_enabled()
        y = self.expand(x) if self.expand is not None else x
        y = self.dw(y)
        if self.se is not None:
            y = y.mul_(self.se.scale(y)) if inplace else self.se(y)
        y = self.project(y)
        if not self.has_skip:
            return y
        return y.add_(x) if inplace else y + x


def fold_bn(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` with every ConvBNAct's BN folded into its conv.

    Eval-mode BN is an affine map per channel, so it folds exactly into the preceding conv's
    weight and bias (torch.nn.utils.fusion); saves one pass over every activation map.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, ConvBNAct) and isinstance(m.conv, nn.Conv2d) and isinstance(m.bn, nn.BatchNorm2d):
            m.conv = fuse_conv_bn_eval(m.conv, m.bn)
            m.bn = nn.Identity()
    return model


# ------------------------------------------------------------------------------ private ops
# One private torch op speeds up CPU evaluation: aten.native_batch_norm.out (in-place
# recalibration BN, natv2.evaluate; bench/private_ops.py measured 1.37x). It has a public
# reference path it is tested against (tests/test_evaluate_fast.py); NATV2_PRIVATE_OPS=0 in the
# environment switches it off. oneDNN's fused conv + activation
# (mkldnn._convolution_pointwise) was removed: the same bench measured it at 0.98x, and private
# ops stay only behind a measured speed-up.

PRIVATE_OPS_ENV = "NATV2_PRIVATE_OPS"


def private_ops_enabled() -> bool:
    """False when the environment sets ``NATV2_PRIVATE_OPS=0``: only public torch ops then."""
    return os.environ.get(PRIVATE_OPS_ENV, "1").strip() != "0"
