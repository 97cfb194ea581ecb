"""The one training engine: supernet phases, NAT warm-up and adaptation, fine-tuning.

    from natv2.train import TrainConfig, train
    history = train(net, data.train, TrainConfig(epochs=5, lr=0.01), resolution=32,
                    mean=data.mean, std=data.std, seed=0, resume=Path("state/phase.pt"))

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

from natv2.data import resize
from natv2.distill import kd_loss, soft_targets
from natv2.errors import Natv2Error
from natv2.io import load_torch, save_torch

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
    def from_sections(cls, *sections: Any, **overrides: Any) -> "TrainConfig":
        """The training settings found in config sections (dataclasses), later ones and ``overrides`` winning.

        Only fields that TrainConfig has are taken (a section's other keys are its own
        business); the warm-up is cut to the epoch count so a short run never warms up past its end.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for section in sections:
            values.update({k: v for k, v in dataclasses.asdict(section).items() if k in names})
        values.update(overrides)
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


@dataclass
class History:
    """One row per finished epoch: epoch (1-based), loss, lr, images_per_s, seconds.

    ``optimizer_state``: the optimizer's state_dict at the end of the run (to carry it on).
    """

    rows: list[dict[str, float]] = field(default_factory=list)
    optimizer_state: dict | None = field(default=None, repr=False)

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


