"""The source supernet's checkpoints: trained phases of progressive shrinking, or the official weights.

``natv2 supernet`` calls one of these: :func:`train_phase` (one phase, ``--phase``),
:func:`train_phases` (every phase that applies to the variant, in order, then source.pt) or
:func:`make_official` (the published OFA weights with a new head). The training itself is
natv2.shrinking's; this module handles the checkpoints around it (new or loaded supernet, meta,
resume state).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from natv2.errors import Natv2Error
from natv2.io import atomic_path, check_writable, read_json

log = logging.getLogger("natv2.supernet")


def dataset_key(data_json: str | Path) -> str:
    """The dataset key a split.json was made for."""
    return str(read_json(data_json)["dataset"])


def train_phase(settings, data_json: str | Path, phase: str, init: str | Path | None, out: str | Path,
                state: str | Path, *, progress: bool = True) -> None:
    """Train one phase from ``init`` (None = a new supernet for the ``full`` phase) -> ``out``.

    ``state``: the phase's resume folder (natv2.resume), fingerprinted with the data, ``init``
    and the settings; removed once ``out`` is written.
    """
    from natv2.nets import build_supernet
    from natv2.nets.checkpoint import load_supernet, save_supernet
    from natv2.resume import ResumeFolder, fingerprint, split_files
    from natv2.shrinking import run_phase, skipped_before
    from natv2.splits import load_data

    check_writable(out)  # before the training, not after it
    device = settings.torch_device()
    data = load_data(data_json, device=None)
    supernet_cfg = settings.supernet_for(dataset_key(data_json))
    if init is None:
        if phase != "full":
            raise Natv2Error(f"phase {phase}: needs --init (only the full phase starts from a new supernet)")
        import torch

        from natv2.rng import stream_seed

        torch.manual_seed(stream_seed(settings.seed, "supernet-init"))  # weight init of the new supernet (nn.Module init uses the global RNG)
        net = build_supernet(supernet_cfg, data.n_classes)
        meta = {"phases": []}
    else:
        net, meta = load_supernet(init)
        meta = dict(meta or {})
        if getattr(net, "n_classes", data.n_classes) != data.n_classes:
            raise Natv2Error(
                f"{init}: supernet predicts {net.n_classes} classes, the dataset {data_json} has {data.n_classes}"
            )
    # the state belongs to these inputs: a rerun after an upstream change starts over
    resume = ResumeFolder(state, fingerprint(
        {**split_files(data_json), **({"init": init} if init is not None else {})},
        {"seed": settings.seed, "phase": phase, "supernet": supernet_cfg,
         "supernet_train": settings.supernet_train, "data": settings.data},
    ))
    summary = run_phase(net, phase, data, settings.supernet_train, device=device, seed=settings.seed,
                        resume=resume.path("train.pt"), pad=data.pad, flip=data.flip, progress=progress)
    done = [p for p in meta.get("phases", []) if p.get("phase") != phase]
    # the 0-epoch phases since ``init`` had no job (natv2.shrinking.trained_phases): recorded here
    done += skipped_before(phase, net.space, settings.supernet_train.phases, {p.get("phase") for p in done})
    done.append(summary)
    meta.update({"phase": phase, "phases": done, "classes": list(data.classes), "source": "train"})
    save_supernet(out, net.cpu(), meta)
    resume.remove()  # the phase's output is whole: its resume state is no longer needed
    log.info("phase %s -> %s", phase, out)


def train_phases(settings, data_json: str | Path, out: str | Path, *, work_dir: str | Path, state_dir: str | Path,
                 progress: bool = True) -> None:
    """Every phase that applies to the variant, in order, each -> ``work_dir/<phase>.pt``; the last -> ``out``.

    A phase whose checkpoint exists is skipped (a re-run resumes after the finished phases), and so
    is a middle phase of 0 epochs without one (as in the workflow: natv2.shrinking.trained_phases);
    ``state_dir`` holds each running phase's resume folder.
    """
    from natv2.shrinking import phases_for, trained_phases
    from natv2.space import SearchSpace

    work, state_dir = Path(work_dir), Path(state_dir)
    previous = None
    # only the variant's phases: the others would write undeclared files (and, in a target's job
    # reading the source's phases, train on the target's classes)
    space = SearchSpace.from_config(settings.supernet_for(dataset_key(data_json)))
    kept = set(trained_phases(space, settings.supernet_train.phases))
    for name in phases_for(space):
        phase_out = work / f"{name}.pt"
        if name not in kept and not phase_out.is_file():
            continue  # 0 epochs: no checkpoint of its own, the next phase records it
        if not phase_out.is_file():
            train_phase(settings, data_json, name, previous, phase_out, state_dir / f"{phase_out.name}.{name}",
                        progress=progress)
        previous = phase_out
    _copy_checkpoint(previous, out)


def _copy_checkpoint(src: Path, dst: str | Path) -> None:
    """``src`` copied to ``dst`` whole or not at all (a killed copy leaves no partial source.pt)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def make_official(settings, data_json: str | Path, out: str | Path) -> None:
    """The published OFA weights with a new head for the dataset's classes -> ``out``."""
    from natv2.nets import official
    from natv2.nets.checkpoint import save_supernet
    from natv2.rng import torch_stream
    from natv2.splits import load_data

    data = load_data(data_json, device=None)
    cfg = settings.supernet_for(dataset_key(data_json))
    if cfg.variant != "ofa_mbv3":
        raise Natv2Error(f"supernet_train.source official: published weights exist for variant ofa_mbv3 only, not {cfg.variant!r}")
    net = official.official_supernet(cfg, data.n_classes, cache_dir=cfg.weights_dir, mirrors=list(cfg.mirrors),
                                     download=cfg.download, generator=torch_stream(settings.seed, "head"))
    # classes None: the head is new (random), so the warm-up trains it as a new head
    save_supernet(out, net, {"source": "official", "classes": None, "phases": []})
