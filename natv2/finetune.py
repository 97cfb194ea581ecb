"""NATv2 post-processing: two-step fine-tuning of a front member (Sarti et al. 2023, §post-processing).

As ``finetune_natnet.py:115-177, 248-340``: step 1 trains the subnet extracted from the supernet
on the training split, measures val loss and val top-1 after every epoch, stops when the val
loss has not improved for ``patience`` epochs (:class:`EarlyStopping`, or at ``max_epochs``)
and keeps the epoch of the *highest val top-1* (the first on ties; epoch 0, the untrained
net, only when no epoch reaches a top-1 above 0, as the original's ``best_acc = 0``). Step 2
re-extracts the subnet (fresh supernet weights) and trains it on train + val for exactly that
many epochs, on the same cosine schedule as step 1 (``T_max`` stays ``max_epochs``,
``finetune_natnet.py:134, 339``: step 2 follows step 1's learning rates and stops early on
them); the result is then tested. The fine-tune step keeps ``finetune.selection_holdout`` of
val out of step 2 (``step2_images``), so ensembles are chosen on images no member trained on
(a deviation: the original trains step 2 on all of val). Both steps resume after a kill
(:class:`FinetuneState`). Paper values: patience 30, at most 150 epochs, SGD lr 1e-4
(single-exit supernets), AdamW lr 1e-4 (early-exit ones).

Early-exit supernets (OFAv2 EE_*) use AEP (Anticipate, Ensemble and Prune), :func:`aep_finetune`:
the subnet is extracted with its chosen exit ``nd`` *and every shallower exit* 1..nd
(``aep_exits``; ``finetune_natnet_ens.py:361``, ``early_exit_ofa_mbv3.py:712-733``), both steps
train on the weighted sum of the per-exit losses (:func:`natv2.exits.exit_loss`, weights from
natv2.exits), and the net predicts with the weighted sum of its exits' logits
(``finetune_natnet_ens.py:241-258``). Pruning (``finetune.aep_prune``): off by default, as the
original code, which keeps exits 1..nd; on, the exits after the prefix 1..k whose ensemble
scores best on val at step 1's best epoch are cut off with the stages only they use.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

from natv2.errors import Natv2Error
from natv2.exits import exit_loss, exit_weights, weighted_logits

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
    val_top1s: dict[int, float] = field(default_factory=dict)
    ties: str = "first"

    def summary(self) -> dict:
        rule = "highest val top-1 (finetune_natnet.py:153-155)"
        return {
            "best_epoch": self.best_epoch,
            "best_epoch_rule": rule if self.ties == "first" else rule + ", ties: lowest val loss",
            "step1_epochs": self.step1_epochs,
            "step2_epochs": self.step2_epochs,
            "val_loss": [{"epoch": e, "loss": loss, "top1": self.val_top1s.get(e)} for e, loss in self.val_losses],
        }


def train_config(cfg, *, epochs: int, early_exit: bool = False):
    """The natv2.train.TrainConfig of a fine-tune run from the ``finetune:`` section.

    The cosine spans ``max_epochs`` in both steps (the original's ``T_max``), so a step-2 run of
    ``epochs`` < ``max_epochs`` stops part-way along step 1's schedule.
    """
    from natv2.train import TrainConfig

    optimizer = cfg.optimizer if cfg.optimizer != "auto" else ("adamw" if early_exit else "sgd")
    return TrainConfig.from_sections(cfg, kd=False, optimizer=optimizer, epochs=int(epochs),
                                     schedule_epochs=max(int(cfg.max_epochs), int(epochs)))


def val_metrics(model, images, *, resolution: int, mean, std, batch_size: int, device=None) -> dict:
    """``{"loss": mean cross-entropy, "top1": percent}`` of ``model`` on an ImageSet (no augmentation)."""
    import torch
    import torch.nn.functional as F

    from natv2.splits import batches

    model.eval()
    total, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in batches(images, batch_size, resolution=resolution, mean=mean, std=std, train=False, device=device):
            logits = model(x.to(device) if device is not None else x)
            y = y.to(logits.device)
            total += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
    if n == 0:
        raise Natv2Error("finetune: the validation split is empty")
    return {"loss": total / n, "top1": 100.0 * correct / n}


def mean_loss(model, images, **kwargs) -> float:
    """Mean cross-entropy of ``model`` on an ImageSet (no augmentation)."""
    return val_metrics(model, images, **kwargs)["loss"]


def best_top1_epoch(records: dict[int, dict], last: int, ties: str = "first") -> int:
    """Step 1's choice: the epoch in 1..``last`` of the highest val top-1.

    ``finetune_natnet.py:142-155``: ``best_acc = 0``, updated on ``valid_top1 > best_acc``; so
    the first epoch on ties, and 0 when no epoch reaches a top-1 above 0. ``ties="loss"``
    (``finetune.best_epoch_ties``, a natv2 option) takes the tied epoch of the lowest val loss
    instead (then the first): on a small val set (digits: 144 images, 0.7 points per image)
    several epochs share the top score and the first of them is often epoch 1 or 2, which
    step 2 then trains for while the val loss is still falling.
    """
    if ties not in ("first", "loss"):
        raise Natv2Error(f"finetune.best_epoch_ties={ties!r}: expected 'first' or 'loss'")
    best, best_acc, best_loss = 0, 0.0, math.inf
    for epoch in sorted(records):
        top1 = records[epoch].get("top1")
        if not (1 <= epoch <= last and top1 is not None and math.isfinite(top1)):
            continue
        loss = records[epoch].get("loss")
        loss = float(loss) if loss is not None and math.isfinite(loss) else math.inf
        if top1 > best_acc or (ties == "loss" and best > 0 and top1 == best_acc and loss < best_loss):
            best, best_acc, best_loss = epoch, float(top1), loss
    return best


def _as_record(out) -> dict:
    """A val function's result as ``{"loss", "top1", "extra"}`` (it returns such a dict)."""
    if not isinstance(out, dict) or "loss" not in out or "top1" not in out:
        raise Natv2Error(f"finetune: the val function returned {out!r}; expected a dict with loss and top1")
    return {"loss": float(out["loss"]), "top1": float(out["top1"]), "extra": out.get("extra")}


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
    ``records.json``: step 1's val loss and top-1 (and any extra, such as AEP's prefix scores)
    per epoch, written before the training state of that epoch, so a killed job continues where it
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

    def record(self, epoch: int, loss: float, extra: Any = None, top1: float | None = None) -> None:
        from natv2.io import write_json

        self.records[int(epoch)] = {"loss": float(loss), "top1": top1, "extra": extra}
        write_json(self._records_path, {str(k): v for k, v in sorted(self.records.items())})

    def remove(self) -> None:
        self._state.remove()


