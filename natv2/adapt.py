"""NAT's supernet adaptation (NAT §3.3): train the subnets the search is interested in.

After each archive update, a categorical distribution per gene is estimated from the top
``top_n`` archive members (by non-dominated survival over the run's objectives); every training
step samples ``subnets_per_step`` subnets from it (gradients accumulated) with KD from the
largest subnet (extracted, BN recalibrated, frozen). The whole archive is then re-evaluated
with the adapted weights (a separate workflow step).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def adaptation_distribution(archive, space, search_cfg, cfg, rng: np.random.Generator) -> list[np.ndarray]:
    """Per-gene probabilities estimated from the best ``cfg.top_n`` rows of ``archive``."""
    from natv2.archive import gene_distribution, genomes_of, top_rows

    top = top_rows(archive, min(cfg.top_n, len(archive)), search_cfg.objectives, rng)
    return gene_distribution(genomes_of(top, space), space, pseudo_count=cfg.pseudo_count)


def train_config(cfg):
    """The engine's TrainConfig from the ``adapt:`` settings."""
    from natv2.train import TrainConfig

    return TrainConfig.from_sections(cfg)


def adapt(
    supernet,
    data,
    archive,
    cfg,
    search_cfg,
    *,
    device,
    seed: int,
    state_path: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Adapt ``supernet`` in place to the distribution of ``archive``'s best; return a summary."""
    from natv2.archive import sample_distribution
    from natv2.shrinking import largest_teacher
    from natv2.train import train

    space = supernet.space
    from natv2.rng import stream

    rng = stream(seed, "adapt-distribution")
    probs = adaptation_distribution(archive, space, search_cfg, cfg, rng)
    if cfg.epochs == 0:
        log.info("adaptation: 0 epochs configured, supernet carried over unchanged")
        return {"epochs": 0}
    teacher = None
    if cfg.kd_weight > 0:
        teacher = largest_teacher(supernet, data, bn_images=cfg.teacher_bn_images, seed=seed, device=device)
    repair = search_cfg.repair_mode

    def sample(g: np.random.Generator) -> np.ndarray:
        return sample_distribution(probs, space, 1, g, repair)[0]

    history = train(
        supernet,
        data.train,
        train_config(cfg),
        subnet_sampler=sample,
        subnets_per_step=cfg.subnets_per_step,
        teacher=teacher,
        resume=state_path,
        device=device,
        seed=seed,
        mean=data.mean,
        std=data.std,
        pad=data.pad,  # the dataset's augmentation, from its split.json
        flip=data.flip,
        progress=progress,
    )
    supernet.set_active(space.largest())
    entropy = float(np.mean([-(p[p > 0] * np.log(p[p > 0])).sum() for p in probs]))
    log.info("adaptation: %d epochs, mean gene entropy of the distribution %.3f nats", cfg.epochs, entropy)
    return {"epochs": cfg.epochs, "history": history.rows, "mean_gene_entropy": entropy}
