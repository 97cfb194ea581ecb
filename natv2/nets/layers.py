"""Generic static layers: conv-BN-activation, squeeze-excite, the MBConv block, BN folding.

These are the plain building blocks of every static (extracted) network; the elastic versions
in :mod:`natv2.nets.elastic` use the same child names, so a static net's state_dict keys are a
subset of its supernet's (with sliced shapes).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

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
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chs) if bn else nn.Identity()
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """x * hard_sigmoid(expand(relu(reduce(mean_hw(x)))))."""

    def __init__(self, chs: int, mid_chs: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(chs, mid_chs, 1, bias=True)
        self.expand = nn.Conv2d(mid_chs, chs, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3), keepdim=True)
        y = self.expand(F.relu(self.reduce(y)))
        return x * F.hardsigmoid(y)


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
        y = self.expand(x) if self.expand is not None else x
        y = self.dw(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return y + x if self.has_skip else y


def fold_bn(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` with every ConvBNAct's BN folded into its conv.

    Eval-mode BN is an affine map per channel, so it folds exactly into the preceding conv's
    weight and bias (torch.nn.utils.fusion); saves one pass over every activation map.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, ConvBNAct) and isinstance(m.bn, nn.BatchNorm2d):
            m.conv = fuse_conv_bn_eval(m.conv, m.bn)
            m.bn = nn.Identity()
    return model
