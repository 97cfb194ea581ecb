"""Knowledge distillation: the soft-target loss and the teachers that give soft targets.

A teacher, for :func:`natv2.train.train`, is anything called on a batch that returns *logits*
(``N x classes``): an ``nn.Module`` (e.g. the largest subnet of the supernet, extracted and BN
recalibrated) or a plain callable. Early-exit nets distil from the weighted ensemble of the
teacher's exits (OFAv2); :class:`ExitEnsembleTeacher` turns a multi-exit module into such a
teacher by returning the log of the ensembled probabilities, which are valid logits
(``softmax(log p) = p``), so the engine needs no special case.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from natv2.errors import Natv2Error


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


def exit_weights(n_exits: int, weights: Sequence[float] | None = None) -> torch.Tensor:
    """Normalised ensemble weights of ``n_exits`` exits.

    Default (our choice; OFAv2 does not fix one we could verify): proportional to the exit's
    position 1..n, so deeper, more accurate exits count more.
    """
    w = torch.arange(1, n_exits + 1, dtype=torch.float32) if weights is None else torch.tensor(list(weights), dtype=torch.float32)
    if w.numel() != n_exits or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise Natv2Error(f"exit weights {list(w.tolist())}: expected {n_exits} non-negative numbers with a positive sum")
    return w / w.sum()


def ensemble_probs(exit_logits: Sequence[torch.Tensor], weights: Sequence[float] | None = None) -> torch.Tensor:
    """Weighted average of the exits' softmax probabilities (``N x classes``)."""
    w = exit_weights(len(exit_logits), weights)
    probs = torch.stack([F.softmax(z.detach().float(), dim=1) for z in exit_logits])
    return torch.einsum("e,enc->nc", w.to(probs.device), probs)


class ExitEnsembleTeacher(nn.Module):
    """A teacher whose logits are the log of the weighted ensemble of a multi-exit net's exits.

    ``net(x)`` must return a list/tuple of exit logits (shallowest first), as the multi-exit
    static net of an early-exit supernet does.
    """

    def __init__(self, net: nn.Module, weights: Sequence[float] | None = None):
        super().__init__()
        self.net = net
        self.weights = None if weights is None else tuple(float(v) for v in weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = self.net(x)
        if isinstance(outs, torch.Tensor):
            outs = [outs]
        probs = ensemble_probs(list(outs), self.weights)
        return probs.clamp_min(1e-12).log()
