"""Several widths in one search: one single-width supernet per width, picked by the width gene.

NAT and NATv2 search w1.0 and w1.2 together: the genome's width gene chooses between two
supernets (NAT's ``GenSupernet``, ``NAT_extended/supernets/supernet.py:6-66``: a list of
engines, ``set_active_subnet(w=...)`` activates one, forward and extraction go to it). Here
:class:`MultiWidthSupernet` holds the engines side by side in one module (one checkpoint file,
state-dict keys ``engines.{i}.<engine key>``), so every step that trains, evaluates or extracts
a supernet handles both widths without knowing it:

    net = build_supernet({"variant": "EE_D", "widths": [1.0, 1.2]}, n_classes=10)
    net.set_active(g)          # g[1] (width gene) picks net.engines[g[1]]
    static = net.extract(g)    # the chosen engine's static subnet

Training: a step trains the engine of each sampled genome; the other engine's parameters get no
gradient (``zero_grad(set_to_none=True)``), so SGD leaves them untouched (no weight decay or
momentum step), as if the two supernets were trained in separate jobs on the same batches.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from natv2.errors import Natv2Error
from natv2.space import SearchSpace


class MultiWidthSupernet(nn.Module):
    """One engine (single-width supernet) per entry of ``space.widths``; the width gene picks one."""

    def __init__(self, engines: Sequence[nn.Module], space: SearchSpace) -> None:
        super().__init__()
        if len(engines) != len(space.widths) or len(engines) < 2:
            raise Natv2Error(f"supernet.widths: {list(space.widths)} needs one engine per width, got {len(engines)}")
        for w, engine in zip(space.widths, engines):
            if engine.space != dataclasses.replace(space, widths=(w,)):
                raise Natv2Error(f"supernet.widths: the engine for width {w} has another search space")
        self.engines = nn.ModuleList(engines)
        self.space = space
        self.variant = engines[0].variant
        self.static_class = engines[0].static_class
        self.n_classes = engines[0].n_classes
        self.active_index = len(engines) - 1
        self.active_genome = space.largest()
        self.set_active(self.active_genome)

    # ------------------------------------------------------------------ the width gene

    def engine_genome(self, genome: Any) -> tuple[int, np.ndarray]:
        """(engine index, the genome in that engine's one-width space: width gene 0)."""
        g = self.space.validate(genome)
        sub = g.copy()
        sub[1] = 0
        return int(g[1]), sub

    @property
    def active(self) -> nn.Module:
        """The engine of the active subnet's width."""
        return self.engines[self.active_index]

    @property
    def early_exits(self) -> bool:
        return bool(getattr(self.engines[0], "early_exits", False))

    @property
    def joint_exits(self) -> bool:
        """Early-exit engines return every exit's logits (the joint full phase, the warm-up)."""
        return bool(getattr(self.engines[0], "joint_exits", False))

    @joint_exits.setter
    def joint_exits(self, value: bool) -> None:
        for engine in self.engines:
            engine.joint_exits = value

    @property
    def config(self) -> dict[str, Any]:
        """The ``supernet:`` config that rebuilds this supernet (every width)."""
        return {**self.engines[0].config, "widths": list(self.space.widths)}

    # ------------------------------------------------------------------ the Supernet interface

    def set_active(self, genome: Any) -> None:
        index, sub = self.engine_genome(genome)
        self.engines[index].set_active(sub)
        self.active_index = index
        self.active_genome = self.space.validate(genome)

    def sample_active(self, rng: np.random.Generator, policy: str = "nat") -> np.ndarray:
        g = self.space.sample(1, rng, policy)[0]
        self.set_active(g)
        return g

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.active.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.active(x)

    @torch.no_grad()
    def extract(self, genome: Any | None = None, **kwargs: Any) -> nn.Module:
        """The static subnet ``genome`` (default: the active one) of its width's engine.

        Keyword arguments go to the engine's ``extract`` (e.g. ``all_exits`` for early-exit nets).
        """
        index, sub = self.engine_genome(self.active_genome if genome is None else genome)
        return self.engines[index].extract(sub, **kwargs)

    @torch.no_grad()
    def reorder_channels(self) -> None:
        for engine in self.engines:
            engine.reorder_channels()

    @torch.no_grad()
    def load_bn_stats_from(self, static: nn.Module) -> None:
        """Write a static subnet's BN statistics into the active engine (the subnet's width)."""
        self.active.load_bn_stats_from(static)

    def reset_classifier(self, n_classes: int, generator: torch.Generator | None = None) -> None:
        for engine in self.engines:
            engine.reset_classifier(n_classes, generator)
        self.n_classes = n_classes


def _one_width(cfg: Any, width: float) -> Any:
    """``cfg`` (a SupernetConfig or mapping) with ``widths = [width]``."""
    if isinstance(cfg, Mapping):
        return {**cfg, "widths": [width]}
    if dataclasses.is_dataclass(cfg):
        return dataclasses.replace(cfg, widths=[width])
    raise Natv2Error(f"supernet config: expected a mapping or a SupernetConfig, got {type(cfg).__name__}")


def build_multiwidth(cfg: Any, n_classes: int, build_one: Callable[[Any, int], nn.Module]) -> MultiWidthSupernet:
    """One ``build_one(cfg with one width, n_classes)`` per width of ``cfg``, behind the width gene."""
    space = SearchSpace.from_config(cfg)
    engines = [build_one(_one_width(cfg, w), n_classes) for w in space.widths]
    return MultiWidthSupernet(engines, space)


__all__ = ["MultiWidthSupernet", "build_multiwidth"]
