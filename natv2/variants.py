"""Names of the supernet variants and the search-space genes each one implies (no torch here).

OFAv2 (Sarti et al., arXiv 2302.01888) names its supernets ``<exits>_<blocks>``:

    exits   SE = single exit (the usual head)   EE = early exits (one head after every stage)
    blocks  B  = base MBConv blocks             D  = dense skips inside a stage
            P  = parallel blocks                DP = dense skips and parallel blocks

plus ``ofa_mbv3``, the plain OFA MobileNetV3. The variant decides two parts of the genome:

- EE adds the exit gene (``n_exits = n_stages``, the last gene);
- P adds one *level* gene per stage (``levels``: how many of the block's parallel branches
  run — 1 = the MBConv alone, 2 = + the 1x1 conv branch, 3 = + the pool/projection branch).

:func:`space_fields` gives those SearchSpace fields, so ``SearchSpace.from_config`` derives them
from ``supernet.variant`` alone (one config key chooses the variant).
"""
from __future__ import annotations

from dataclasses import dataclass

from natv2.errors import Natv2Error

BASE_VARIANT = "ofa_mbv3"
OFAV2_VARIANTS: tuple[str, ...] = ("SE_B", "SE_D", "SE_P", "SE_DP", "EE_B", "EE_D", "EE_P", "EE_DP")
VARIANTS: tuple[str, ...] = (BASE_VARIANT, *OFAV2_VARIANTS)
# level = number of parallel branches that run: MBConv, + 1x1 conv, + pool/projection
PARALLEL_LEVELS: tuple[int, ...] = (1, 2, 3)


@dataclass(frozen=True)
class VariantFeatures:
    """What a variant name says about the network."""

    name: str
    early_exits: bool = False
    dense: bool = False
    parallel: bool = False


def features(variant: str) -> VariantFeatures:
    """Parse a variant name; an unknown one raises Natv2Error listing the known ones."""
    if variant == BASE_VARIANT:
        return VariantFeatures(variant)
    if variant not in OFAV2_VARIANTS:
        raise Natv2Error(f"supernet.variant {variant!r}: expected one of {list(VARIANTS)}")
    exits, blocks = variant.split("_")
    return VariantFeatures(variant, early_exits=exits == "EE", dense="D" in blocks, parallel="P" in blocks)


def space_fields(variant: str | None, n_stages: int, *, n_exits: int | None = None,
                 levels: tuple[int, ...] | list[int] | None = None) -> dict:
    """The SearchSpace fields ``n_exits`` and ``levels`` that ``variant`` implies.

    ``n_exits`` / ``levels`` as given in a config: 0 / empty (the config default) means "as the
    variant says"; a value that contradicts the variant raises Natv2Error naming the key.
    Unknown variant names are left to the supernet registry (no fields derived).
    """
    if variant is None or (variant not in VARIANTS):
        out = {}
        if n_exits is not None:
            out["n_exits"] = int(n_exits)
        if levels:
            out["levels"] = tuple(int(v) for v in levels)
        return out
    f = features(variant)
    want_exits = n_stages if f.early_exits else 0
    if n_exits not in (None, 0, want_exits):
        raise Natv2Error(
            f"supernet.n_exits={n_exits}: the {variant} variant has {want_exits} exits "
            f"({'one per stage' if f.early_exits else 'no early exits'}); leave it at 0"
        )
    given_levels = tuple(int(v) for v in (levels or ()))
    if given_levels and not f.parallel:
        raise Natv2Error(f"supernet.levels={list(given_levels)}: only parallel-block variants (*_P, *_DP) have levels")
    if f.parallel:
        bad = [v for v in given_levels if v not in PARALLEL_LEVELS]
        if bad:
            raise Natv2Error(f"supernet.levels={list(given_levels)}: expected values in {list(PARALLEL_LEVELS)}")
    return {"n_exits": want_exits, "levels": (given_levels or PARALLEL_LEVELS) if f.parallel else ()}