class _Step1Record:
    """Step 1's val loss and top-1 per epoch (``records``), saved to ``state`` as they come.

    ``after_epoch`` is natv2.train's ``on_epoch_end`` for step 1: it measures the net and
    returns whether the early stopping (replayed over every epoch on record, so a resumed run's
    stopper sees the epochs before it too) ends step 1 after this epoch.
    """

    def __init__(self, cfg, validate: Callable[[Any], dict], state: FinetuneState | None) -> None:
        self.cfg, self.validate, self.state = cfg, validate, state
        self.records: dict[int, dict] = dict(state.records) if state is not None else {}

    def measure(self, epoch: int, model) -> None:
        rec = _as_record(self.validate(model))
        self.records[int(epoch)] = rec
        if self.state is not None:
            self.state.record(epoch, rec["loss"], rec["extra"], rec["top1"])

    def after_epoch(self, model, epoch: int, row=None, net=None) -> bool:
        self.measure(epoch, net if net is not None else model)
        _, stop = _replay(self.cfg, self.records, last=epoch)
        log.info("fine-tune step 1, epoch %d: val loss %.4f, top-1 %.2f %% (best top-1 at epoch %d)", epoch,
                 self.records[epoch]["loss"], self.records[epoch]["top1"],
                 best_top1_epoch(self.records, epoch, self.cfg.best_epoch_ties))
        return stop


