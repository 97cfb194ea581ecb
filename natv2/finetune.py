"""NATv2 post-processing: two-step fine-tuning of a front member (Sarti et al. 2023, §post-processing).

Step 1 trains the subnet extracted from the supernet on the training split and measures the
validation loss after every epoch; :class:`EarlyStopping` stops it after ``patience`` epochs
without improvement (or at ``max_epochs``) and records the best epoch. Epoch 0 (the extracted
net, untrained) counts too: when no epoch beats it, the best epoch is 0 and step 2 does nothing.
Step 2 re-extracts the subnet (fresh supernet weights) and trains it on train + val for exactly
the best epoch count, with the same optimizer and a cosine schedule over that many epochs;
the result is then tested. Paper values: patience 30, at most 150 epochs, SGD lr 1e-4
(single-exit supernets), AdamW lr 1e-4 (early-exit ones).

Not here yet: NATv2's AEP variant for early-exit nets (re-attach the later exits, train on the
weighted per-exit losses, choose the exit subset on val) — it waits for early-exit supernets.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from natv2.errors import Natv2Error

log = logging.getLogger(__name__)


class EarlyStopping:
    """Stop when the monitored loss has not improved for ``patience`` epochs.

    ``step(epoch, loss)`` returns True when training must stop after ``epoch``. An improvement
    is a loss below ``best - min_delta``; a NaN loss never improves. ``best_epoch`` is the
    epoch with the lowest loss (the first one on ties).
    """

    def __init__(self, patience: int, *, min_delta: float = 0.0, max_epochs: int | None = None):
        if patience < 1:
            raise Natv2Error(f"finetune.patience={patience}: expected >= 1")
        self.patience, self.min_delta, self.max_epochs = int(patience), float(min_delta), max_epochs
        self.best_epoch: int | None = None
        self.best_loss = math.inf
        self.losses: list[tuple[int, float]] = []

    def step(self, epoch: int, loss: float) -> bool:
        self.losses.append((int(epoch), float(loss)))
        if math.isfinite(loss) and (self.best_epoch is None or loss < self.best_loss - self.min_delta):
            self.best_epoch, self.best_loss = int(epoch), float(loss)
        since = epoch - (self.best_epoch if self.best_epoch is not None else 0)
        return since >= self.patience or (self.max_epochs is not None and epoch >= self.max_epochs)


@dataclass
class FinetuneResult:
    """The fine-tuned model and what the two steps did."""

    model: Any
    best_epoch: int
    step1_epochs: int
    step2_epochs: int
    val_losses: list[tuple[int, float]] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "best_epoch": self.best_epoch,
            "step1_epochs": self.step1_epochs,
            "step2_epochs": self.step2_epochs,
            "val_loss": [{"epoch": e, "loss": l} for e, l in self.val_losses],
        }


class _Stop(Exception):
    """Raised from ``on_epoch_end`` to end step 1 early (natv2.train has no stop flag)."""


def train_config(cfg, *, epochs: int, early_exit: bool = False):
    """The natv2.train.TrainConfig of a fine-tune run from the ``finetune:`` section."""
    from natv2.train import TrainConfig

    optimizer = cfg.optimizer if cfg.optimizer != "auto" else ("adamw" if early_exit else "sgd")
    return TrainConfig(
        optimizer=optimizer,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        epochs=int(epochs),
        warmup_epochs=min(cfg.warmup_epochs, int(epochs)),
        batch_size=cfg.batch_size,
        label_smoothing=cfg.label_smoothing,
        kd_weight=0.0,
    )


def mean_loss(model, images, *, resolution: int, mean, std, batch_size: int, device=None) -> float:
    """Mean cross-entropy of ``model`` on an ImageSet (no augmentation)."""
    import torch
    import torch.nn.functional as F

    from natv2.data import batches

    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for x, y in batches(images, batch_size, resolution=resolution, mean=mean, std=std, train=False, device=device):
            logits = model(x.to(device) if device is not None else x)
            total += float(F.cross_entropy(logits.float(), y.to(logits.device), reduction="sum"))
            n += len(y)
    if n == 0:
        raise Natv2Error("finetune: the validation split is empty")
    return total / n


def two_step_finetune(
    extract: Callable[[], Any],
    data,
    cfg,
    *,
    resolution: int,
    device=None,
    seed: int = 0,
    early_exit: bool = False,
    val_loss: Callable[[Any], float] | None = None,
    train_fn: Callable | None = None,
    progress: bool = True,
) -> FinetuneResult:
    """NATv2's two steps for one subnet (see the module docstring).

    ``extract()`` returns a fresh copy of the subnet with the supernet's weights (called twice);
    ``data`` is a DataBundle (``train``, ``val``, ``trainval()``, ``mean``, ``std``); ``cfg`` the
    ``finetune:`` section. ``val_loss(model)`` and ``train_fn`` default to :func:`mean_loss` on
    ``data.val`` and :func:`natv2.train.train`.
    """
    if train_fn is None:
        from natv2.train import train as train_fn
    if val_loss is None:
        def val_loss(model):
            return mean_loss(model, data.val, resolution=resolution, mean=data.mean, std=data.std,
                             batch_size=cfg.batch_size, device=device)

    common = dict(resolution=resolution, device=device, seed=seed, mean=data.mean, std=data.std, progress=progress)

    # step 1: find the best epoch count on val
    stopper = EarlyStopping(cfg.patience, min_delta=cfg.min_delta, max_epochs=cfg.max_epochs)
    model = extract()
    stopper.step(0, val_loss(model))
    step1_epochs = 0

    def after_epoch(epoch, row=None, net=None):
        nonlocal step1_epochs
        step1_epochs = int(epoch)
        loss = val_loss(net if net is not None else model)
        log.info("fine-tune step 1, epoch %d: val loss %.4f (best %.4f at epoch %s)", epoch, loss,
                 min(stopper.best_loss, loss), stopper.best_epoch)
        if stopper.step(epoch, loss):
            raise _Stop

    try:
        train_fn(model, data.train, train_config(cfg, epochs=cfg.max_epochs, early_exit=early_exit),
                 on_epoch_end=after_epoch, **common)
    except _Stop:
        pass
    best = int(stopper.best_epoch or 0)
    log.info("fine-tune step 1: stopped after %d epochs, best epoch %d", step1_epochs, best)

    # step 2: retrain the re-extracted subnet on train + val for the best epoch count
    model = extract()
    step2_epochs = 0
    if best > 0:
        def count(epoch, row=None, net=None):
            nonlocal step2_epochs
            step2_epochs = int(epoch)

        train_fn(model, data.trainval(), train_config(cfg, epochs=best, early_exit=early_exit),
                 on_epoch_end=count, **common)
    model.eval()
    return FinetuneResult(model, best, step1_epochs, step2_epochs, stopper.losses)
