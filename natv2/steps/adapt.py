"""``natv2 adapt``: NAT's supernet adaptation to the archive's best (natv2.adapt)."""
from __future__ import annotations

import argparse

from natv2.config import add_config_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapt", help="adapt the supernet to the distribution of the archive's best subnets")
    add_config_argument(p)
    p.add_argument("--data", required=True, metavar="JSON", help="split.json of the target dataset")
    p.add_argument("--supernet", required=True, metavar="PT", help="the supernet before this iteration")
    p.add_argument("--teacher", metavar="PT",
                   help="the warmed-up supernet whose largest subnet is the fixed teacher (default: --supernet)")
    p.add_argument("--archive", required=True, metavar="CSV", help="the updated archive of this iteration")
    p.add_argument("--iteration", required=True, type=int, metavar="I")
    p.add_argument("--out", required=True, metavar="PT", help="the adapted supernet")
    p.add_argument("--state-dir", metavar="DIR", help="resume state (default: <out dir>/.resume)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from natv2.adapt import STATE_KEY, adapt_iteration, adapt_resume
    from natv2.archive import read_archive
    from natv2.config import settings_from_args
    from natv2.io import check_writable
    from natv2.nets.checkpoint import check_classes, load_supernet, load_supernet_extra, save_supernet
    from natv2.splits import load_data

    settings = settings_from_args(args)
    out = Path(args.out)
    check_writable(out)  # before the training, not after it
    archive = read_archive(args.archive, settings.search.objectives)
    supernet, meta = load_supernet(args.supernet)
    carried = load_supernet_extra(args.supernet, STATE_KEY)  # NAT: one optimizer and lr schedule over all iterations
    own_teacher = not args.teacher or Path(args.teacher).resolve() == Path(args.supernet).resolve()
    teacher_supernet = None if own_teacher else load_supernet(args.teacher)[0]
    data = load_data(args.data)
    check_classes(supernet, data.n_classes, args.supernet, args.data)
    state_dir = Path(args.state_dir) if args.state_dir else out.parent / ".resume"
    state = adapt_resume(state_dir / f"{out.name}.adapt", supernet_path=args.supernet, archive_path=args.archive,
                         data_path=args.data, teacher_path=args.teacher, iteration=args.iteration, settings=settings)
    meta, extra = adapt_iteration(supernet, meta, data, archive, settings, iteration=args.iteration, carried=carried,
                                  teacher_supernet=teacher_supernet, state_path=state.path("train.pt"),
                                  progress=sys.stderr.isatty())
    save_supernet(out, supernet.cpu(), meta, extra=extra)
    state.remove()  # the output is whole: its resume state has served
    return 0