def two_step_finetune(
    extract: Callable[[], Any],
    data,
    cfg,
    *,
    resolution: int,
    device=None,
    seed: int = 0,
    early_exit: bool = False,
    validate: Callable[[Any], dict] | None = None,
    train_fn: Callable | None = None,
    step2_images=None,
    state: FinetuneState | None = None,
    progress: bool = True,
) -> FinetuneResult:
    """NATv2's two steps for one subnet (see the module docstring).

    ``extract()`` returns a fresh copy of the subnet with the supernet's weights (called twice);
    ``data`` is a DataBundle (``train``, ``val``, ``trainval()``, ``mean``, ``std``); ``cfg`` the
    ``finetune:`` section. ``validate(model)`` returns ``{"loss", "top1"[, "extra"]}`` (``extra``:
    JSON data kept per epoch in ``result.val_extras``); it and ``train_fn`` default to
    :func:`val_metrics` on ``data.val`` and :func:`natv2.train.train` (called as
    ``train_fn(model, images, train_cfg, run)``, ``run`` a natv2.train.TrainRun whose
    ``on_epoch_end`` returns True to stop training after that epoch). The val loss drives the
    early stopping, the val top-1 the best epoch. ``step2_images``: what step
    2 trains on (default train + val; the fine-tune step keeps a selection part of val out).
    ``state``: a :class:`FinetuneState` to resume from and save to.
    """
    from natv2.train import TrainRun

    if train_fn is None:
        from natv2.train import train as train_fn
    if validate is None:
        def validate(model):
            return val_metrics(model, data.val, resolution=resolution, mean=data.mean, std=data.std,
                               batch_size=cfg.batch_size, device=device)

    val = _Step1Record(cfg, validate, state)
    # with TrainRun.for_data: the dataset's augmentation (split.json), not train()'s defaults (digits must not be mirrored)
    common = dict(resolution=resolution, device=device, seed=seed, progress=progress)

    # step 1: find the best epoch count on val
    if _replay(cfg, val.records)[1]:
        log.info("fine-tune step 1: already done (val loss of epochs 0..%d on record)", max(val.records))
    else:
        model = extract()
        if 0 not in val.records:
            val.measure(0, model)
        resume = state.path("step1.pt") if state is not None else None
        train_fn(model, data.train, train_config(cfg, epochs=cfg.max_epochs, early_exit=early_exit),
                 TrainRun.for_data(data, on_epoch_end=partial(val.after_epoch, model), resume=resume, **common))
        del model
    records = val.records
    stopper, _ = _replay(cfg, records)
    step1_epochs = stopper.losses[-1][0] if stopper.losses else 0
    best = best_top1_epoch(records, step1_epochs, cfg.best_epoch_ties)
    log.info("fine-tune step 1: stopped after %d epochs, best val top-1 at epoch %d", step1_epochs, best)

    # step 2: retrain the re-extracted subnet on train + val for the best epoch count, on step 1's schedule
    model = extract()
    step2_epochs = 0
    if best > 0:
        images = data.trainval() if step2_images is None else step2_images
        resume = state.path("step2.pt") if state is not None else None
        done: list[int] = []  # the epochs this call trained
        history = train_fn(model, images, train_config(cfg, epochs=best, early_exit=early_exit),
                           TrainRun.for_data(data, on_epoch_end=lambda epoch, row=None, net=None: done.append(int(epoch)),
                                             resume=resume, **common))
        step2_epochs = done[-1] if done else 0
        if history is not None and getattr(history, "rows", None):
            step2_epochs = len(history.rows)  # a resumed run's history holds the epochs before it too
    model.eval()
    return FinetuneResult(model, best, step1_epochs, step2_epochs, list(stopper.losses),
                          val_extras={e: records[e].get("extra") for e, _ in stopper.losses},
                          val_top1s={e: records[e].get("top1") for e, _ in stopper.losses},
                          ties=cfg.best_epoch_ties)


# --------------------------------------------------------------------------------------------
# AEP: early-exit nets (NATv2 post-processing for OFAv2 EE supernets)


def aep_exits(space, genome) -> list[int]:
    """The exits AEP attaches to ``genome``: exits 1..nd, nd its chosen exit (1-based).

    ``finetune_natnet_ens.py:361``: ``get_active_some_exits_subnet(list(range(1, nd + 1)))``
    (``early_exit_ofa_mbv3.py:712-733`` keeps those exits on the chosen body), so AEP never
    makes the net deeper than the searched one.
    """
    chosen = space.decode(genome).exit
    if chosen is None:
        raise Natv2Error("AEP: the genome has no exit gene (not an early-exit supernet)")
    return list(range(1, int(chosen) + 1))


def exit_logits(model, images, *, resolution: int, mean, std, batch_size: int, device=None):
    """(list of per-exit logits over ``images``, labels), in eval mode, no augmentation."""
    import torch

    from natv2.splits import batches

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


