"""NAT's warm-up of the source supernet on the target dataset, before the search.

As NATv2's ``run_nat_warmup.py:169-204`` (paper values in config/paper.yaml):

1. A new classification head for the target classes (kept when the source supernet was
   already trained on exactly these classes, e.g. the default where the source dataset is the
   target dataset itself). Early-exit nets get a new classifier on every exit, as the original
   (``run_nat_warmup.py:275-277``).
2. Max-net fine-tuning: the largest subnet trained for ``head_epochs`` at ``head_lr``
   (``head_warmup_epochs`` of linear warm-up; the original: 100 epochs at 7.5e-3, 5 warm-up,
   per width). Early-exit nets train every exit at once on ``sum_i w_i * CE_i``
   (``TrainerEE``, ``NAT_extended/train/trainer.py:368-410``; weights from natv2.exits).
3. ``supernet_epochs`` of whole-supernet training (the original: 150 epochs at 7.5e-3, 10
   warm-up): each step samples ``subnets_per_step`` subnets uniformly (NAT's sampling),
   gradients summed, KD from the largest subnet of step 2 (extracted, BN recalibrated,
   frozen; for early-exit nets the ENS-KD teacher of all its exits, ``trainer.py:735-747``).

Each stage keeps its own resume state (``state_dir/head.pt``, ``state_dir/supernet.pt``); a
killed warm-up restarts where it stopped and ends with the same weights.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def ensure_head(supernet, classes: list[str], source_classes: list[str] | None, *, seed: int) -> bool:
    """Give ``supernet`` a new classifier for ``classes`` unless it already predicts exactly them.

    Returns True when the head was replaced.
    """
    from natv2.rng import torch_stream

    if source_classes is not None and list(source_classes) == list(classes) and supernet.n_classes == len(classes):
        return False
    supernet.reset_classifier(len(classes), torch_stream(seed, "head"))
    return True


def warmup(
    supernet,
    data,
    cfg,
    *,
    device,
    seed: int,
    source_classes: list[str] | None = None,
    state_dir: Path | None = None,
    pad: int | None = None,
    flip: bool | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run NAT's warm-up on ``supernet`` in place; return a summary for the checkpoint meta.

    ``data`` is the target DataBundle, ``cfg`` the ``warmup:`` settings, ``source_classes`` the
    classes the source supernet was trained on (None = unknown, so the head is replaced).
    ``pad``/``flip``: the augmentation (None: the dataset's, from its split.json).
    """
    from natv2.shrinking import joint_exit_loss, largest_teacher
    from natv2.train import TrainConfig, TrainRun, train

    space = supernet.space
    largest = space.largest()
    new_head = ensure_head(supernet, data.classes, source_classes, seed=seed)
    log.info("warm-up: %s classification head for %d classes", "new" if new_head else "kept the", data.n_classes)
    common = dict(device=device, seed=seed, pad=pad, flip=flip, progress=progress)  # pad/flip None: the data's
    summary: dict[str, Any] = {"new_head": new_head}

    # stage 1: the largest subnet alone (early-exit nets: all its exits at once)
    head_warmup = getattr(cfg, "head_warmup_epochs", None)  # None: the section's warmup_epochs
    head_cfg = TrainConfig.from_sections(cfg, epochs=cfg.head_epochs, lr=cfg.head_lr, kd=False,
                                         **({} if head_warmup is None else {"warmup_epochs": head_warmup}))
    joint = getattr(space, "n_exits", 0) > 0
    supernet.joint_exits = joint
    try:
        head_history = train(
            supernet,
            data.train,
            head_cfg,
            TrainRun.for_data(
                data,
                subnet_sampler=lambda rng: largest,
                loss_fn=joint_exit_loss(space, None, head_cfg.label_smoothing) if joint else None,
                resume=None if state_dir is None else Path(state_dir) / "head.pt",
                **common,
            ),
        )
    finally:
        supernet.joint_exits = False
    summary["head_history"] = head_history.untimed()
    summary["head_joint_exits"] = joint

    # stage 2: sampled subnets with KD from the fine-tuned largest subnet
    teacher = None
    if cfg.kd_weight > 0 and cfg.supernet_epochs > 0:
        teacher = largest_teacher(supernet, data, bn_images=cfg.teacher_bn_images, seed=seed, device=device)

    def sample(rng: np.random.Generator) -> np.ndarray:
        return space.sample(1, rng, policy="nat")[0]

    supernet_history = train(
        supernet,
        data.train,
        TrainConfig.from_sections(cfg, epochs=cfg.supernet_epochs, lr=cfg.lr, kd=teacher is not None),
        TrainRun.for_data(
            data,
            subnet_sampler=sample,
            subnets_per_step=cfg.subnets_per_step,
            teacher=teacher,
            resume=None if state_dir is None else Path(state_dir) / "supernet.pt",
            **common,
        ),
    )
    summary["supernet_history"] = supernet_history.untimed()
    supernet.set_active(largest)
    return summary
