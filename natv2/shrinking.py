"""Extended progressive shrinking (OFA, extended by OFAv2): one phase = one call.

    full -> kernel -> level1 -> level2 (parallel-block nets) -> exit1..exit4 (early-exit nets)
         -> depth1 -> depth2 -> expand1 -> expand2

Each phase unlocks one more elastic dimension and keeps those unlocked before it; the others
stay at their largest value. OFA does depth and expand in two sub-steps each (first the two
largest values, then all). Every phase except ``full`` distils from a teacher re-extracted at
its start: the largest subnet of the phase's initial weights, BN recalibrated (for early-exit
nets the weighted ensemble of its exits). Channels are re-ordered by importance before the
expand phases so smaller expand ratios keep the most important channels. A phase whose
dimension the variant lacks is skipped (its input is its output).

Early-exit nets (OFAv2): the ``full`` phase trains every exit at once on ``sum_i w_i * CE_i``
(natv2.exits weights; ``early_exit_run_manager.py:311-324``); the other phases train the sampled
subnet's own exit with KD from the ENS-KD teacher (``new_progressive_shrinking.py:361-420``),
and the exit phase runs as OFAv2's four sub-phases with active exits {4,5}, {3..5}, {2..5}, {1..5}.

The phase table is data: :data:`DIMENSIONS` says how each elastic dimension is restricted in a
sub-space of the :class:`~natv2.space.SearchSpace`, :data:`PHASES` which dimensions each phase
unlocks. A variant with a new dimension registers one :class:`Dimension` and one phase.
Sampling restricts the space (``dataclasses.replace(space, kernels=(7,))``), samples in it with
balanced depths (as OFA samples each stage's depth uniformly), then re-encodes the decoded
architecture in the full space.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from natv2.errors import Natv2Error

log = logging.getLogger(__name__)


def _top(values: tuple, mode: str) -> tuple:
    """The values a dimension may take: all, the N largest (``topN``), or only the largest."""
    ordered = tuple(sorted(values))
    if mode == "all":
        return ordered
    if mode == "max":
        return ordered[-1:]
    if mode.startswith("top") and mode[3:].isdigit() and int(mode[3:]) >= 1:
        return ordered[-int(mode[3:]):]
    raise Natv2Error(f"dimension mode {mode!r}: expected all, topN (N >= 1) or max")


@dataclass(frozen=True)
class Dimension:
    """An elastic dimension: whether a space has it and how a phase restricts it.

    ``restrict(space, mode)`` returns SearchSpace field overrides for the sub-space;
    ``fix(arch, space, mode, rng)`` adjusts a decoded architecture after sampling (for
    dimensions not expressible as a field of values, e.g. the exit gene).
    """

    name: str
    applies: Callable[[Any], bool]
    restrict: Callable[[Any, str], dict] = lambda space, mode: {}
    fix: Callable[[Any, Any, str, Any], Any] = lambda arch, space, mode, rng: arch


def _field_dimension(name: str, field: str) -> Dimension:
    return Dimension(
        name=name,
        applies=lambda space: len(tuple(getattr(space, field, ()) or ())) > 1,
        restrict=lambda space, mode: {field: _top(tuple(getattr(space, field)), mode)},
    )


def _fix_exit(arch, space, mode: str, rng: np.random.Generator):
    """The exit drawn uniformly among the phase's active exits (OFAv2 samples ``net_depth_list``)."""
    if arch.exit is None:
        return arch
    allowed = _top(tuple(range(1, space.n_exits + 1)), mode)
    return dataclasses.replace(arch, exit=int(allowed[rng.integers(len(allowed))]) if len(allowed) > 1 else allowed[0])


DIMENSIONS: dict[str, Dimension] = {
    "kernel": _field_dimension("kernel", "kernels"),
    # parallel-block nets: ``levels`` = how many branches a block may run (OFAv2 net_width_list);
    # level1 allows the two largest (2, 3), level2 all (OFAv2 train/utils.py:30-57)
    "level": _field_dimension("level", "levels"),
    "exit": Dimension("exit", applies=lambda space: getattr(space, "n_exits", 0) > 0, fix=_fix_exit),
    "depth": _field_dimension("depth", "depths"),
    "expand": _field_dimension("expand", "expands"),
}


@dataclass(frozen=True)
class Phase:
    """A phase: the dimension it unlocks and how far (``all`` or ``top2``)."""

    name: str
    dimension: str | None  # None = the full net
    mode: str = "all"
    reorder_channels: bool = False