def prefix_scores(logits, labels, exits, table=None) -> list[dict]:
    """Val top-1 (percent) of the ensemble of exits ``exits[:k]`` for k = 1..n, in order of k.

    ``logits``: per-exit logits (same order as ``exits``, 1-based stage numbers, shallowest
    first); each prefix predicts with the weighted sum of its logits, natv2.exits weights of its
    stages renormalised.
    """
    rows = []
    for k in range(1, len(exits) + 1):
        ws = exit_weights(exits[:k], table)
        combined = weighted_logits(logits[:k], ws)
        top1 = float((combined.argmax(1) == labels).float().mean()) * 100.0
        rows.append({"exits": [int(e) for e in exits[:k]], "weights": ws, "top1": top1})
    return rows


def prune_choice(scores: list[dict], prune: bool) -> dict:
    """The prefix kept: all exits without pruning; with it, the best val top-1 (ties: fewer exits)."""
    if not prune:
        return scores[-1]
    return max(scores, key=lambda r: (r["top1"], -len(r["exits"])))


@dataclass
class AEPResult(FinetuneResult):
    """A fine-tuned early-exit net: the two steps, the exits kept and the prefixes' val scores."""

    exits: list[int] = field(default_factory=list)
    attached: list[int] = field(default_factory=list)
    prefix_top1: list[dict] = field(default_factory=list)
    pruned: bool = False

    def summary(self) -> dict:
        kept = next((r for r in self.prefix_top1 if r["exits"] == self.exits), None)
        return {**super().summary(), "aep_exits": self.exits, "aep_attached": self.attached,
                "aep_pruned": self.pruned, "aep_val_top1": kept["top1"] if kept else None,
                "aep_prefix_top1": self.prefix_top1}


def aep_finetune(
    extract: Callable[[], Any],
    data,
    cfg,
    *,
    resolution: int,
    device=None,
    seed: int = 0,
    weights=None,
    prune: bool | None = None,
    train_fn: Callable | None = None,
    step2_images=None,
    state: FinetuneState | None = None,
    progress: bool = True,
) -> AEPResult:
    """NATv2's AEP fine-tune of an early-exit subnet (see the module docstring).

    ``extract()`` returns a fresh multi-exit static net (``supernet.extract(g, exits=aep_exits(space, g))``,
    forward -> list of exit logits, shallowest first; called twice). ``weights``: one per exit
    of the supernet (natv2.exits table; None = the original's), restricted to the attached
    exits for the loss, the prediction and the prefix scores. ``prune`` (default
    ``cfg.aep_prune``): cut the net after the best-scoring prefix of exits at step 1's best
    epoch. The returned model predicts with the weighted sum of its exits' logits.
    """
    from functools import partial

    common = dict(resolution=resolution, mean=data.mean, std=data.std, batch_size=cfg.batch_size, device=device)
    prune = bool(getattr(cfg, "aep_prune", False)) if prune is None else bool(prune)

    def validate(model) -> dict:
        logits, labels = exit_logits(model, data.val, **common)
        stages = [s + 1 for s in model.exit_stages]
        w = exit_weights(stages, weights)
        scores = prefix_scores(logits, labels, stages, weights)
        # the net's prediction is the ensemble of all its exits (validate_ee's net top-1)
        return {"loss": float(exit_loss(logits, labels, w)), "top1": scores[-1]["top1"], "extra": scores}

    def trainer(model, images, tcfg, run):
        w = exit_weights([s + 1 for s in model.exit_stages], weights)
        if train_fn is not None:
            return train_fn(model, images, tcfg, run, weights=w)
        from natv2.train import train

        loss = partial(exit_loss, weights=w, label_smoothing=tcfg.label_smoothing)
        return train(model, images, tcfg, dataclasses.replace(run, loss_fn=loss))

    result = two_step_finetune(extract, data, cfg, resolution=resolution, device=device, seed=seed, early_exit=True,
                               validate=validate, train_fn=trainer, step2_images=step2_images, state=state,
                               progress=progress)
    # validate ran at epoch 0, 1, ... of step 1: the scores of the best epoch choose the prefix
    scores = result.val_extras[result.best_epoch]
    kept = prune_choice(scores, prune)
    model = result.model
    attached = [s + 1 for s in model.exit_stages]
    chosen = kept["exits"]
    model = model.with_exits(chosen, weights=exit_weights(chosen, weights), output="weighted").eval()
    log.info("AEP: exits %s kept (val top-1 %.2f %%) of %s%s", chosen, kept["top1"], attached,
             " (pruned)" if prune else "")
    return AEPResult(model, result.best_epoch, result.step1_epochs, result.step2_epochs, result.val_losses,
                     result.val_extras, result.val_top1s, exits=list(chosen), attached=list(attached),
                     prefix_top1=scores, pruned=prune)


