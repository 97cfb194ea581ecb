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

    from natv2.adapt import STATE_KEY, adapt
    from natv2.archive import read_archive
    from natv2.config import settings_from_args
    from natv2.io import check_writable
    from natv2.nets.checkpoint import check_classes, load_supernet, load_supernet_extra, save_supernet
    from natv2.resume import ResumeFolder, fingerprint, split_files
    from natv2.rng import stream_seed
    from natv2.splits import load_data

    settings = settings_from_args(args)
    out = Path(args.out)
    check_writable(out)  # before the training, not after it
    archive = read_archive(args.archive, settings.search.objectives)
    supernet, meta = load_supernet(args.supernet)
    # NAT: one optimizer and lr schedule over all iterations, carried in the checkpoints
    carried = load_supernet_extra(args.supernet, STATE_KEY)
    teacher_supernet = None
    if args.teacher and Path(args.teacher).resolve() != Path(args.supernet).resolve():
        teacher_supernet, _ = load_supernet(args.teacher)
    data = load_data(args.data)
    check_classes(supernet, data.n_classes, args.supernet, args.data)
    state_dir = Path(args.state_dir) if args.state_dir else out.parent / ".resume"
    seed = stream_seed(settings.seed, "adapt", args.iteration)
    # the state belongs to these inputs: a rerun after an upstream change starts over
    state = ResumeFolder(state_dir / f"{out.name}.adapt", fingerprint(
        {"supernet": args.supernet, "archive": args.archive, **split_files(args.data),
         **({"teacher": args.teacher} if args.teacher else {})},
        {"seed": seed, "iteration": args.iteration, "adapt": settings.adapt, "search": settings.search,
         "data": settings.data},
    ))
    summary = adapt(
        supernet, data, archive, settings.adapt, settings.search,
        device=settings.torch_device(), seed=seed,
        teacher_supernet=teacher_supernet, teacher_seed=settings.seed, carried=carried,
        state_path=state.path("train.pt"), progress=sys.stderr.isatty(),
    )
    adapt_state = summary.pop(STATE_KEY)
    meta = dict(meta)
    meta.setdefault("adaptations", []).append({"iteration": args.iteration, **summary})
    save_supernet(out, supernet.cpu(), meta, extra=None if adapt_state is None else {STATE_KEY: adapt_state})
    state.remove()  # the output is whole: its resume state has served
    return 0
