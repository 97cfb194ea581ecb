"""NATv2 post-processing: two-step fine-tuning of a front member (Sarti et al. 2023, §post-processing).

Step 1 trains the subnet extracted from the supernet on the training split and measures the
validation loss after every epoch; :class:`EarlyStopping` stops it after ``patience`` epochs
without improvement (or at ``max_epochs``) and records the best epoch. Epoch 0 (the extracted
net, untrained) counts too: when no epoch beats it, the best epoch is 0 and step 2 does nothing.
Step 2 re-extracts the subnet (fresh supernet weights) and trains it on train + val for exactly
the best epoch count, with the same optimizer and a cosine schedule over that many epochs;
the result is then tested. The fine-tune step keeps ``finetune.selection_holdout`` of val out
of step 2 (``step2_images``), so ensembles are chosen on images no member trained on. Both
steps resume after a kill (:class:`FinetuneState`). Paper values: patience 30, at most 150 epochs, SGD lr 1e-4
(single-exit supernets), AdamW lr 1e-4 (early-exit ones).

Early-exit supernets (OFAv2 EE_*) use NATv2's AEP variant, :func:`aep_finetune`: the subnet
is extracted with its chosen exit *and every later exit* re-attached (``aep_exits``), both steps
train on the weighted sum of the per-exit losses (:func:`exit_loss` as natv2.train's
``loss_fn``; uniform weights by default) and early-stop on the same weighted loss on val; at the best epoch of step 1 every
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
    val_extras: dict[int, Any] = field(default_factory=dict)

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
    return TrainConfig.from_sections(cfg, optimizer=optimizer, epochs=int(epochs), kd_weight=0.0)


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


def _replay(cfg, records: dict[int, dict], last: int | None = None) -> tuple[EarlyStopping, bool]:
    """Step 1's early stopping fed the recorded val losses of epochs 0, 1, ... (up to ``last``).

    Returns the stopper and whether it stopped; a resumed run rebuilds its stopper this way.
    """
    stopper = EarlyStopping(cfg.patience, min_delta=cfg.min_delta, max_epochs=cfg.max_epochs)
    epoch = 0
    while epoch in records and (last is None or epoch <= last):
        if stopper.step(epoch, records[epoch]["loss"]):
            return stopper, True
        epoch += 1
    return stopper, False


class FinetuneState:
    """The resume state of one member's fine-tune: a folder beside its output.

    Holds natv2.train's state files of the two steps (``step1.pt``, ``step2.pt``) and
    ``records.json``: step 1's val loss (and any extra, such as AEP's exit-subset scores) per
    epoch, written before the training state of that epoch, so a killed job continues where it
    stopped. ``fingerprint`` (any JSON) names what the state belongs to (genome, settings,
    checksums of the supernet and the data); a folder left by a different fingerprint is
    discarded, not resumed, and one whose fingerprint cannot be read is kept (see natv2.resume).
    """

    def __init__(self, folder, fingerprint: dict):
        from natv2.io import read_json
        from natv2.resume import ResumeFolder

        self._state = ResumeFolder(folder, fingerprint)
        self.folder = self._state.folder
        self._records_path = self.folder / "records.json"
        raw = read_json(self._records_path) if self._records_path.exists() else {}
        self.records: dict[int, dict] = {int(k): v for k, v in raw.items()}
        if self.records:
            log.info("%s: resuming fine-tune (step-1 val loss known for epochs %s)", self.folder, sorted(self.records))

    def path(self, name: str):
        return self._state.path(name)

    def record(self, epoch: int, loss: float, extra: Any = None) -> None:
        from natv2.io import write_json

        self.records[int(epoch)] = {"loss": float(loss), "extra": extra}
        write_json(self._records_path, {str(k): v for k, v in sorted(self.records.items())})

    def remove(self) -> None:
        self._state.remove()


def two_step_finetune(
    extract: Callable[[], Any],
    data,
    cfg,
    *,
    resolution: int,
    device=None,
    seed: int = 0,
    early_exit: bool = False,
    val_loss: Callable[[Any], float | tuple[float, Any]] | None = None,
    train_fn: Callable | None = None,
    step2_images=None,
    state: FinetuneState | None = None,
    progress: bool = True,
) -> FinetuneResult:
    """NATv2's two steps for one subnet (see the module docstring).

    ``extract()`` returns a fresh copy of the subnet with the supernet's weights (called twice);
    ``data`` is a DataBundle (``train``, ``val``, ``trainval()``, ``mean``, ``std``); ``cfg`` the
    ``finetune:`` section. ``val_loss(model)`` (a float, or ``(float, extra)`` where ``extra`` is
    JSON data kept per epoch in ``result.val_extras``) and ``train_fn`` default to
    :func:`mean_loss` on ``data.val`` and :func:`natv2.train.train`. ``step2_images``: what step
    2 trains on (default train + val; the fine-tune step keeps a selection part of val out).
    ``state``: a :class:`FinetuneState` to resume from and save to.
    """
    if train_fn is None:
        from natv2.train import train as train_fn
    if val_loss is None:
        def val_loss(model):
            return mean_loss(model, data.val, resolution=resolution, mean=data.mean, std=data.std,
                             batch_size=cfg.batch_size, device=device)

    records: dict[int, dict] = dict(state.records) if state is not None else {}

    def measure(epoch: int, model) -> None:
        out = val_loss(model)
        loss, extra = out if isinstance(out, tuple) else (out, None)
        records[int(epoch)] = {"loss": float(loss), "extra": extra}
        if state is not None:
            state.record(epoch, loss, extra)

    # the dataset's augmentation (split.json), not train()'s defaults: digits must not be mirrored
    common = dict(resolution=resolution, device=device, seed=seed, mean=data.mean, std=data.std, pad=data.pad,
                  flip=data.flip, progress=progress)

    # step 1: find the best epoch count on val
    if _replay(cfg, records)[1]:
        log.info("fine-tune step 1: already done (val loss of epochs 0..%d on record)", max(records))
    else:
        model = extract()
        if 0 not in records:
            measure(0, model)

        def after_epoch(epoch, row=None, net=None):
            measure(epoch, net if net is not None else model)
            # replay the record: a resumed run's stopper sees the epochs before it too
            stopper, stop = _replay(cfg, records, last=epoch)
            log.info("fine-tune step 1, epoch %d: val loss %.4f (best %.4f at epoch %s)", epoch,
                     records[epoch]["loss"], stopper.best_loss, stopper.best_epoch)
            if stop:
                raise _Stop

        resume = {"resume": state.path("step1.pt")} if state is not None else {}
        try:
            train_fn(model, data.train, train_config(cfg, epochs=cfg.max_epochs, early_exit=early_exit),
                     on_epoch_end=after_epoch, **common, **resume)
        except _Stop:
            pass
        del model
    stopper, _ = _replay(cfg, records)
    step1_epochs = stopper.losses[-1][0] if stopper.losses else 0
    best = int(stopper.best_epoch or 0)
    log.info("fine-tune step 1: stopped after %d epochs, best epoch %d", step1_epochs, best)

    # step 2: retrain the re-extracted subnet on train + val for the best epoch count
    model = extract()
    step2_epochs = 0
    if best > 0:
        def count(epoch, row=None, net=None):
            nonlocal step2_epochs
            step2_epochs = int(epoch)

        images = data.trainval() if step2_images is None else step2_images
        resume = {"resume": state.path("step2.pt")} if state is not None else {}
        history = train_fn(model, images, train_config(cfg, epochs=best, early_exit=early_exit),
                           on_epoch_end=count, **common, **resume)
        if history is not None and getattr(history, "rows", None):
            step2_epochs = len(history.rows)  # a resumed run's history holds the epochs before it too
    model.eval()
    return FinetuneResult(model, best, step1_epochs, step2_epochs, list(stopper.losses),
                          val_extras={e: records[e]["extra"] for e, _ in stopper.losses})


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
    step2_images=None,
    state: FinetuneState | None = None,
    progress: bool = True,
) -> AEPResult:
    """NATv2's AEP fine-tune of an early-exit subnet (see the module docstring).

    ``extract()`` returns a fresh multi-exit static net (``supernet.extract(g, exits=aep_exits(space, g))``,
    forward -> list of exit logits, shallowest first; called twice). ``weights``: one per attached
    exit (None = uniform), used for the loss, the prediction and the subset scores. The returned
    model predicts with the weighted sum of the chosen subset's logits (``with_exits``).
    """
    from functools import partial

    common = dict(resolution=resolution, mean=data.mean, std=data.std, batch_size=cfg.batch_size, device=device)

    def val_loss(model) -> tuple[float, list[dict]]:
        logits, labels = exit_logits(model, data.val, **common)
        stages = [s + 1 for s in model.exit_stages]
        return float(exit_loss(logits, labels, weights)), subset_scores(logits, labels, stages, weights)

    def trainer(model, images, tcfg, **kwargs):
        if train_fn is not None:
            return train_fn(model, images, tcfg, weights=weights, **kwargs)
        from natv2.train import train

        loss = partial(exit_loss, weights=weights, label_smoothing=tcfg.label_smoothing)
        return train(model, images, tcfg, loss_fn=loss, **kwargs)

    result = two_step_finetune(extract, data, cfg, resolution=resolution, device=device, seed=seed, early_exit=True,
                               val_loss=val_loss, train_fn=trainer, step2_images=step2_images, state=state,
                               progress=progress)
    # val_loss ran at epoch 0, 1, ... of step 1: the scores of the best epoch choose the subset
    scores = result.val_extras[result.best_epoch]
    best = scores[0]
    model = result.model
    attached = [s + 1 for s in model.exit_stages]
    chosen = best["exits"]
    keep_w = None if weights is None else [_normalised(weights, len(attached))[attached.index(e)] for e in chosen]
    model = model.with_exits(chosen, weights=keep_w, output="weighted").eval()
    log.info("AEP: exits %s chosen on val (top-1 %.2f %%) out of %s", chosen, best["top1"], attached)
    return AEPResult(model, result.best_epoch, result.step1_epochs, result.step2_epochs, result.val_losses,
                     exits=list(chosen), attached=list(attached), subset_top1=scores)