# --------------------------------------------------------------------------------------------
# one front member: the library side of ``natv2 finetune``


def front_member(front, member_id: str, source: str) -> dict:
    """The row of ``front`` whose ``id`` is ``member_id``, as a dict."""
    if len(front) == 0:
        raise Natv2Error(f"{source}: the front is empty")
    for column in ("id", "genome"):
        if column not in front.columns:
            raise Natv2Error(f"{source}: column {column!r} missing")
    rows = front[front["id"].astype(str) == str(member_id)]
    if len(rows) != 1:
        raise Natv2Error(f"{source}: {len(rows)} rows with id {member_id!r}, expected exactly 1")
    return rows.iloc[0].to_dict()


def member_state(out, *, supernet_path, data_path, genome: str, settings) -> FinetuneState:
    """The resume folder ``../.resume/finetune/{id}`` of the member's output ``out`` (outside ``nets/``,
    which DVC's fine-tune stage owns and deletes before it runs), fingerprinted by its inputs."""
    from pathlib import Path

    from natv2.resume import fingerprint, split_files

    out = Path(out)
    return FinetuneState(out.parent.parent / ".resume" / "finetune" / out.name, fingerprint(
        {"supernet": supernet_path, **split_files(data_path)},
        {"genome": genome, "seed": settings.seed, "finetune": settings.finetune, "data": settings.data},
    ))


class MemberNets:
    """Fresh copies of one front member taken from the supernet, BN recalibrated on the same images.

    ``single()``: the net the search chose; ``with_exits(exits)``: for AEP, the member's body with
    exits 1..nd (or ``exits``) attached, forward = their logits. ``common``: the keyword
    arguments of natv2.evaluate's ``top1`` / ``recalibrate_bn`` for this member.
    """

    def __init__(self, supernet, genome, data, settings, device) -> None:
        from natv2.rng import torch_stream

        cfg = settings.finetune
        self.supernet, self.genome, self.device = supernet, genome, device
        self.space = supernet.space
        self.resolution = int(self.space.decode(genome).resolution)
        self.early_exit = bool(getattr(self.space, "n_exits", 0))
        self.common = dict(resolution=self.resolution, mean=data.mean, std=data.std, batch_size=cfg.batch_size,
                           device=device)
        self.bn_images = (data.train.subset(cfg.bn_images, torch_stream(settings.seed, "bn-images"))
                          if cfg.bn_images else None)

    def _ready(self, net):
        from natv2.evaluate import recalibrate_bn

        net = net.to(self.device)
        if self.bn_images is not None:
            recalibrate_bn(net, self.bn_images, **self.common)
        return net.eval()

    def single(self):
        return self._ready(self.supernet.extract(self.genome))

    def with_exits(self, exits=None):
        exits = aep_exits(self.space, self.genome) if exits is None else exits
        return self._ready(self.supernet.extract(self.genome, exits=exits))


def _searched_columns(nets: MemberNets, data, member: dict) -> dict:
    """The ``search_*`` columns: the single-exit net the search chose, fresh from the supernet.

    Its params and MACs are the front row's where it records them (the search's exact counts,
    natv2.part_costs; a subnet's costs depend on its architecture alone), else counted: counting
    builds torch's flop counter, whose first use imports torch._dynamo (~1.4 s of every job).
    """
    from natv2.costs import count_macs, count_params
    from natv2.evaluate import finite_costs, top1

    searched = nets.single()
    search = {"search_genome": str(member["genome"]),
              "search_val_top1": float(top1(searched, data.val, **nets.common)),
              "search_test_top1": float(top1(searched, data.test, **nets.common))}
    known = finite_costs(member)
    searched = searched.to("cpu")
    search.update(search_params=int(known["params"]) if "params" in known else int(count_params(searched)),
                  search_macs=int(known["macs"]) if "macs" in known else int(count_macs(searched, nets.resolution)))
    return search


