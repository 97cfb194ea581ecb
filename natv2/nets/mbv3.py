"""The OFA MobileNetV3 supernet and its static subnets (design.md §3).

Architecture as data: :class:`MBv3Spec` holds every width, stride, activation and SE flag; the
supernet and the static nets are built from it by the same stem/stage/head modules. A static
net's ``config`` (JSON) lists its blocks; ``StaticNet.from_config`` rebuilds it.

Layout (state_dict keys; the official OFA layout is mapped onto this by natv2.nets.official):

    stem.first.{conv,bn}            3x3 conv, stride = stem_stride (2 in OFA; 1 for 32-64 px)
    stem.block.{dw,project}         MBConv, expand 1, k3, ReLU, skip
    stages.{s}.{b}.{expand,dw,se,project}   5 stages x up to 4 blocks
    head.{expand,mix,classifier}    1x1 -> 960, pool, 1x1 -> 1280 (no BN), linear
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from natv2.config import setting
from natv2.errors import Natv2Error
from natv2.nets.elastic import ElasticMBConv
from natv2.nets.layers import ConvBNAct, MBConv, fold_bn, make_divisible
from natv2.space import SearchSpace


@dataclass(frozen=True)
class MBv3Spec:
    """OFA MobileNetV3 at one width multiplier. Facts from ofa/.../ofa_mbv3.py (Cai et al. 2020)."""

    width_mult: float = 1.0
    stem_stride: int = 2
    # stem conv, stem block, 5 stages, final expand, feature mix (before the width multiplier)
    base_widths: tuple[int, ...] = (16, 16, 24, 40, 80, 112, 160, 960, 1280)
    strides: tuple[int, ...] = (2, 2, 2, 1, 2)
    acts: tuple[str, ...] = ("relu", "relu", "h_swish", "h_swish", "h_swish")
    se: tuple[bool, ...] = (False, True, False, True, True)
    dropout: float = 0.1

    def width(self, i: int) -> int:
        return make_divisible(self.base_widths[i] * self.width_mult, 8)

    @property
    def stem_chs(self) -> int:
        return self.width(0)

    @property
    def stem_block_chs(self) -> int:
        return self.width(1)

    @property
    def stage_chs(self) -> tuple[int, ...]:
        return tuple(self.width(2 + i) for i in range(len(self.strides)))

    @property
    def head_mid(self) -> int:
        return self.width(7)

    @property
    def head_out(self) -> int:
        return self.width(8)


class Stem(nn.Module):
    def __init__(self, in_chs: int, chs: int, block_chs: int, stride: int) -> None:
        super().__init__()
        self.first = ConvBNAct(in_chs, chs, 3, stride, act="h_swish")
        self.block = MBConv(chs, block_chs, kernel=3, stride=1, mid_chs=chs, act="relu", se=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.first(x))


class Head(nn.Module):
    """1x1 expand + BN + h-swish, global pool, 1x1 mix (no BN) + h-swish, dropout, linear."""

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, n_classes: int, dropout: float) -> None:
        super().__init__()
        self.expand = ConvBNAct(in_chs, mid_chs, 1, act="h_swish")
        self.mix = ConvBNAct(mid_chs, out_chs, 1, act="h_swish", bn=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(out_chs, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.expand(x).mean((2, 3))
        # the 1x1 mix conv acts on a 1x1 map: a matrix product (the same weights, state_dict
        # and MACs), several times faster on CPU than a convolution over N x C x 1 x 1
        mix = self.mix
        x = mix.act(F.linear(x, mix.conv.weight.flatten(1), mix.conv.bias))
        return self.classifier(self.dropout(x))

    def reset_classifier(self, n_classes: int, generator: torch.Generator | None = None) -> None:
        """A fresh linear head for ``n_classes`` (used after loading ImageNet weights)."""
        lin = nn.Linear(self.classifier.in_features, n_classes)
        with torch.no_grad():
            bound = 1.0 / self.classifier.in_features**0.5
            lin.weight.uniform_(-bound, bound, generator=generator)
            lin.bias.uniform_(-bound, bound, generator=generator)
        self.classifier = lin.to(self.classifier.weight.device)


# ------------------------------------------------------------------------------------------ static


class ConfigNet(nn.Module):
    """What every static net shares: a JSON-able ``config`` it is rebuilt from, the input
    ``resolution`` it records, ``from_config`` (a bad config raises one Natv2Error) and ``fused``."""

    _config: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        return copy.deepcopy(self._config)

    @property
    def resolution(self) -> int | None:
        return self._config.get("resolution")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ConfigNet":
        try:
            return cls(config)
        except (KeyError, TypeError, ValueError, Natv2Error) as e:
            raise Natv2Error(f"static net config: missing or bad field ({type(e).__name__}: {e})") from None

    def fused(self) -> nn.Module:
        """An eval-mode copy with BN folded into the convolutions (for fast inference)."""
        return fold_bn(self)


class StaticNet(ConfigNet):
    """A plain network (no elastic code): stem, stages of MBConv blocks, head.

    ``config`` is JSON-able; ``StaticNet.from_config(config)`` rebuilds the same modules, so
    ``from_config(net.config).load_state_dict(net.state_dict())`` round-trips.
    """

    variant = "ofa_mbv3"

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        cfg = copy.deepcopy(dict(config))
        self._config = cfg
        st = cfg["stem"]
        self.stem = Stem(3, st["chs"], st["block_chs"], st["stride"])
        self.stages = nn.ModuleList(nn.Sequential(*(MBConv(**b) for b in stage)) for stage in cfg["stages"])
        hd = cfg["head"]
        self.head = Head(hd["in_chs"], hd["mid_chs"], hd["out_chs"], cfg["n_classes"], hd["dropout"])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._stages(self.stem(x))

    def _stages(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def forward_after_stem(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` given the stem's output ``x`` (natv2.evaluate's stem cache)."""
        return self.head(self._stages(x))

    def forward_to_last_bn(self, x: torch.Tensor, *, after_stem: bool = False) -> torch.Tensor:
        """The forward up to the head's BN, the last BN layer (what BN recalibration needs to run).

        ``after_stem``: ``x`` is the stem's output.
        """
        return self.head.expand(self._stages(x if after_stem else self.stem(x)))


