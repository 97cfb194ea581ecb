"""NAT's supernet adaptation (NAT §3.3): train the subnets the search is interested in.

After each archive update, a categorical distribution per gene is estimated from the top
``top_n`` archive members (by non-dominated survival over the run's objectives); every training
step samples ``subnets_per_step`` subnets from it (gradients accumulated) with KD from a fixed
teacher. The whole archive is then re-evaluated with the adapted weights (a separate step).

As the original (NAT_extended/search/algorithms/nat.py:219-249 ``_adapt_supernet``, its
``SuperNetTrainer`` NAT_extended/train/trainer.py:566-810, set up in run_nat_new.py:211-333):

- **one schedule over the whole search**: a linear warm-up of ``warmup_epochs`` then a cosine
  over ``search.iterations x adapt.epochs`` epochs (paper 30 x 5 = 150, 5 warm-up epochs);
  iteration i trains epochs ``(i-1) E .. i E`` of it. The optimizer state (momentum) and the
  schedule position (``epochs_done``) are saved in the iteration's supernet checkpoint (key
  ``adapt_state``) and loaded by the next iteration's adaptation, as the original keeps one
  optimizer and scheduler for the whole run (nat.py:230-238).
  *Adding iterations later* (``search.iterations`` from N to M): the finished iterations are not
  rerun (``search.iterations`` is in no fingerprint), and the new ones continue from the saved
  position N E in the cosine over M E epochs — the lr goes back up from the end of the old
  curve to that point of the longer one (a warm restart), the momentum carries on.
- gradient clipping at ``grad_clip`` (5), no label smoothing;
- a **fixed teacher**: the largest subnet of the warmed-up supernet (``--teacher``, the
  warm-up's output), extracted and BN-recalibrated with the run's seed, so every iteration
  distils from the same network; for early-exit nets all its exits, ensembled by
  :func:`natv2.shrinking.largest_teacher` (natv2.distill);
- a **random resolution per batch** from the space's resolutions, shared by the batch's
  subnets (the original's ``MyModRandomResizedCrop`` draws one size per batch and drops the
  genome's ``r``, trainer.py:711-763).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from natv2.errors import Natv2Error

log = logging.getLogger(__name__)

#: key of the carried optimizer/schedule state in an adapted supernet checkpoint
STATE_KEY = "adapt_state"


# --------------------------------------------------------------------------------------------
# NAT's sampling distribution for supernet adaptation


def gene_distribution(genomes: np.ndarray, space, pseudo_count: float = 0.0) -> list[np.ndarray]:
    """Per gene, the categorical distribution over ``xl..xu`` of ``genomes`` (NAT §3.3).

    ``pseudo_count`` is added to every value's count, so values absent from the top genomes
    keep a small chance of being trained.
    """
    genomes = np.asarray(genomes, dtype=np.int64)
    if genomes.ndim != 2 or genomes.shape[1] != space.n_var or len(genomes) == 0:
        raise Natv2Error(f"gene distribution: expected genomes of shape (n>0, {space.n_var}), got {genomes.shape}")
    probs = []
    for pos in range(space.n_var):
        lo, hi = int(space.xl[pos]), int(space.xu[pos])
        counts = np.bincount(genomes[:, pos] - lo, minlength=hi - lo + 1).astype(float) + pseudo_count
        probs.append(counts / counts.sum())
    return probs


def sample_distribution(probs: Sequence[np.ndarray], space, n: int, rng: np.random.Generator, repair: str) -> np.ndarray:
    """``n`` genomes drawn gene by gene from :func:`gene_distribution`, then repaired."""
    X = np.stack([int(space.xl[pos]) + rng.choice(len(p), size=n, p=p) for pos, p in enumerate(probs)], axis=1)
    return space.repair(X, mode=repair)


def adaptation_distribution(archive, space, search_cfg, cfg, rng: np.random.Generator) -> list[np.ndarray]:
    """Per-gene probabilities estimated from the best ``cfg.top_n`` rows of ``archive``."""
    from natv2.archive import genomes_of
    from natv2.survival import top_rows

    top = top_rows(archive, min(cfg.top_n, len(archive)), search_cfg.objectives, rng,
                   getattr(search_cfg, "constraints", None))  # feasible genomes first, as the archive keeps them
    return gene_distribution(genomes_of(top, space), space, pseudo_count=cfg.pseudo_count)


def schedule(cfg, iterations: int, carried: dict | None):
    """This iteration's place in the one warm-up + cosine schedule of the search.

    ``carried``: the previous iteration's ``adapt_state`` (None for the first iteration);
    total = ``iterations x cfg.epochs`` epochs, never shorter than what this iteration ends at.
    """
    from natv2.train import Schedule

    done = int(carried["epochs_done"]) if carried else 0
    total = max(int(iterations) * cfg.epochs, done + cfg.epochs, 1)
    return Schedule(offset_epochs=done, total_epochs=total, warmup_epochs=min(float(cfg.warmup_epochs), total))


def adapt(
    supernet,
    data,
    archive,
    cfg,
    search_cfg,
    *,
    device,
    seed: int,
    teacher_supernet=None,
    teacher_seed: int | None = None,
    carried: dict | None = None,
    state_path: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Adapt ``supernet`` in place to the distribution of ``archive``'s best; return a summary.

    ``teacher_supernet``: the supernet whose largest subnet teaches (default: ``supernet``
    itself, before training); ``teacher_seed`` picks its BN images (default ``seed``).
    ``carried``: the previous iteration's ``adapt_state``. The summary's ``adapt_state`` is the
    state to save with the adapted supernet (see the module docstring).
    """
    from natv2.shrinking import largest_teacher
    from natv2.train import TrainConfig, TrainRun, train

    space = supernet.space
    from natv2.rng import stream

    rng = stream(seed, "adapt-distribution")
    probs = adaptation_distribution(archive, space, search_cfg, cfg, rng)
    if cfg.epochs == 0:
        log.info("adaptation: 0 epochs configured, supernet carried over unchanged")
        return {"epochs": 0, STATE_KEY: carried}
    plan = schedule(cfg, search_cfg.iterations, carried)
    teacher = None
    if cfg.kd_weight > 0:
        source = supernet if teacher_supernet is None else teacher_supernet
        teacher = largest_teacher(source, data, bn_images=cfg.teacher_bn_images,
                                  seed=seed if teacher_seed is None else teacher_seed, device=device)
    repair = search_cfg.repair_mode
    resolutions = np.asarray(space.resolutions)

    def sample(g: np.random.Generator) -> np.ndarray:
        return sample_distribution(probs, space, 1, g, repair)[0]

    history = train(
        supernet,
        data.train,
        TrainConfig.from_sections(cfg, warmup_epochs=0.0),  # the warm-up is the search-wide schedule's
        TrainRun.for_data(
            data,
            subnet_sampler=sample,
            subnets_per_step=cfg.subnets_per_step,
            resolution_sampler=lambda g: int(g.choice(resolutions)),
            resolution_per_step=True,
            teacher=teacher,
            resume=state_path,
            device=device,
            seed=seed,
            progress=progress,
            schedule=plan,
            optimizer_state=None if not carried else carried["optimizer"],
        ),
    )
    supernet.set_active(space.largest())
    entropy = float(np.mean([-(p[p > 0] * np.log(p[p > 0])).sum() for p in probs]))
    log.info("adaptation: epochs %d..%d of a %d-epoch schedule, mean gene entropy of the distribution %.3f nats",
             plan.offset_epochs + 1, plan.offset_epochs + cfg.epochs, plan.total_epochs, entropy)
    state = {"optimizer": history.optimizer_state, "epochs_done": plan.offset_epochs + cfg.epochs,
             "total_epochs": plan.total_epochs}
    return {"epochs": cfg.epochs, "schedule_epochs": [plan.offset_epochs, plan.offset_epochs + cfg.epochs, plan.total_epochs],
            "history": history.untimed(), "mean_gene_entropy": entropy, STATE_KEY: state}