def finetune_member(supernet, member: dict, data, settings, *, state: FinetuneState | None = None,
                    progress: bool = True, started: float | None = None):
    """Fine-tune, test and measure one front member; returns ``(net, metrics)`` (see ``natv2 finetune``).

    ``supernet``: on the device it runs on, in eval mode; ``member``: its front.csv row (``id``,
    ``genome``); ``data``: the DataBundle. The held-out part of val (``finetune.selection_holdout``)
    stays out of step 2: the ensembles are chosen, and compared with this net, on it. Early-exit
    supernets use AEP; every column but the ``search_*`` ones then describes the AEP net.
    """
    import time

    from natv2.costs import count_macs, count_params, measure_latency
    from natv2.evaluate import top1

    started = time.perf_counter() if started is None else started
    cfg = settings.finetune
    member_id, genome_string = str(member["id"]), str(member["genome"])
    device = settings.torch_device()
    nets = MemberNets(supernet, supernet.space.from_string(genome_string), data, settings, device)
    common, resolution, space = nets.common, nets.resolution, nets.space
    val_fit, val_select = data.holdout(cfg.selection_holdout, settings.seed)

    search = _searched_columns(nets, data, member)
    log.info("member %s: searched net val %.2f %%, test %.2f %%", member_id, search["search_val_top1"],
             search["search_test_top1"])

    kwargs = dict(resolution=resolution, device=device, seed=settings.seed, step2_images=data.trainval(val_fit),
                  state=state, progress=progress)
    exported_genome = genome_string
    if nets.early_exit:  # NATv2's AEP: exits 1..nd, weighted sum of their logits
        result = aep_finetune(nets.with_exits, data, cfg, **kwargs)
        # every column describes the exported net: its genome's exit is its deepest kept exit,
        # its before-fine-tune accuracies those of the same exits fresh from the supernet
        g = nets.genome.copy()
        g[space.exit_position] = result.exits[-1]
        exported_genome = space.to_string(g)
        before = nets.with_exits(result.exits).with_exits(result.exits, weights=exit_weights(result.exits),
                                                          output="weighted").eval()
        val_before, test_before = top1(before, data.val, **common), top1(before, data.test, **common)
        del before
    else:
        result = two_step_finetune(nets.single, data, cfg, **kwargs)
        val_before, test_before = search["search_val_top1"], search["search_test_top1"]
    log.info("member %s: before fine-tune val %.2f %%, test %.2f %%", member_id, val_before, test_before)
    net = result.model.eval()
    test_after = top1(net, data.test, **common)
    select_after = top1(net, val_select, **common)
    log.info("member %s: after fine-tune test %.2f %%, held-out val %.2f %% (best epoch %d)", member_id, test_after,
             select_after, result.best_epoch)

    cpu_net = net.to("cpu")
    if nets.early_exit:  # AEP's net has exits the searched one lacks: count it
        params, macs = int(count_params(cpu_net)), int(count_macs(cpu_net, resolution))
    else:  # fine-tuning changes weights, not the architecture
        params, macs = search["search_params"], search["search_macs"]
    metrics = {
        "id": member_id,
        "genome": exported_genome,
        "resolution": resolution,
        "params": params,
        "macs": macs,
        "latency_ms": float(measure_latency(net.to(device), resolution, batch_size=cfg.latency_batch_size,
                                            repeats=cfg.latency_repeats, warmup=3, device=device,
                                            min_time=settings.evaluation.latency_min_time,
                                            threads=settings.evaluation.latency_threads)),
        "latency_device": str(device),
        "val_top1": float(val_before),
        "test_top1": float(test_before),
        "test_top1_finetuned": float(test_after),
        "finetune_gain": float(test_after - test_before),
        # top-1 on the part of val that step 2 did not train on (where the ensembles are chosen)
        "select_top1_finetuned": float(select_after),
        "select_images": len(val_select),
        **search,
        **result.summary(),
        "seconds": time.perf_counter() - started,
    }
    return net.to("cpu"), metrics


def write_member(out, net, data, metrics: dict) -> None:
    """Write the member's directory (natv2.export files + metrics.json) whole or not at all.

    Built next to its final name, then renamed into place; an older directory is replaced.
    """
    import os
    import shutil
    from pathlib import Path

    from natv2.export import export_network
    from natv2.io import write_json

    out = Path(out)
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        export_network(net.to("cpu"), tmp, classes=data.classes, resolution=int(metrics["resolution"]),
                       mean=data.mean, std=data.std,
                       extra={"id": str(metrics["id"]), "genome": str(metrics["genome"]),
                              "image_size": int(data.image_size)})
        write_json(tmp / "metrics.json", metrics)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
