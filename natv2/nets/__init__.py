"""Supernets and static nets, by variant name.

    net = build_supernet(settings.supernet, n_classes=10)   # registry by cfg.variant
    net.set_active(genome); logits = net(x)
    static = net.extract(genome)                            # plain nn.Module
    again = static_from_config(static.config); again.load_state_dict(static.state_dict())

A new variant registers a builder ``(cfg, n_classes) -> supernet`` with
:func:`register_supernet` and its static class with :func:`register_static`; the tests loop
over :data:`SUPERNETS`.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch.nn as nn

from natv2.config import setting
from natv2.errors import Natv2Error
from natv2.nets.mbv3 import MBv3Spec, OFAMobileNetV3, StaticNet, build_ofa_mbv3

SUPERNETS: dict[str, Callable[[Any, int], nn.Module]] = {}
STATIC_NETS: dict[str, type] = {}


def register_supernet(name: str, builder: Callable[[Any, int], nn.Module] | None = None):
    """Register ``builder`` under ``name`` (usable as a decorator)."""

    def _add(fn):
        SUPERNETS[name] = fn
        return fn

    return _add(builder) if builder is not None else _add


def register_static(name: str, cls: type) -> None:
    STATIC_NETS[name] = cls


register_supernet("ofa_mbv3", build_ofa_mbv3)
register_static("ofa_mbv3", StaticNet)

# the OFAv2 variants (early exits, dense skips, parallel blocks; natv2.nets.ofav2)
from natv2.nets.ofav2 import OFAV2_VARIANTS, OFAv2StaticNet, build_ofav2  # noqa: E402

for _name in OFAV2_VARIANTS:
    register_supernet(_name, build_ofav2)
    register_static(_name, OFAv2StaticNet)

Supernet = OFAMobileNetV3  # the base class other variants extend


def build_supernet(cfg: Any, n_classes: int) -> nn.Module:
    """The supernet named by ``cfg.variant`` (a ``supernet:`` config section or mapping)."""
    variant = setting(cfg, "variant", "ofa_mbv3")
    if variant not in SUPERNETS:
        raise Natv2Error(f"supernet.variant {variant!r}: expected one of {sorted(SUPERNETS)}")
    if not isinstance(n_classes, int) or n_classes < 1:
        raise Natv2Error(f"n_classes {n_classes!r}: expected a positive integer")
    widths = setting(cfg, "widths")
    if widths is not None and len(list(widths)) > 1:
        # NAT / NATv2: one supernet per width, the width gene picks one (natv2.nets.multiwidth)
        from natv2.nets.multiwidth import build_multiwidth

        return build_multiwidth(cfg, n_classes, SUPERNETS[variant])
    return SUPERNETS[variant](cfg, n_classes)


def static_from_config(config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a static net from its ``config`` (dispatches on ``config['variant']``)."""
    variant = config.get("variant") if isinstance(config, Mapping) else None
    if variant not in STATIC_NETS:
        raise Natv2Error(f"static net config variant {variant!r}: expected one of {sorted(STATIC_NETS)}")
    return STATIC_NETS[variant].from_config(config)


__all__ = [
    "MBv3Spec",
    "OFAMobileNetV3",
    "STATIC_NETS",
    "SUPERNETS",
    "StaticNet",
    "Supernet",
    "build_supernet",
    "register_static",
    "register_supernet",
    "static_from_config",
]