PHASES: tuple[Phase, ...] = (
    Phase("full", None),
    Phase("kernel", "kernel"),
    Phase("level1", "level", "top2"),  # OFAv2: blocks run 2 or 3 branches
    Phase("level2", "level"),  # OFAv2: 1, 2 or 3 branches
    # OFAv2 net_depth phases 1-4 (OFA_mbv3_extended/train/utils.py:59-105): active exits
    # {4,5}, {3..5}, {2..5}, {1..5}
    Phase("exit1", "exit", "top2"),
    Phase("exit2", "exit", "top3"),
    Phase("exit3", "exit", "top4"),
    Phase("exit4", "exit"),
    Phase("depth1", "depth", "top2"),  # OFA: depth {3, 4}
    Phase("depth2", "depth"),  # OFA: depth {2, 3, 4}
    Phase("expand1", "expand", "top2", reorder_channels=True),  # OFA: expand {4, 6}
    Phase("expand2", "expand", reorder_channels=True),  # OFA: expand {3, 4, 6}
)
PHASE_NAMES: tuple[str, ...] = tuple(p.name for p in PHASES)


def get_phase(name: str) -> Phase:
    for phase in PHASES:
        if phase.name == name:
            return phase
    raise Natv2Error(f"phase {name!r}: expected one of {', '.join(PHASE_NAMES)}")


def phase_applies(phase: Phase, space) -> bool:
    """A phase runs when the space has the dimension it unlocks (the full net always runs)."""
    return phase.dimension is None or DIMENSIONS[phase.dimension].applies(space)


def unlocked(phase: Phase) -> dict[str, str]:
    """Dimension -> mode after ``phase``: its own, plus everything unlocked by earlier phases."""
    modes: dict[str, str] = {}
    for p in PHASES:
        if p.dimension is not None:
            modes[p.dimension] = p.mode
        if p.name == phase.name:
            return modes
    raise Natv2Error(f"phase {phase.name!r}: not in the phase table")


def phase_modes(phase: Phase, space) -> dict[str, str]:
    """Mode of every dimension the space has during ``phase`` (``max`` = locked at the largest)."""
    free = unlocked(phase)
    return {name: free.get(name, "max") for name, dim in DIMENSIONS.items() if dim.applies(space)}


def every_width(sampler: Callable[[np.random.Generator], np.ndarray], space) -> Callable[[np.random.Generator], np.ndarray]:
    """``sampler`` with the width gene cycling through ``space.widths`` draw after draw.

    With ``subnets_per_step`` times ``len(widths)`` draws per batch, every width's supernet trains
    its own ``subnets_per_step`` subnets on every batch, as OFAv2 trains each width in its own run
    (natv2.nets.multiwidth); a one-width space gets ``sampler`` itself.
    """
    n = len(space.widths)
    if n == 1:
        return sampler
    draws = iter(range(1 << 62))

    def sample(rng: np.random.Generator) -> np.ndarray:
        g = np.array(sampler(rng))
        g[1] = next(draws) % n
        return g

    return sample


def phase_sampler(space, phase: Phase) -> Callable[[np.random.Generator], np.ndarray]:
    """``sample(rng) -> genome`` of the full space, with only ``phase``'s dimensions elastic.

    The input resolution stays elastic in every phase, as in OFA.
    """
    modes = phase_modes(phase, space)
    overrides: dict[str, Any] = {}
    for name, mode in modes.items():
        overrides.update(DIMENSIONS[name].restrict(space, mode))
    sub = dataclasses.replace(space, **overrides)

    def sample(rng: np.random.Generator) -> np.ndarray:
        arch = sub.decode(sub.sample(1, rng, policy="balanced")[0])
        for name, mode in modes.items():
            arch = DIMENSIONS[name].fix(arch, space, mode, rng)
        return space.encode(arch)

    return sample


# --------------------------------------------------------------------------------------------
# running a phase


def largest_teacher(supernet, data, *, bn_images: int, seed: int, device, exit_weights=None, batch_size: int = 200):
    """The largest subnet, extracted and BN recalibrated on ``bn_images`` training images.

    For early-exit supernets (``space.n_exits > 0``) the teacher is the multi-exit static net
    (``supernet.extract(genome, all_exits=True)``) wrapped so its logits are the weighted
    ensemble of its exits (OFAv2).
    """
    from natv2.distill import ExitEnsembleTeacher
    from natv2.evaluate import recalibrate_bn
    from natv2.rng import torch_stream

    space = supernet.space
    genome = space.largest()
    resolution = max(space.resolutions)
    if getattr(space, "n_exits", 0) > 0:
        net = supernet.extract(genome, all_exits=True)
    else:
        net = supernet.extract(genome)
    gen = torch_stream(seed, "teacher-bn")
    images = data.train.subset(min(bn_images, len(data.train)), gen)
    net = net.to(device)
    recalibrate_bn(net, images, resolution=resolution, mean=data.mean, std=data.std, batch_size=batch_size, device=device)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    if getattr(space, "n_exits", 0) > 0:
        return ExitEnsembleTeacher(net, exit_weights).eval()
    return net


def joint_exits(phase: Phase, space) -> bool:
    """Whether ``phase`` trains every exit at once: the full phase of an early-exit net.

    OFAv2 trains the full net with all exits (``run_ofa_nd_new.py:167-168`` ->
    ``early_exit_run_manager.py:311-324``); its elastic phases, the kernel phase included,
    train the sampled subnet's single exit (``new_progressive_shrinking.py:407-408``; the kernel
    phase's ``net_depth_list`` is ``"5"``, ``train/utils.py:26``).
    """
    return phase.dimension is None and getattr(space, "n_exits", 0) > 0