# --------------------------------------------------------------------------------------------
# One search iteration's adaptation, as ``natv2 adapt`` runs it


def iteration_seed(seed: int, iteration: int) -> int:
    """The adaptation seed of search iteration ``iteration``: its own stream of the run's ``seed``."""
    from natv2.rng import stream_seed

    return stream_seed(seed, "adapt", iteration)


def adapt_resume(folder: str | Path, *, supernet_path, archive_path, data_path, teacher_path=None,
                 iteration: int, settings):
    """The resume folder (natv2.resume.ResumeFolder) of one iteration's adaptation.

    Fingerprinted with its input files and the settings it depends on, so a rerun after an
    upstream change starts over instead of resuming stale state.
    """
    from natv2.resume import ResumeFolder, fingerprint, split_files

    return ResumeFolder(folder, fingerprint(
        {"supernet": supernet_path, "archive": archive_path, **split_files(data_path),
         **({"teacher": teacher_path} if teacher_path else {})},
        {"seed": iteration_seed(settings.seed, iteration), "iteration": iteration, "adapt": settings.adapt,
         "search": settings.search, "data": settings.data},
    ))


def adapt_iteration(
    supernet,
    meta: dict[str, Any],
    data,
    archive,
    settings,
    *,
    iteration: int,
    carried: dict | None = None,
    teacher_supernet=None,
    state_path: Path | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Adapt ``supernet`` in place for search iteration ``iteration``; return the checkpoint's ``(meta, extra)``.

    ``meta``: the input checkpoint's meta; the returned copy has this iteration's summary
    appended to ``adaptations``. ``extra``: ``{STATE_KEY: state}``, the optimizer and schedule
    position the next iteration continues from (None when there is none). ``carried``: the
    input checkpoint's own ``STATE_KEY`` entry; ``teacher_supernet``: see :func:`adapt` (the
    teacher's BN images use the run's seed, so every iteration has the same teacher).
    """
    summary = adapt(
        supernet, data, archive, settings.adapt, settings.search,
        device=settings.torch_device(), seed=iteration_seed(settings.seed, iteration),
        teacher_supernet=teacher_supernet, teacher_seed=settings.seed, carried=carried,
        state_path=state_path, progress=progress,
    )
    adapt_state = summary.pop(STATE_KEY)
    meta = dict(meta)
    meta["adaptations"] = [*meta.get("adaptations", []), {"iteration": iteration, **summary}]
    return meta, None if adapt_state is None else {STATE_KEY: adapt_state}
