"""Knowledge distillation: the soft-target loss and the teachers that give soft targets.

A teacher, for :func:`natv2.train.train`, is anything called on a batch that returns *logits*
(``N x classes``): an ``nn.Module`` (e.g. the largest subnet of the supernet, extracted and BN
recalibrated) or a plain callable. Early-exit nets distil from the weighted ensemble of the
teacher's exits (OFAv2 ENS-KD); :class:`ExitEnsembleTeacher` turns a multi-exit module into such
a teacher by returning the weighted sum of its exit logits, whose softmax is the soft target,
so the engine needs no special case.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from natv2.errors import Natv2Error
from natv2.exits import exit_weights, weighted_logits


def soft_targets(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The teacher's class probabilities at ``temperature`` (float32, no gradient)."""
    return F.softmax(logits.detach().float() / temperature, dim=1)


def kd_loss(student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Hinton's distillation loss: ``T^2 * KL(p_teacher || softmax(student / T))``, batch mean.

    The ``T^2`` factor keeps the gradient scale independent of the temperature (Hinton et al.,
    2015). At ``T = 1`` it differs from OFA's soft-target cross-entropy only by the teacher's
    entropy, a constant, so the gradients are the same.
    """
    if student_logits.shape != target_probs.shape:
        raise Natv2Error(
            f"distillation: student logits {tuple(student_logits.shape)} and teacher targets "
            f"{tuple(target_probs.shape)} differ in shape (same classes expected)"
        )
    log_p = F.log_softmax(student_logits.float() / temperature, dim=1)
    return F.kl_div(log_p, target_probs, reduction="batchmean") * temperature**2


def ensemble_logits(exit_logits: Sequence[torch.Tensor], table: Sequence[float] | None = None) -> torch.Tensor:
    """OFAv2's ENS-KD teacher logits: ``sum_i w_i * z_i`` over exits 1..n (``N x classes``, no gradient).

    ``new_progressive_shrinking.py:361-377`` weights the exits' *logits* and sums them; the soft
    target is the softmax of that sum (not a mean of the exits' probabilities). ``table``: one
    weight per exit of the supernet (natv2.exits; None = the original's).
    """
    w = exit_weights(range(1, len(exit_logits) + 1), table)
    return weighted_logits([z.detach().float() for z in exit_logits], w)


class ExitEnsembleTeacher(nn.Module):
    """A teacher whose logits are the weighted sum of a multi-exit net's exit logits (ENS-KD).

    ``net(x)`` must return a list/tuple of exit logits (shallowest first), as the multi-exit
    static net of an early-exit supernet does; the engine's softmax of the returned logits is
    the original's ``teacher_soft_label``.
    """

    def __init__(self, net: nn.Module, weights: Sequence[float] | None = None):
        super().__init__()
        self.net = net
        self.weights = None if weights is None else tuple(float(v) for v in weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = self.net(x)
        if isinstance(outs, torch.Tensor):
            outs = [outs]
        return ensemble_logits(list(outs), self.weights)
