"""``natv2 supernet``: produce the source supernet (official OFA weights, or OFAv2 training).

    natv2 supernet --config C --data results/ds/data/split.json --out results/ds/supernet/source.pt
    natv2 supernet --config C --data SPLIT --phase kernel --init full.pt --out kernel.pt

Without ``--phase`` the step makes source.pt in one go: ``supernet_train.source: official``
loads the published OFA weights (new head for the dataset's classes); ``train`` runs the
phases of extended progressive shrinking that apply to the variant, in order, keeping each phase's checkpoint in
``--work-dir`` (default: ``<out dir>/phases``) so a re-run skips finished phases. With
``--phase NAME`` it runs that one phase from ``--init`` (required after ``full``), so a
workflow can have one rule per phase. ``--data`` is the split.json of the source dataset
(``supernet_train.dataset``; null = the target dataset). Resume state of an interrupted phase
lives in ``--state-dir`` (default ``<out dir>/.resume``), never under a declared output.
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from natv2.config import add_config_argument

    p = sub.add_parser("supernet", help="make source.pt: official OFA weights or OFAv2 progressive shrinking")
    add_config_argument(p)
    p.add_argument("--data", required=True, metavar="JSON", help="split.json of the source dataset")
    p.add_argument("--out", required=True, metavar="PT", help="the supernet checkpoint to write")
    p.add_argument("--phase", metavar="NAME", help="run only this phase (full, kernel, level1, level2, exit, depth1, depth2, expand1, expand2)")
    p.add_argument("--init", metavar="PT", help="checkpoint the phase starts from (the previous phase's output)")
    p.add_argument("--work-dir", metavar="DIR", help="where all-phase runs keep each phase's checkpoint")
    p.add_argument("--state-dir", metavar="DIR", help="resume state of interrupted phases (default: <out dir>/.resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from natv2.config import settings_from_args
    from natv2.errors import Natv2Error
    from natv2.io import check_writable
    from natv2.shrinking import PHASE_NAMES, get_phase, phases_for
    from natv2.space import SearchSpace

    settings = settings_from_args(args)
    cfg = settings.supernet_train
    out = Path(args.out)
    check_writable(out)
    state_dir = Path(args.state_dir) if args.state_dir else out.parent / ".resume"
    if args.phase is not None:
        get_phase(args.phase)  # validates the name
        if args.phase != PHASE_NAMES[0] and not args.init:
            raise Natv2Error(f"--phase {args.phase}: --init PREV.pt (the previous phase's checkpoint) is required")
        run_one_phase(settings, args.data, args.phase, args.init, out, state_dir / f"{out.name}.{args.phase}",
                      progress=not args.no_progress)
        return 0
    if args.init:
        raise Natv2Error("--init: only used with --phase")
    if cfg.source == "official":
        make_official(settings, args.data, out)
        return 0
    work = Path(args.work_dir) if args.work_dir else out.parent / "phases"
    previous = None
    # only the variant's phases: the others would write undeclared files (and, in a target's job
    # reading the source's phases, train on the target's classes)
    for name in phases_for(SearchSpace.from_config(settings.supernet_for(dataset_key(args.data)))):
        phase_out = work / f"{name}.pt"
        if not phase_out.is_file():
            run_one_phase(settings, args.data, name, previous, phase_out, state_dir / f"{phase_out.name}.{name}",
                          progress=not args.no_progress)
        previous = phase_out
    _copy_checkpoint(previous, out)
    return 0


def _copy_checkpoint(src, dst) -> None:
    import shutil

    from natv2.io import atomic_path

    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def run_one_phase(settings, data_json, phase: str, init, out, state, *, progress: bool = True) -> None:
    """Train one phase from ``init`` (None = a new supernet for the ``full`` phase) -> ``out``.

    ``state``: the phase's resume folder (natv2.resume), fingerprinted with the data, ``init``
    and the settings; removed once ``out`` is written.
    """
    import logging

    from natv2.errors import Natv2Error
    from natv2.io import check_writable
    from natv2.nets import build_supernet
    from natv2.nets.checkpoint import load_supernet, save_supernet
    from natv2.resume import ResumeFolder, fingerprint, split_files
    from natv2.shrinking import run_phase
    from natv2.splits import load_data

    log = logging.getLogger("natv2.supernet")
    check_writable(out)  # before the training, not after it
    device = settings.torch_device()
    data = load_data(data_json, device=None)
    if init is None:
        if phase != "full":
            raise Natv2Error(f"phase {phase}: needs --init (only the full phase starts from a new supernet)")
        import torch

        from natv2.rng import stream_seed

        torch.manual_seed(stream_seed(settings.seed, "supernet-init"))  # weight init of the new supernet (nn.Module init uses the global RNG)
        net = build_supernet(settings.supernet_for(dataset_key(data_json)), data.n_classes)
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
        {"seed": settings.seed, "phase": phase, "supernet": settings.supernet_for(dataset_key(data_json)),
         "supernet_train": settings.supernet_train, "data": settings.data},
    ))
    summary = run_phase(net, phase, data, settings.supernet_train, device=device, seed=settings.seed,
                        resume=resume.path("train.pt"), pad=data.pad, flip=data.flip, progress=progress)
    done = [p for p in meta.get("phases", []) if p.get("phase") != phase] + [summary]
    meta.update({"phase": phase, "phases": done, "classes": list(data.classes), "source": "train"})
    save_supernet(out, net.cpu(), meta)
    resume.remove()  # the phase's output is whole: its resume state is no longer needed
    log.info("phase %s -> %s", phase, out)


def dataset_key(data_json) -> str:
    """The dataset key a split.json was made for."""
    from natv2.io import read_json

    return str(read_json(data_json)["dataset"])


def make_official(settings, data_json, out) -> None:
    """The published OFA weights with a new head for the dataset's classes -> ``out``."""
    from natv2.errors import Natv2Error
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