# ------------------------------------------------------------------------------------------ supernet


class OFAMobileNetV3(nn.Module):
    """The OFA MobileNetV3 supernet: elastic kernel, expand ratio and depth; one width."""

    variant = "ofa_mbv3"
    static_class = StaticNet

    def __init__(self, spec: MBv3Spec, space: SearchSpace, n_classes: int) -> None:
        super().__init__()
        if space.n_stages != len(spec.strides):
            raise Natv2Error(f"supernet: the space has {space.n_stages} stages, the network {len(spec.strides)}")
        if len(space.widths) != 1 or abs(space.widths[0] - spec.width_mult) > 1e-9:
            raise Natv2Error(
                f"supernet.widths: one supernet holds one width; got {list(space.widths)} for width {spec.width_mult}"
            )
        self.spec, self.space, self.n_classes = spec, space, n_classes
        self.stem = Stem(3, spec.stem_chs, spec.stem_block_chs, spec.stem_stride)
        stages = []
        in_chs = spec.stem_block_chs
        for out_chs, stride, act, se in zip(spec.stage_chs, spec.strides, spec.acts, spec.se):
            blocks = []
            for b in range(space.max_blocks):
                blocks.append(self._block(in_chs, out_chs, kernels=space.kernels, expands=space.expands,
                                          stride=stride if b == 0 else 1, act=act, se=se))
                in_chs = out_chs
            stages.append(nn.ModuleList(blocks))
        self.stages = nn.ModuleList(stages)
        self._add_heads(in_chs, n_classes)
        self.active_depths = [space.max_blocks] * space.n_stages
        self.active_genome = space.largest()
        self.set_active(self.active_genome)

    # construction hooks of the variants (natv2.nets.ofav2): one elastic block, the head(s)

    def _block(self, in_chs: int, out_chs: int, **kw: Any) -> nn.Module:
        return ElasticMBConv(in_chs, out_chs, **kw)

    def _add_heads(self, in_chs: int, n_classes: int) -> None:
        spec = self.spec
        self.head = Head(in_chs, spec.head_mid, spec.head_out, n_classes, spec.dropout)

    @property
    def config(self) -> dict[str, Any]:
        """The ``supernet:`` config (JSON-able) that rebuilds this supernet with build_supernet."""
        sp = self.space
        return {
            "variant": self.variant,
            "resolutions": list(sp.resolutions),
            "widths": list(sp.widths),
            "kernels": list(sp.kernels),
            "expands": list(sp.expands),
            "depths": list(sp.depths),
            "n_stages": sp.n_stages,
            "max_blocks": sp.max_blocks,
            "n_exits": sp.n_exits,
            "stem_stride": self.spec.stem_stride,
            "dropout": self.spec.dropout,
        }

    # ------------------------------------------------------------------ active subnet

    def set_active(self, genome: Any) -> None:
        """Make ``genome`` the active subnet (validated; resolution is the caller's business)."""
        g = self.space.validate(genome)
        arch = self.space.decode(g)
        for s, blocks in enumerate(arch.stages):
            self.active_depths[s] = len(blocks)
            for b, (k, e) in enumerate(blocks):
                self.stages[s][b].set_active(k, e)
        self.active_genome = g

    def sample_active(self, rng: np.random.Generator, policy: str = "nat") -> np.ndarray:
        """Sample a genome with ``policy``, make it active and return it."""
        g = self.space.sample(1, rng, policy)[0]
        self.set_active(g)
        return g

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage, depth in zip(self.stages, self.active_depths):
            for block in stage[:depth]:
                x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    # ------------------------------------------------------------------ extraction

    def active_config(self) -> dict[str, Any]:
        arch = self.space.decode(self.active_genome)
        first = self.stem.first.conv
        return {
            "variant": self.variant,
            "n_classes": self.n_classes,
            "resolution": arch.resolution,
            "width": arch.width,
            "genome": self.space.to_string(self.active_genome),
            "stem": {"chs": first.out_channels, "block_chs": self.spec.stem_block_chs, "stride": first.stride[0]},
            "stages": [
                [stage[b].active_config() for b in range(depth)] for stage, depth in zip(self.stages, self.active_depths)
            ],
            "head": {
                "in_chs": self.head.expand.conv.in_channels,
                "mid_chs": self.head.expand.conv.out_channels,
                "out_chs": self.head.mix.conv.out_channels,
                "dropout": self.spec.dropout,
            },
        }

    @torch.no_grad()
    def extract(self, genome: Any | None = None) -> StaticNet:
        """A static net equal to the subnet ``genome`` (default: the active one).

        The supernet's active subnet is left as it was. The static net is on the supernet's
        device, in the supernet's train/eval mode.
        """
        previous = self.active_genome
        if genome is not None:
            self.set_active(genome)
        try:
            net = self.static_class(self.active_config())
            net.stem.load_state_dict(self.stem.state_dict())
            for s, depth in enumerate(self.active_depths):
                for b in range(depth):
                    net.stages[s][b] = self.stages[s][b].extract()
            net.head.load_state_dict(self.head.state_dict())
        finally:
            self.set_active(previous)
        device = self.head.classifier.weight.device
        return net.to(device).train(self.training)

    @torch.no_grad()
    def reorder_channels(self) -> None:
        """Sort every block's hidden channels by importance (see ElasticMBConv.reorder_channels)."""
        for stage in self.stages:
            for block in stage:
                block.reorder_channels()

    @torch.no_grad()
    def load_bn_stats_from(self, static: nn.Module) -> None:
        """Write a static subnet's BN statistics back into the active slices of this supernet.

        Static keys are a subset of the supernet's (same names, leading slices), so this is a
        prefix copy of every ``running_mean`` / ``running_var``.
        """
        own = self.state_dict()
        for key, value in static.state_dict().items():
            if key.endswith(("running_mean", "running_var")):
                own[key][: value.shape[0]].copy_(value)

    def reset_classifier(self, n_classes: int, generator: torch.Generator | None = None) -> None:
        self.head.reset_classifier(n_classes, generator)
        self.n_classes = n_classes


def build_ofa_mbv3(cfg: Any, n_classes: int) -> OFAMobileNetV3:
    """Registry builder: the OFA MobileNetV3 supernet from a ``supernet:`` config section."""
    space = SearchSpace.from_config(cfg)
    get = partial(setting, cfg)
    if space.n_exits:
        raise Natv2Error("supernet.n_exits: the ofa_mbv3 variant has no early exits; set 0")
    # stem_stride and dropout: MBv3Spec's defaults (OFA's, as the schema's) unless the config sets them
    given = {k: cast(get(k)) for k, cast in (("stem_stride", int), ("dropout", float)) if get(k) is not None}
    spec = MBv3Spec(width_mult=space.widths[0], **given)
    return OFAMobileNetV3(spec, space, n_classes)
