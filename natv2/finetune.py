"""NATv2 post-processing: two-step fine-tuning of a front member (Sarti et al. 2023, §post-processing).

Step 1 trains the subnet extracted from the supernet on the training split and measures the
validation loss after every epoch; :class:`EarlyStopping` stops it after ``patience`` epochs
without improvement (or at ``max_epochs``) and records the best epoch. Epoch 0 (the extracted
net, untrained) counts too: when no epoch beats it, the best epoch is 0 and step 2 does nothing.
Step 2 re-extracts the subnet (fresh supernet weights) and trains it on train + val for exactly
the best epoch count, with the same optimizer and a cosine schedule over that many epochs;
the result is then tested. Paper values: patience 30, at most 150 epochs, SGD lr 1e-4
(single-exit supernets), AdamW lr 1e-4 (early-exit ones).

Early-exit supernets (OFAv2 EE_*) use NATv2's AEP variant, :func:`aep_finetune`: the subnet
is extracted with its chosen exit *and every later exit* re-attached (``aep_exits``), both steps
train on the weighted sum of the per-exit losses (:func:`train_multi_exit`; uniform weights by
default) and early-stop on the same weighted loss on val; at the best epoch of step 1 every
non-empty subset of the attached exits is scored on val with the weighted sum of its logits,
and the step-2 net keeps the best subset (ties: the shallowest deepest exit, then fewer exits).
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


# --------------------------------------------------------------------------------------------
# AEP: early-exit nets (NATv2 post-processing for OFAv2 EE supernets)


def aep_exits(space, genome) -> list[int]:
    """The exits AEP attaches to ``genome``: its chosen exit and every later one (1-based)."""
    chosen = space.decode(genome).exit
    if chosen is None:
        raise Natv2Error("AEP: the genome has no exit gene (not an early-exit supernet)")
    return list(range(int(chosen), space.n_exits + 1))


def _normalised(weights, n: int) -> list[float]:
    w = [1.0] * n if weights is None else [float(v) for v in weights]
    if len(w) != n or any(v < 0 for v in w) or sum(w) <= 0:
        raise Natv2Error(f"AEP exit weights {w}: expected {n} non-negative numbers with a positive sum")
    return [v / sum(w) for v in w]


def exit_loss(outputs, y, weights=None, *, label_smoothing: float = 0.0):
    """Weighted sum of the per-exit cross-entropies (``outputs``: list of exit logits)."""
    import torch.nn.functional as F

    outputs = list(outputs)
    w = _normalised(weights, len(outputs))
    return sum(wi * F.cross_entropy(z.float(), y, label_smoothing=label_smoothing) for wi, z in zip(w, outputs))


def train_multi_exit(model, data, cfg, *, resolution: int, weights=None, device=None, seed: int = 0,
                     mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), pad: int = 4, flip: bool = True,
                     on_epoch_end: Callable | None = None, progress: bool = True):
    """Train a multi-exit net (forward -> list of exit logits) on the weighted per-exit loss.

    The engine's optimizer (natv2.train.make_optimizer), warm-up + cosine schedule and seeding
    per (seed, epoch); called like :func:`natv2.train.train` by :func:`two_step_finetune`.
    Returns a natv2.train.History. A NaN/inf loss raises Natv2Error.
    """
    import time

    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from natv2.data import batches
    from natv2.train import History, lr_factor, make_optimizer

    cfg.check()
    device = torch.device(device) if device is not None else torch.device("cpu")
    net = model.to(device)
    optimizer = make_optimizer(net, cfg)
    steps_per_epoch = max(len(data) // cfg.batch_size, 1)
    total, warm = max(cfg.epochs * steps_per_epoch, 1), round(cfg.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warm))
    history = History()
    for epoch in range(cfg.epochs):
        epoch_seed = int(np.random.SeedSequence([seed, epoch, 7]).generate_state(1)[0])
        net.train()
        t0, loss_sum, n_steps, n_images = time.perf_counter(), 0.0, 0, 0
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(epoch_seed)  # dropout
            gen = torch.Generator().manual_seed(epoch_seed)
            it = batches(data, cfg.batch_size, resolution=resolution, mean=mean, std=std, train=True, generator=gen,
                         device=device, pad=pad, flip=flip)
            for x, y in tqdm(it, total=steps_per_epoch, desc=f"AEP epoch {epoch + 1}/{cfg.epochs}", leave=False,
                             disable=not progress):
                x, y = x.to(device), y.to(device)
                optimizer.zero_grad(set_to_none=True)
                loss = exit_loss(net(x), y, weights, label_smoothing=cfg.label_smoothing)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise Natv2Error(f"AEP training diverged: loss is {value} at epoch {epoch + 1}, step {n_steps + 1}; "
                                     f"lower the learning rate (lr={cfg.lr})")
                loss.backward()
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
                optimizer.step()
                lr_used = float(optimizer.param_groups[0]["lr"])
                scheduler.step()
                loss_sum, n_steps, n_images = loss_sum + value, n_steps + 1, n_images + len(y)
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "loss": loss_sum / max(n_steps, 1), "lr": lr_used,
               "images_per_s": n_images / max(seconds, 1e-9), "seconds": seconds}
        history.rows.append(row)
        log.info("AEP epoch %d/%d: loss %.4f, %.0f images/s", epoch + 1, cfg.epochs, row["loss"], row["images_per_s"])
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row, net)
    return history


def exit_logits(model, images, *, resolution: int, mean, std, batch_size: int, device=None):
    """(list of per-exit logits over ``images``, labels), in eval mode, no augmentation."""
    import torch

    from natv2.data import batches

    model.eval()
    chunks, labels = [], []
    with torch.no_grad():
        for x, y in batches(images, batch_size, resolution=resolution, mean=mean, std=std, train=False, device=device):
            outs = model(x.to(device) if device is not None else x)
            chunks.append([z.float().cpu() for z in (outs if isinstance(outs, (list, tuple)) else [outs])])
            labels.append(y.cpu())
    if not chunks:
        raise Natv2Error("AEP: the validation split is empty")
    return [torch.cat(parts) for parts in zip(*chunks)], torch.cat(labels)


def subset_scores(logits, labels, exits, weights=None) -> list[dict]:
    """Top-1 (percent) of every non-empty subset of the exits, predicting with the weighted sum of logits.

    ``logits``: per-exit logits (same order as ``exits``, 1-based stage numbers); a subset's
    weights are the given ones restricted to it and renormalised. Sorted best first (ties:
    the shallowest deepest exit, then fewer exits).
    """
    from itertools import combinations

    w = _normalised(weights, len(exits))
    rows = []
    for k in range(1, len(exits) + 1):
        for idx in combinations(range(len(exits)), k):
            ws = _normalised([w[i] for i in idx], k)
            combined = sum(wi * logits[i] for wi, i in zip(ws, idx))
            top1 = float((combined.argmax(1) == labels).float().mean()) * 100.0
            rows.append({"exits": [int(exits[i]) for i in idx], "weights": ws, "top1": top1})
    rows.sort(key=lambda r: (-r["top1"], r["exits"][-1], len(r["exits"])))
    return rows


@dataclass
class AEPResult(FinetuneResult):
    """A fine-tuned early-exit net: the two steps, the chosen exit subset and its val scores."""

    exits: list[int] = field(default_factory=list)
    attached: list[int] = field(default_factory=list)
    subset_top1: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {**super().summary(), "aep_exits": self.exits, "aep_attached": self.attached,
                "aep_val_top1": self.subset_top1[0]["top1"] if self.subset_top1 else None}


def aep_finetune(
    extract: Callable[[], Any],
    data,
    cfg,
    *,
    resolution: int,
    device=None,
    seed: int = 0,
    weights=None,
    train_fn: Callable | None = None,
    progress: bool = True,
) -> AEPResult:
    """NATv2's AEP fine-tune of an early-exit subnet (see the module docstring).

    ``extract()`` returns a fresh multi-exit static net (``supernet.extract(g, exits=aep_exits(space, g))``,
    forward -> list of exit logits, shallowest first; called twice). ``weights``: one per attached
    exit (None = uniform), used for the loss, the prediction and the subset scores. The returned
    model predicts with the weighted sum of the chosen subset's logits (``with_exits``).
    """
    common = dict(resolution=resolution, mean=data.mean, std=data.std, batch_size=cfg.batch_size, device=device)
    scores_by_call: list[list[dict]] = []
    attached: list[int] = []

    def val_loss(model) -> float:
        logits, labels = exit_logits(model, data.val, **common)
        stages = [s + 1 for s in model.exit_stages]
        attached[:] = stages
        scores_by_call.append(subset_scores(logits, labels, stages, weights))
        return float(exit_loss(logits, labels, weights))

    def trainer(model, images, tcfg, **kwargs):
        return (train_fn or train_multi_exit)(model, images, tcfg, weights=weights, **kwargs)

    result = two_step_finetune(extract, data, cfg, resolution=resolution, device=device, seed=seed, early_exit=True,
                               val_loss=val_loss, train_fn=trainer, progress=progress)
    # val_loss ran at epoch 0, 1, ... of step 1: the scores of the best epoch choose the subset
    scores = scores_by_call[result.best_epoch]
    best = scores[0]
    model = result.model
    chosen = best["exits"]
    keep_w = None if weights is None else [_normalised(weights, len(attached))[attached.index(e)] for e in chosen]
    model = model.with_exits(chosen, weights=keep_w, output="weighted").eval()
    log.info("AEP: exits %s chosen on val (top-1 %.2f %%) out of %s", chosen, best["top1"], attached)
    return AEPResult(model, result.best_epoch, result.step1_epochs, result.step2_epochs, result.val_losses,
                     exits=list(chosen), attached=list(attached), subset_top1=scores)
