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
    from natv2.shrinking import PHASE_NAMES, get_phase
    from natv2.source_supernet import make_official, train_phase, train_phases

    settings = settings_from_args(args)
    out = Path(args.out)
    check_writable(out)
    state_dir = Path(args.state_dir) if args.state_dir else out.parent / ".resume"
    if args.phase is not None:
        get_phase(args.phase)  # validates the name
        if args.phase != PHASE_NAMES[0] and not args.init:
            raise Natv2Error(f"--phase {args.phase}: --init PREV.pt (the previous phase's checkpoint) is required")
        train_phase(settings, args.data, args.phase, args.init, out, state_dir / f"{out.name}.{args.phase}",
                    progress=not args.no_progress)
    elif args.init:
        raise Natv2Error("--init: only used with --phase")
    elif settings.supernet_train.source == "official":
        make_official(settings, args.data, out)
    else:
        train_phases(settings, args.data, out, work_dir=Path(args.work_dir) if args.work_dir else out.parent / "phases",
                     state_dir=state_dir, progress=not args.no_progress)
    return 0
