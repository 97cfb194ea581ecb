"""The one training engine: supernet phases, NAT warm-up and adaptation, fine-tuning.

    from natv2.train import TrainConfig, TrainRun, train
    history = train(net, data.train, TrainConfig(epochs=5, lr=0.01),
                    TrainRun(resolution=32, mean=data.mean, std=data.std, seed=0, resume=Path("state/phase.pt")))

``TrainConfig`` holds the settings (saved with the resume state and compared on resume),
``TrainRun`` what else one call uses: samplers, teacher or loss, data normalisation and
augmentation, device, seed, resume file, callbacks, a carried schedule.

One optimizer step = one batch; with ``subnet_sampler`` the step runs ``subnets_per_step``
sampled subnets on that batch (``net.set_active(genome)`` before each sub-step, the batch
resized to the subnet's resolution) and sums their gradients before the update, as OFA's
progressive shrinking does (``dynamic_batch_size``). Loss = cross-entropy with label
smoothing + ``kd_weight`` x the distillation loss from ``teacher`` (OFA: ``kd_ratio * kd +
ce``). The learning rate follows a linear warm-up, then a cosine decay to zero, per step.

Reproducible and resumable: the data order, the augmentation, the sampled subnets and the
global torch RNG (dropout) of epoch ``e`` are seeded from ``(seed, e)`` alone, so a run resumed
from the state file written after epoch ``e`` (model, optimizer, scheduler, scaler, history)
continues exactly as the uninterrupted run would, bit for bit on CPU.

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) the same call trains with
DistributedDataParallel (gloo on CPU, nccl on GPU). Every rank draws the same global batch and
the same subnets from the seed and keeps its own slice of the batch; DDP averages the
gradients, so the update is that of the global batch. Only rank 0 writes files.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from natv2.distill import kd_loss, soft_targets
from natv2.errors import Natv2Error
from natv2.io import load_torch, save_torch
from natv2.splits import resize

log = logging.getLogger(__name__)

STATE_FORMAT = "natv2-train-state/1"


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run (one phase, one warm-up stage, one fine-tune)."""

    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01  # peak learning rate, reached after the warm-up
    weight_decay: float = 3e-5  # OFA; never applied to biases and norm layers (OFA no_decay_keys "bn#bias")
    momentum: float = 0.9  # sgd only
    nesterov: bool = True  # sgd only; OFA trains with Nesterov momentum
    epochs: int = 1
    warmup_epochs: float = 0.0  # linear warm-up from ~0 to lr, then cosine decay to 0
    schedule_epochs: float | None = None  # length of the cosine in epochs (None = epochs); longer = stop early on it
    batch_size: int = 64  # global batch (split across ranks under DDP)
    label_smoothing: float = 0.1  # OFA
    kd_weight: float = 1.0  # OFA kd_ratio
    kd_temperature: float = 1.0  # OFA distils at T = 1
    grad_clip: float | None = None  # max global gradient norm; None = off
    amp: bool = True  # mixed precision, used on CUDA only (always off on CPU)
    channels_last: bool = True  # NHWC memory format (faster convolutions on CPU and GPU)

    def check(self) -> None:
        """Raise Natv2Error naming the first out-of-range field."""
        rules = {
            "optimizer": self.optimizer in ("sgd", "adamw"),
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "momentum": 0 <= self.momentum < 1,
            "epochs": self.epochs >= 0,
            "warmup_epochs": 0 <= self.warmup_epochs <= max(self.epochs, 0),
            "schedule_epochs": self.schedule_epochs is None or self.schedule_epochs >= self.epochs,
            "batch_size": self.batch_size >= 1,
            "label_smoothing": 0 <= self.label_smoothing < 1,
            "kd_weight": self.kd_weight >= 0,
            "kd_temperature": self.kd_temperature > 0,
            "grad_clip": self.grad_clip is None or self.grad_clip > 0,
        }
        for key, ok in rules.items():
            if not ok:
                raise Natv2Error(f"training setting {key}={getattr(self, key)!r}: out of range")

    @classmethod
    def from_mapping(cls, values: dict[str, Any], where: str = "train") -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise Natv2Error(f"config key {where}.{unknown[0]}: unknown training setting (known: {', '.join(sorted(names))})")
        cfg = cls(**values)
        cfg.check()
        return cfg

    @classmethod
    def from_sections(cls, *sections: Any, kd: bool = True, **overrides: Any) -> "TrainConfig":
        """The training settings found in config sections (dataclasses), later ones and ``overrides`` winning.

        The one way every phase builds its TrainConfig (supernet phases, warm-up stages, NAT
        adaptation, fine-tuning). Only fields that TrainConfig has are taken (a section's other
        keys are its own business); ``kd=False``: no distillation (``kd_weight`` 0, e.g. when
        there is no teacher); the warm-up is cut to the epoch count so a short run never warms
        up past its end.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for section in sections:
            values.update({k: v for k, v in dataclasses.asdict(section).items() if k in names})
        values.update(overrides)
        if not kd:
            values["kd_weight"] = 0.0
        if "epochs" in values and "warmup_epochs" in values:
            values["warmup_epochs"] = min(values["warmup_epochs"], values["epochs"])
        return cls.from_mapping(values)


@dataclass(frozen=True)
class Schedule:
    """Where one ``train`` call sits in a longer learning-rate schedule (NAT's adaptation).

    The call trains epochs ``offset_epochs .. offset_epochs + cfg.epochs`` of one linear
    warm-up (``warmup_epochs``) + cosine schedule over ``total_epochs``; the lr of a step is
    taken at its position in that schedule, so consecutive calls continue one curve.
    """

    offset_epochs: int
    total_epochs: int
    warmup_epochs: float = 0.0

    def check(self) -> None:
        if self.offset_epochs < 0 or self.total_epochs < 1 or not 0 <= self.warmup_epochs <= self.total_epochs:
            raise Natv2Error(f"training schedule {self}: expected offset >= 0, total >= 1, 0 <= warm-up <= total")


@dataclass(frozen=True)
class TrainRun:
    """What one :func:`train` call uses besides its settings (``TrainConfig``): not saved in the
    resume state (callables, modules, paths), except ``seed`` and ``schedule``, which it checks.

    Resolution of each sub-step: ``resolution`` when given, else ``resolution_sampler(rng)``,
    else the sampled genome's resolution (``model.space.decode(genome).resolution``);
    ``resolution_per_step``: ``resolution_sampler`` draws one resolution per batch, shared by the
    batch's subnets (NAT's random resolution per batch), otherwise one per sub-step.
    ``subnet_sampler(rng)`` draws the genome of each of the ``subnets_per_step`` sub-steps
    (``net.set_active(genome)``). ``teacher(x)`` returns logits (see natv2.distill); it is run
    without gradients in eval mode. ``loss_fn(outputs, labels)`` replaces the cross-entropy (e.g.
    the weighted per-exit loss of a multi-exit net); it cannot be combined with a teacher.
    ``mean``/``std``/``pad``/``flip``: the input normalisation and the augmentation.

    ``resume``: state file written atomically after every epoch (keep it apart from the declared
    output); when it exists the run continues after its epoch. ``on_epoch_end(epoch, row,
    model)`` runs on rank 0 after each epoch, before that epoch's state is saved (so what it
    records is never behind the state; an exception it raises leaves the state one epoch back,
    and a resumed run redoes that epoch bit-exactly); when it returns True, training stops after
    that epoch (early stopping; that epoch's state is saved first).

    Carrying a schedule across calls (NAT's adaptation): ``schedule`` places the call's epochs
    in a longer warm-up + cosine curve (:class:`Schedule`; ``cfg.warmup_epochs`` is then unused),
    ``optimizer_state`` (a previous call's ``History.optimizer_state``) restores the optimizer
    (momentum buffers) before training.
    """

    resolution: int | None = None
    resolution_sampler: Callable[[np.random.Generator], int] | None = None
    resolution_per_step: bool = False
    subnet_sampler: Callable[[np.random.Generator], Sequence[int]] | None = None
    subnets_per_step: int = 1
    teacher: nn.Module | Callable[[torch.Tensor], torch.Tensor] | None = None
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None
    device: str | torch.device | None = None
    seed: int = 0
    mean: Sequence[float] = (0.5, 0.5, 0.5)
    std: Sequence[float] = (0.5, 0.5, 0.5)
    pad: int = 4
    flip: bool = True
    resume: str | os.PathLike | None = None
    on_epoch_end: Callable[[int, dict, nn.Module], bool | None] | None = None
    progress: bool = True
    schedule: Schedule | None = None
    optimizer_state: dict | None = field(default=None, repr=False)

    @classmethod
    def for_data(cls, data, *, pad: int | None = None, flip: bool | None = None, **options) -> "TrainRun":
        """A run on the DataBundle ``data``: its normalisation and its augmentation (split.json's
        pad/flip unless ``pad``/``flip`` are given; digits must not be mirrored), plus ``options``."""
        return cls(mean=data.mean, std=data.std, pad=data.pad if pad is None else pad,
                   flip=data.flip if flip is None else flip, **options)

    def check(self) -> None:
        """Raise Natv2Error on options that cannot go together."""
        if self.schedule is not None:
            self.schedule.check()
        if self.subnets_per_step < 1:
            raise Natv2Error(f"subnets_per_step={self.subnets_per_step}: expected >= 1")
        if self.resolution is None and self.resolution_sampler is None and self.subnet_sampler is None:
            raise Natv2Error("train: give resolution=, resolution_sampler= or subnet_sampler=")
        if self.loss_fn is not None and self.teacher is not None:
            raise Natv2Error("train: loss_fn= and teacher= cannot be combined (distillation needs plain logits)")


@dataclass
class History:
    """One row per finished epoch: epoch (1-based), loss, lr, images_per_s, seconds.

    ``optimizer_state``: the optimizer's state_dict at the end of the run (to carry it on).
    """

    rows: list[dict[str, float]] = field(default_factory=list)
    optimizer_state: dict | None = field(default=None, repr=False)

    #: an epoch's clock readings: logged, and kept in resume states, but never in an output
    TIMINGS = ("images_per_s", "seconds")

    def untimed(self) -> list[dict[str, float]]:
        """The rows less their clock readings: what a checkpoint's meta keeps, so that two identical
        runs write identical bytes (a rerun's timings differ, its weights and losses do not)."""
        return [{k: v for k, v in row.items() if k not in self.TIMINGS} for row in self.rows]

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.rows]

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows)


# --------------------------------------------------------------------------------------------
# helpers


def _seed_for(seed: int, epoch: int, stream: str) -> int:
    """An independent 63-bit seed for (run seed, epoch, stream ``train-<stream>``): no state carried across epochs."""
    from natv2.rng import stream_seed

    return stream_seed(seed, f"train-{stream}", epoch)


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the peak lr for optimizer step ``step`` (0-based): linear warm-up, then cosine."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # OFA (no_decay_keys "bn#bias"): no weight decay on biases and normalisation weights (1-D)
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


@dataclass(frozen=True)
class _Dist:
    world: int = 1
    rank: int = 0
    created: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: torch.device) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    created = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created = True
    return _Dist(dist.get_world_size(), dist.get_rank(), created)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _resolution_of(net: nn.Module, genome) -> int:
    space = getattr(net, "space", None)
    if space is None:
        raise Natv2Error("train: subnet_sampler given but the model has no .space to read the resolution from; pass resolution=")
    return int(space.decode(genome).resolution)


def _epoch_batches(data, cfg: TrainConfig, *, epoch_seed: int, mean, std, device, pad: int, flip: bool) -> Iterable:
    from natv2.splits import batches

    gen = torch.Generator().manual_seed(epoch_seed)
    return batches(
        data,
        cfg.batch_size,
        resolution=int(data.images.shape[-1]),
        mean=mean,
        std=std,
        train=True,
        generator=gen,
        device=device,
        pad=pad,
        flip=flip,
    )


# --------------------------------------------------------------------------------------------
# resume state


def _load_state(path: Path, cfg: TrainConfig, seed: int, schedule: Schedule | None = None) -> dict | None:
    if not path.is_file():
        return None
    state = load_torch(path)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise Natv2Error(f"{path}: not a natv2 training state file (delete it to start over)")
    if state["seed"] != seed:
        raise Natv2Error(f"{path}: resume state written with seed {state['seed']}, this run has seed {seed} (delete it to start over)")
    saved = state["config"]
    for key, value in dataclasses.asdict(cfg).items():
        if saved.get(key) != value:
            raise Natv2Error(
                f"{path}: resume state written with {key}={saved.get(key)!r}, this run has {key}={value!r} "
                "(delete it to start over)"
            )
    wanted = None if schedule is None else dataclasses.asdict(schedule)
    if state.get("schedule") != wanted:
        raise Natv2Error(f"{path}: resume state written with schedule {state.get('schedule')}, this run has {wanted} "
                         "(delete it to start over)")
    return state


def _save_state(path: Path, *, net, optimizer, scheduler, scaler, cfg: TrainConfig, seed: int, epoch: int, history: History,
                schedule: Schedule | None = None) -> None:
    save_torch(
        path,
        {
            "format": STATE_FORMAT,
            "epoch": epoch,
            "seed": seed,
            "config": dataclasses.asdict(cfg),
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "history": history.rows,
            "schedule": None if schedule is None else dataclasses.asdict(schedule),
        },
    )


# --------------------------------------------------------------------------------------------
# the loop


def train(model: nn.Module, data, cfg: TrainConfig, run: TrainRun | None = None) -> History:
    """Train ``model`` in place on ``data`` (an ImageSet) with the settings ``cfg`` and the
    options ``run`` (:class:`TrainRun`); return the per-epoch history. Raises Natv2Error on a
    NaN/inf loss."""
    run = TrainRun() if run is None else run
    cfg.check()
    run.check()
    if len(data) == 0:
        raise Natv2Error("train: the training set is empty")

    engine = _Engine.setup(model, data, cfg, run)
    net, dist_info = engine.net, engine.dist
    resume_path = Path(run.resume) if run.resume is not None else None
    history = History()
    start_epoch = engine.resume_from(resume_path, history)
    engine.wrap_distributed()

    was_training = net.training
    fork_devices = [engine.device] if engine.device.type == "cuda" else []
    for epoch in range(start_epoch, cfg.epochs):
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(_seed_for(run.seed, epoch, "global"))  # dropout and any other global-RNG op
            row = _train_epoch(engine, epoch)
        history.rows.append(row)
        stop = False
        if dist_info.main:
            log.info(
                "epoch %d/%d: loss %.4f, lr %.3g, %.0f images/s, %.1f s",
                epoch + 1, cfg.epochs, row["loss"], row["lr"], row["images_per_s"], row["seconds"],
            )
            if run.on_epoch_end is not None:
                stop = bool(run.on_epoch_end(epoch + 1, row, net))
            if resume_path is not None:
                _save_state(resume_path, net=net, optimizer=engine.optimizer, scheduler=engine.scheduler,
                            scaler=engine.scaler, cfg=cfg, seed=run.seed, epoch=epoch + 1, history=history,
                            schedule=run.schedule)
        if _agree(dist_info, stop):
            break
    history.optimizer_state = engine.optimizer.state_dict()

    net.train(was_training)
    if cfg.channels_last:
        net.to(memory_format=torch.contiguous_format)  # hand the model back in the default layout
    if dist_info.created:
        import torch.distributed as dist

        dist.destroy_process_group()
    return history


def _agree(d: _Dist, stop: bool) -> bool:
    """Rank 0's stop decision, on every rank (a barrier between epochs under DDP)."""
    if d.world <= 1:
        return stop
    import torch.distributed as dist

    flag = [stop]
    dist.broadcast_object_list(flag, src=0)
    return bool(flag[0])


@dataclass
class _Engine:
    """One ``train`` call, set up: the model on its device, the optimizer, the lr schedule, the
    scaler, the settings and the call's options; :func:`_train_epoch` reads everything from it."""

    net: nn.Module  # the model being trained
    trained: nn.Module  # what the forward runs: ``net``, or its DDP wrapper
    data: Any
    cfg: TrainConfig
    run: TrainRun
    teacher: Any  # run.teacher, a module placed on the device
    device: torch.device
    dist: _Dist
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    use_amp: bool
    memory_format: torch.memory_format
    steps_per_epoch: int

    @classmethod
    def setup(cls, model, data, cfg: TrainConfig, run: TrainRun) -> _Engine:
        """Place the model (and a teacher module) on the device, build the optimizer (restoring
        ``run.optimizer_state``), the lr schedule and the scaler."""
        device, dist_info = _place(run.device)
        use_amp = cfg.amp and device.type == "cuda"  # autocast + GradScaler on GPU only
        memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        net = model.to(device=device, memory_format=memory_format)
        teacher = run.teacher
        if teacher is not None and isinstance(teacher, nn.Module):
            teacher = teacher.to(device=device, memory_format=memory_format).eval()
        optimizer = make_optimizer(net, cfg)
        if run.optimizer_state is not None:
            try:
                optimizer.load_state_dict(run.optimizer_state)
            except (ValueError, KeyError, TypeError) as e:
                raise Natv2Error(f"train: the carried optimizer state does not fit this model/optimizer ({e})") from None
            for group in optimizer.param_groups:  # the lr comes from this run's config and schedule
                group["lr"] = group["initial_lr"] = cfg.lr
        # natv2.splits.batches drops the last partial training batch unless it is the only one
        steps_per_epoch = max(len(data) // cfg.batch_size, 1)
        scheduler = _lr_scheduler(optimizer, cfg, run.schedule, steps_per_epoch)
        scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
        return cls(net, net, data, cfg, run, teacher, device, dist_info, optimizer, scheduler, scaler, use_amp,
                   memory_format, steps_per_epoch)

    def wrap_distributed(self) -> None:
        """Under DDP, run the forward through DistributedDataParallel (after any resume state is loaded)."""
        if self.dist.world > 1:
            # a supernet leaves most weights unused by any one subnet
            self.trained = nn.parallel.DistributedDataParallel(
                self.net,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.run.subnet_sampler is not None,
            )

    def resume_from(self, path: Path | None, history: History) -> int:
        """Load the state file at ``path`` if there is one; the epoch to start from (0 = fresh)."""
        state = _load_state(path, self.cfg, self.run.seed, self.run.schedule) if path is not None else None
        if state is None:
            return 0
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        history.rows = list(state["history"])
        start_epoch = int(state["epoch"])
        if self.dist.main:
            log.info("resuming from %s after epoch %d of %d", path, start_epoch, self.cfg.epochs)
        return start_epoch

    def sub_resolution(self, rng: np.random.Generator, step_res: int | None, genome) -> int:
        """The input resolution of one sub-step (see :class:`TrainRun`)."""
        if self.run.resolution is not None:
            return int(self.run.resolution)
        if step_res is not None:
            return step_res
        if self.run.resolution_sampler is not None:
            return int(self.run.resolution_sampler(rng))
        return _resolution_of(self.net, genome)


def _place(device) -> tuple[torch.device, _Dist]:
    """The device this process trains on, and its place in a distributed run (if any)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    dist_info = _init_distributed(device)
    if dist_info.world > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", dist_info.rank)))
    if dist_info.world > 1 and device.type == "cuda":
        torch.cuda.set_device(device)  # nccl collectives run on the current device
    return device, dist_info


def _lr_scheduler(optimizer, cfg: TrainConfig, schedule: Schedule | None, steps_per_epoch: int):
    """Per-step linear warm-up + cosine (:func:`lr_factor`), placed by ``schedule`` when given."""
    if schedule is None:
        # fine-tune step 2 runs on step 1's schedule length (TrainConfig.schedule_epochs)
        epochs = cfg.epochs if cfg.schedule_epochs is None else cfg.schedule_epochs
        total_steps = max(round(epochs * steps_per_epoch), 1)
        warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
        offset_steps = 0
    else:
        total_steps = max(schedule.total_epochs * steps_per_epoch, 1)
        warmup_steps = round(schedule.warmup_epochs * steps_per_epoch)
        offset_steps = schedule.offset_epochs * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(offset_steps + s, total_steps, warmup_steps))


def _train_epoch(engine: _Engine, epoch: int) -> dict:
    from tqdm.auto import tqdm

    cfg, dist_info, run = engine.cfg, engine.dist, engine.run
    rng = np.random.default_rng(_seed_for(run.seed, epoch, "subnets"))  # subnets and resolutions of this epoch
    engine.net.train()
    loss_sum, n_steps, n_images = 0.0, 0, 0
    t0 = time.perf_counter()
    bar = tqdm(total=engine.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
               disable=not (run.progress and dist_info.main), leave=False, dynamic_ncols=True)
    batch_iter = _epoch_batches(engine.data, cfg, epoch_seed=_seed_for(run.seed, epoch, "batches"), mean=run.mean,
                                std=run.std, device=engine.device, pad=run.pad, flip=run.flip)
    for step, (x, y) in enumerate(batch_iter):
        global_n = len(y)
        if global_n < dist_info.world:
            continue  # a last batch too small to give every rank a sample (same decision on all ranks)
        if dist_info.world > 1:
            x = x.tensor_split(dist_info.world)[dist_info.rank]
            y = y.tensor_split(dist_info.world)[dist_info.rank]
        x = x.to(engine.device, non_blocking=True)
        y = y.to(engine.device, non_blocking=True)
        engine.optimizer.zero_grad(set_to_none=True)
        step_loss = _train_step(engine, x, y, rng, where=f"epoch {epoch + 1}, step {step + 1}")
        if cfg.grad_clip is not None:
            engine.scaler.unscale_(engine.optimizer)
            torch.nn.utils.clip_grad_norm_(engine.net.parameters(), cfg.grad_clip)
        engine.scaler.step(engine.optimizer)
        engine.scaler.update()
        lr_used = float(engine.optimizer.param_groups[0]["lr"])
        engine.scheduler.step()
        loss_sum += step_loss / run.subnets_per_step
        n_steps += 1
        n_images += global_n
        elapsed = time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum / n_steps:.4f}", img_s=f"{n_images / max(elapsed, 1e-9):.0f}")
    bar.close()
    if n_steps == 0:
        raise Natv2Error(f"train: epoch {epoch + 1} had no batch (training set of {len(engine.data)} images)")
    seconds = time.perf_counter() - t0
    return {
        "epoch": epoch + 1,
        "loss": loss_sum / n_steps,
        "lr": lr_used,  # of the epoch's last step
        "images_per_s": n_images / max(seconds, 1e-9),
        "seconds": seconds,
    }


def _train_step(engine: _Engine, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, *, where: str) -> float:
    """The sub-steps of one optimizer step on batch ``(x, y)``: their gradients add up (OFA); the summed loss."""
    cfg, run = engine.cfg, engine.run
    targets: dict[int, torch.Tensor] = {}  # teacher soft targets per resolution, once per step
    step_loss = 0.0
    step_res = (int(run.resolution_sampler(rng)) if run.resolution_per_step and run.resolution_sampler is not None
                else None)
    for _ in range(run.subnets_per_step):
        genome = None
        if run.subnet_sampler is not None:
            genome = run.subnet_sampler(rng)
            engine.net.set_active(genome)
        res = engine.sub_resolution(rng, step_res, genome)
        xr = resize(x, res).contiguous(memory_format=engine.memory_format)
        with torch.autocast(device_type=engine.device.type, dtype=torch.float16, enabled=engine.use_amp):
            logits = engine.trained(xr)
            if run.loss_fn is not None:
                loss = run.loss_fn(logits, y)
            else:
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            if engine.teacher is not None and cfg.kd_weight > 0:
                if res not in targets:
                    with torch.no_grad():
                        targets[res] = soft_targets(engine.teacher(xr), cfg.kd_temperature)
                loss = loss + cfg.kd_weight * kd_loss(logits, targets[res], cfg.kd_temperature)
        value = float(loss.detach())
        if not math.isfinite(value):
            subnet = f" (subnet {list(map(int, genome))})" if genome is not None else ""
            raise Natv2Error(
                f"training diverged: loss is {value} at {where}{subnet}; "
                f"lower the learning rate (lr={cfg.lr}) or set grad_clip"
            )
        engine.scaler.scale(loss).backward()  # gradients of the sub-steps add up (OFA)
        step_loss += value
    return step_loss
