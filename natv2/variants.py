"""Names of the supernet variants and the search-space genes each one implies (no torch here).

OFAv2 (Sarti et al., arXiv 2302.01888) names its supernets ``<exits>_<blocks>``:

    exits   SE = single exit (the usual head)   EE = early exits (one head after every stage)
    blocks  B  = base MBConv blocks             D  = dense skips inside a stage
            P  = parallel blocks                DP = dense skips and parallel blocks

plus ``ofa_mbv3``, the plain OFA MobileNetV3. The variant decides two parts of the genome:

- EE adds the exit gene (``n_exits = n_stages``, the last gene);
- P folds a *branch set* into every block slot's code (OFAv2's "net width", nw): each block runs
  any non-empty subset of its three parallel branches (MBConv, 1x1 conv + BN + act, max-pool +
  1x1 conv + BN + act). ``levels`` are the allowed subset *sizes* (OFAv2's ``net_width_list``,
  default 1, 2, 3); a subset is named by the original's key (:data:`BRANCH_KEYS`, 1..7: bit 4 =
  MBConv, 2 = 1x1 conv, 1 = pool; ``my_networks.py:403-421``).

:func:`space_fields` gives those SearchSpace fields, so ``SearchSpace.from_config`` derives them
from ``supernet.variant`` alone (one config key chooses the variant).
"""
from __future__ import annotations

from dataclasses import dataclass

from natv2.errors import Natv2Error

BASE_VARIANT = "ofa_mbv3"
OFAV2_VARIANTS: tuple[str, ...] = ("SE_B", "SE_D", "SE_P", "SE_DP", "EE_B", "EE_D", "EE_P", "EE_DP")
VARIANTS: tuple[str, ...] = (BASE_VARIANT, *OFAV2_VARIANTS)
# allowed numbers of parallel branches a block runs (OFAv2 net_width_list)
PARALLEL_LEVELS: tuple[int, ...] = (1, 2, 3)
BRANCHES: tuple[str, ...] = ("mbconv", "conv", "pool")
# OFAv2 nw key -> which branches run, (mbconv, conv, pool) (OFA_mbv3_extended/networks/nets/my_networks.py:403-411)
BRANCH_KEYS: dict[int, tuple[bool, bool, bool]] = {
    key: (bool(key & 4), bool(key & 2), bool(key & 1)) for key in range(1, 8)
}


def branch_keys(levels) -> tuple[int, ...]:
    """The branch-set keys with ``levels`` active branches, in OFAv2's order.

    ``get_valid_nw_keys`` (``my_networks.py:433-454``): for each size in ``levels`` (ascending),
    the keys with that many branches, ascending; (1, 2, 3) -> (1, 2, 4, 3, 5, 6, 7).
    """
    return tuple(k for n in sorted(levels) for k, on in BRANCH_KEYS.items() if sum(on) == n)


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