def _barrier(d: _Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _resolution_of(net: nn.Module, genome) -> int:
    space = getattr(net, "space", None)
    if space is None:
        raise Natv2Error("train: subnet_sampler given but the model has no .space to read the resolution from; pass resolution=")
    return int(space.decode(genome).resolution)


def _epoch_batches(data, cfg: TrainConfig, *, epoch_seed: int, mean, std, device, pad: int, flip: bool) -> Iterable:
    from natv2.data import batches

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


def train(
    model: nn.Module,
    data,
    cfg: TrainConfig,
    *,
    resolution: int | None = None,
    resolution_sampler: Callable[[np.random.Generator], int] | None = None,
    subnet_sampler: Callable[[np.random.Generator], Sequence[int]] | None = None,
    subnets_per_step: int = 1,
    teacher: nn.Module | Callable[[torch.Tensor], torch.Tensor] | None = None,
    resume: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    pad: int = 4,
    flip: bool = True,
    on_epoch_end: Callable[[int, dict, nn.Module], None] | None = None,
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
    progress: bool = True,
    schedule: Schedule | None = None,
    optimizer_state: dict | None = None,
    resolution_per_step: bool = False,
) -> History:
    """Train ``model`` in place on ``data`` (an ImageSet) and return the per-epoch history.

    Resolution of each sub-step: ``resolution`` when given, else ``resolution_sampler(rng)``,
    else the sampled genome's resolution (``model.space.decode(genome).resolution``).
    ``teacher(x)`` returns logits (see natv2.distill); it is run without gradients in eval
    mode. ``resume``: state file written atomically after every epoch (keep it apart from the
    declared output); when it exists the run continues after its epoch. ``on_epoch_end(epoch,
    row, model)`` runs on rank 0 after each epoch, before that epoch's state is saved (so what
    it records is never behind the state; an exception it raises leaves the state one epoch
    back, and a resumed run redoes that epoch bit-exactly). ``loss_fn(outputs, labels)``
    replaces the cross-entropy (e.g. the weighted per-exit loss of a multi-exit net); it
    cannot be combined with a teacher. Raises Natv2Error on a NaN/inf loss.

    Carrying a schedule across calls (NAT's adaptation): ``schedule`` places this call's epochs
    in a longer warm-up + cosine curve (:class:`Schedule`; ``cfg.warmup_epochs`` is then unused),
    ``optimizer_state`` (a previous call's ``History.optimizer_state``) restores the optimizer
    (momentum buffers) before training. ``resolution_per_step``: ``resolution_sampler`` draws one
    resolution per batch, shared by the batch's subnets (NAT's random resolution per batch);
    otherwise one per sub-step.
    """
    cfg.check()
    if schedule is not None:
        schedule.check()
    if subnets_per_step < 1:
        raise Natv2Error(f"subnets_per_step={subnets_per_step}: expected >= 1")
    if resolution is None and resolution_sampler is None and subnet_sampler is None:
        raise Natv2Error("train: give resolution=, resolution_sampler= or subnet_sampler=")
    if len(data) == 0:
        raise Natv2Error("train: the training set is empty")
    if loss_fn is not None and teacher is not None:
        raise Natv2Error("train: loss_fn= and teacher= cannot be combined (distillation needs plain logits)")

    device = torch.device(device) if device is not None else torch.device("cpu")
    dist_info = _init_distributed(device)
    if dist_info.world > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", dist_info.rank)))
    if dist_info.world > 1 and device.type == "cuda":
        torch.cuda.set_device(device)  # nccl collectives run on the current device
    use_amp = cfg.amp and device.type == "cuda"  # autocast + GradScaler on GPU only
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format

    net = model.to(device=device, memory_format=memory_format)
    if teacher is not None and isinstance(teacher, nn.Module):
        teacher = teacher.to(device=device, memory_format=memory_format).eval()

    optimizer = make_optimizer(net, cfg)
    if optimizer_state is not None:
        try:
            optimizer.load_state_dict(optimizer_state)
        except (ValueError, KeyError, TypeError) as e:
            raise Natv2Error(f"train: the carried optimizer state does not fit this model/optimizer ({e})") from None
        for group in optimizer.param_groups:  # the lr comes from this run's config and schedule
            group["lr"] = group["initial_lr"] = cfg.lr
    # natv2.data.batches drops the last partial training batch unless it is the only one
    steps_per_epoch = max(len(data) // cfg.batch_size, 1)
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
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(offset_steps + s, total_steps, warmup_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    history = History()
    start_epoch = 0

    resume_path = Path(resume) if resume is not None else None
    if resume_path is not None:
        state = _load_state(resume_path, cfg, seed, schedule)
        if state is not None:
            net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            history.rows = list(state["history"])
            start_epoch = int(state["epoch"])
            if dist_info.main:
                log.info("resuming from %s after epoch %d of %d", resume_path, start_epoch, cfg.epochs)

    trained = net
    if dist_info.world > 1:
        # a supernet leaves most weights unused by any one subnet
        trained = nn.parallel.DistributedDataParallel(
            net,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=subnet_sampler is not None,
        )

    was_training = net.training
    fork_devices = [device] if device.type == "cuda" else []
    for epoch in range(start_epoch, cfg.epochs):
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(_seed_for(seed, epoch, "global"))  # dropout and any other global-RNG op
            row = _train_epoch(
                trained, net, data, cfg, epoch=epoch, seed=seed, device=device, dist_info=dist_info,
                resolution=resolution, resolution_sampler=resolution_sampler, subnet_sampler=subnet_sampler,
                subnets_per_step=subnets_per_step, teacher=teacher, optimizer=optimizer, scheduler=scheduler,
                scaler=scaler, use_amp=use_amp, memory_format=memory_format, mean=mean, std=std, pad=pad,
                flip=flip, steps_per_epoch=steps_per_epoch, loss_fn=loss_fn, progress=progress,
                resolution_per_step=resolution_per_step,
            )
        history.rows.append(row)
        if dist_info.main:
            log.info(
                "epoch %d/%d: loss %.4f, lr %.3g, %.0f images/s",
                epoch + 1, cfg.epochs, row["loss"], row["lr"], row["images_per_s"],
            )
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, row, net)
            if resume_path is not None:
                _save_state(resume_path, net=net, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                            cfg=cfg, seed=seed, epoch=epoch + 1, history=history, schedule=schedule)
        _barrier(dist_info)
    history.optimizer_state = optimizer.state_dict()

    net.train(was_training)
    if cfg.channels_last:
        net.to(memory_format=torch.contiguous_format)  # hand the model back in the default layout
    if dist_info.created:
        import torch.distributed as dist

        dist.destroy_process_group()
    return history


def _train_epoch(trained, net, data, cfg: TrainConfig, *, epoch, seed, device, dist_info: _Dist, resolution,
                 resolution_sampler, subnet_sampler, subnets_per_step, teacher, optimizer, scheduler, scaler,
                 use_amp, memory_format, mean, std, pad, flip, steps_per_epoch, loss_fn, progress,
                 resolution_per_step=False) -> dict:
    from tqdm.auto import tqdm

    rng = np.random.default_rng(_seed_for(seed, epoch, "subnets"))  # subnets and resolutions of this epoch
    net.train()
    loss_sum, n_steps, n_images = 0.0, 0, 0
    t0 = time.perf_counter()
    bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
               disable=not (progress and dist_info.main), leave=False, dynamic_ncols=True)
    batch_iter = _epoch_batches(data, cfg, epoch_seed=_seed_for(seed, epoch, "batches"), mean=mean, std=std,
                                device=device, pad=pad, flip=flip)
    for step, (x, y) in enumerate(batch_iter):
        global_n = len(y)
        if global_n < dist_info.world:
            continue  # a last batch too small to give every rank a sample (same decision on all ranks)
        if dist_info.world > 1:
            x = x.tensor_split(dist_info.world)[dist_info.rank]
            y = y.tensor_split(dist_info.world)[dist_info.rank]
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        targets: dict[int, torch.Tensor] = {}  # teacher soft targets per resolution, once per step
        step_loss = 0.0
        step_res = int(resolution_sampler(rng)) if resolution_per_step and resolution_sampler is not None else None
        for _ in range(subnets_per_step):
            genome = None
            if subnet_sampler is not None:
                genome = subnet_sampler(rng)
                net.set_active(genome)
            if resolution is not None:
                res = int(resolution)
            elif step_res is not None:
                res = step_res
            elif resolution_sampler is not None:
                res = int(resolution_sampler(rng))
            else:
                res = _resolution_of(net, genome)
            xr = resize(x, res).contiguous(memory_format=memory_format)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                logits = trained(xr)
                if loss_fn is not None:
                    loss = loss_fn(logits, y)
                else:
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                if teacher is not None and cfg.kd_weight > 0:
                    if res not in targets:
                        with torch.no_grad():
                            targets[res] = soft_targets(teacher(xr), cfg.kd_temperature)
                    loss = loss + cfg.kd_weight * kd_loss(logits, targets[res], cfg.kd_temperature)
            value = float(loss.detach())
            if not math.isfinite(value):
                where = f" (subnet {list(map(int, genome))})" if genome is not None else ""
                raise Natv2Error(
                    f"training diverged: loss is {value} at epoch {epoch + 1}, step {step + 1}{where}; "
                    f"lower the learning rate (lr={cfg.lr}) or set grad_clip"
                )
            scaler.scale(loss).backward()  # gradients of the sub-steps add up (OFA)
            step_loss += value
        if cfg.grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        lr_used = float(optimizer.param_groups[0]["lr"])
        scheduler.step()
        loss_sum += step_loss / subnets_per_step
        n_steps += 1
        n_images += global_n
        elapsed = time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum / n_steps:.4f}", img_s=f"{n_images / max(elapsed, 1e-9):.0f}")
    bar.close()
    if n_steps == 0:
        raise Natv2Error(f"train: epoch {epoch + 1} had no batch (training set of {len(data)} images)")
    seconds = time.perf_counter() - t0
    return {
        "epoch": epoch + 1,
        "loss": loss_sum / n_steps,
        "lr": lr_used,  # of the epoch's last step
        "images_per_s": n_images / max(seconds, 1e-9),
        "seconds": seconds,
    }