def joint_exit_loss(space, table=None, label_smoothing: float = 0.0) -> Callable:
    """``loss(outputs, y) = sum_i w_i * CE_i`` over exits 1..n (natv2.exits weights)."""
    from functools import partial

    from natv2.exits import exit_loss, exit_weights

    return partial(exit_loss, weights=exit_weights(range(1, space.n_exits + 1), table), label_smoothing=label_smoothing)


def run_phase(
    supernet,
    phase_name: str,
    data,
    cfg,
    *,
    device,
    seed: int,
    resume: Path | None = None,
    pad: int | None = None,
    flip: bool | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``supernet`` in place through one phase; return a summary for the checkpoint meta.

    ``data`` is a DataBundle; ``cfg`` the ``supernet_train`` settings; ``pad``/``flip`` the
    augmentation (None: the dataset's, ``data.pad`` / ``data.flip`` from split.json). A phase that does not
    apply to the variant, or has 0 epochs, leaves the weights unchanged (``skipped`` true).
    """
    from natv2.train import TrainConfig, TrainRun, train

    phase = get_phase(phase_name)
    phase_cfg = getattr(cfg.phases, phase.name)
    space = supernet.space
    summary: dict[str, Any] = {"phase": phase.name, "skipped": False}
    if not phase_applies(phase, space) or phase_cfg.epochs == 0:
        why = "0 epochs" if phase_cfg.epochs == 0 else f"the variant has no elastic {phase.dimension}"
        log.info("phase %s skipped: %s", phase.name, why)
        return skipped_summary(phase.name, why)

    teacher = None
    if phase.name != "full" and cfg.kd_weight > 0:
        teacher = largest_teacher(supernet, data, bn_images=cfg.teacher_bn_images, seed=seed, device=device,
                                  exit_weights=cfg.exit_weights)
    if phase.reorder_channels:
        supernet.reorder_channels()
    log.info("phase %s: elastic %s", phase.name, phase_modes(phase, space))
    tcfg = TrainConfig.from_sections(cfg, phase_cfg, kd=teacher is not None)
    joint = joint_exits(phase, space)
    loss_fn = joint_exit_loss(space, cfg.exit_weights, tcfg.label_smoothing) if joint else None
    supernet.joint_exits = joint
    try:
        history = train(
            supernet,
            data.train,
            tcfg,
            TrainRun.for_data(
                data,
                subnet_sampler=every_width(phase_sampler(space, phase), space),
                subnets_per_step=phase_cfg.subnets_per_step * len(space.widths),  # per width (natv2.nets.multiwidth)
                teacher=teacher,
                loss_fn=loss_fn,
                resume=resume,
                device=device,
                seed=seed,
                pad=pad,
                flip=flip,
                progress=progress,
            ),
        )
    finally:
        supernet.joint_exits = False
    supernet.set_active(space.largest())
    return {**summary, "modes": phase_modes(phase, space), "joint_exits": joint, "history": history.untimed()}


def phases_for(space) -> list[str]:
    """Names of the phases that apply to ``space``, in order."""
    return [p.name for p in PHASES if phase_applies(p, space)]


def trained_phases(space, phases_cfg) -> list[str]:
    """The phases of ``space`` that get a checkpoint (a job of their own): :func:`phases_for` less
    those with 0 epochs, which would only copy their input. The first phase always stays (it makes
    the supernet: ``full``, a new one) and so does the last (whose checkpoint is the source). The
    next phase kept records the skipped ones in its checkpoint's meta (:func:`skipped_before`), so
    each checkpoint holds the weights and meta a chain of copying jobs would have written (but for
    the measured seconds of its epochs)."""
    names = phases_for(space)
    return [n for k, n in enumerate(names) if k in (0, len(names) - 1) or getattr(phases_cfg, n).epochs > 0]


def skipped_summary(phase_name: str, reason: str) -> dict[str, Any]:
    """The checkpoint meta entry of a phase that left the weights unchanged."""
    return {"phase": phase_name, "skipped": True, "reason": reason}


def skipped_before(phase_name: str, space, phases_cfg, recorded: set[str]) -> list[dict[str, Any]]:
    """Meta entries for the phases before ``phase_name`` that :func:`trained_phases` gave no job of
    their own (0 epochs) and ``recorded`` lacks."""
    names, kept = phases_for(space), set(trained_phases(space, phases_cfg))
    earlier = names[: names.index(phase_name)] if phase_name in names else []
    return [skipped_summary(n, "0 epochs") for n in earlier if n not in kept and n not in recorded]


def describe(space) -> Mapping[str, dict[str, str]]:
    """Phase -> dimension modes, for logs and docs."""
    return {p.name: phase_modes(p, space) for p in PHASES if phase_applies(p, space)}
