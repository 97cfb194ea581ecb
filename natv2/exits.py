"""Early-exit weights: the one normaliser and the one default of the package.

OFAv2 and NATv2 weight the exits of an early-exit net, shallowest first, with
``[0.06, 0.13, 0.20, 0.27, 0.34]`` (``OFA_mbv3_extended/train/utils.py:286-287``,
``branches_weights`` = ``ensemble_weights``). The same weights serve the joint training loss
``sum_i w_i * CE_i`` (``OFA_mbv3_extended/run_manager/early_exit_run_manager.py:313-324``),
the ENS-KD teacher ``softmax(sum_i w_i * z_i)`` (``OFA_mbv3_extended/train/new_progressive_shrinking.py:361-377``)
and the AEP fine-tune (weighted loss, weighted sum of logits; ``finetune_natnet_ens.py:241-258``).
A subset of the exits (AEP, a net pruned to fewer exits) keeps the default weights of its
stages, renormalised to sum 1.
"""
from __future__ import annotations

from typing import Sequence

from natv2.errors import Natv2Error

#: The original's exit weights, shallowest (after stage 1) first.
DEFAULT_EXIT_WEIGHTS: tuple[float, ...] = (0.06, 0.13, 0.20, 0.27, 0.34)


def normalise(weights: Sequence[float], where: str = "exit weights") -> list[float]:
    """``weights / sum(weights)``; raises Natv2Error unless non-negative with a positive sum."""
    w = [float(v) for v in weights]
    if not w or any(v < 0 for v in w) or sum(w) <= 0:
        raise Natv2Error(f"{where} {w}: expected non-negative numbers with a positive sum")
    total = sum(w)
    return [v / total for v in w]


def exit_weights(stages: Sequence[int], table: Sequence[float] | None = None) -> list[float]:
    """Normalised weights of the exits after ``stages`` (1-based, shallowest first).

    ``table``: one weight per exit of the supernet, shallowest first (config
    ``supernet_train.exit_weights``); None = :data:`DEFAULT_EXIT_WEIGHTS`. The weights of
    ``stages`` are taken from it and renormalised.
    """
    table = DEFAULT_EXIT_WEIGHTS if table is None else tuple(float(v) for v in table)
    stages = [int(s) for s in stages]
    if not stages or min(stages) < 1 or max(stages) > len(table):
        raise Natv2Error(f"exit weights {list(table)}: expected one weight for each of the exits {stages} "
                         f"(one per exit of the supernet, shallowest first)")
    return normalise([table[s - 1] for s in stages])


def weighted_logits(outputs: Sequence, weights: Sequence[float]):
    """``sum_i w_i * z_i`` of the exits' logits (the ensemble output of an early-exit net)."""
    outputs = list(outputs)
    if len(outputs) != len(weights):
        raise Natv2Error(f"exit weights {list(weights)}: {len(weights)} weights for {len(outputs)} exits")
    return sum(float(w) * z for w, z in zip(weights, outputs))


def exit_loss(outputs, y, weights: Sequence[float] | None = None, *, label_smoothing: float = 0.0):
    """``sum_i w_i * CE_i``: the weighted per-exit cross-entropy of a multi-exit output.

    ``outputs``: exit logits, shallowest first (a single tensor counts as one exit);
    ``weights``: one per output, normalised here; None = the default weights of exits
    ``1..len(outputs)`` (the net's exits are the first ones, as in joint training and AEP).
    """
    import torch
    import torch.nn.functional as F

    if isinstance(outputs, torch.Tensor):
        outputs = [outputs]
    outputs = list(outputs)
    w = exit_weights(range(1, len(outputs) + 1)) if weights is None else normalise(weights)
    if len(w) != len(outputs):
        raise Natv2Error(f"exit weights {w}: {len(w)} weights for {len(outputs)} exits")
    return sum(wi * F.cross_entropy(z.float(), y, label_smoothing=label_smoothing) for wi, z in zip(w, outputs))
