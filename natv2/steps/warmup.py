"""``natv2 warmup``: NAT's warm-up of the source supernet on the target dataset -> warmup.pt.

    natv2 warmup --config C --data results/ds/data/split.json \
        --supernet results/ds/supernet/source.pt --out results/ds/supernet/warmup.pt

New head for the target classes (unless the source was trained on them), the largest subnet
fine-tuned, then whole-supernet epochs with sampled subnets and KD from the largest subnet
(see natv2.warmup). Resume state lives in ``--state-dir`` (default ``<out dir>/.resume``), in a
folder ``<out name>.warmup`` fingerprinted with its inputs (natv2.resume) and removed once the
output is written.
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from natv2.config import add_config_argument

    p = sub.add_parser("warmup", help="NAT warm-up: new head, fine-tune the largest subnet, KD epochs on the supernet")
    add_config_argument(p)
    p.add_argument("--data", required=True, metavar="JSON", help="split.json of the target dataset")
    p.add_argument("--supernet", required=True, metavar="PT", help="source supernet checkpoint (source.pt)")
    p.add_argument("--out", required=True, metavar="PT", help="warmed-up supernet checkpoint (warmup.pt)")
    p.add_argument("--state-dir", metavar="DIR", help="resume state of an interrupted warm-up (default: <out dir>/.resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from natv2.config import settings_from_args
    from natv2.io import check_writable
    from natv2.nets.checkpoint import load_supernet, save_supernet
    from natv2.resume import ResumeFolder, fingerprint, split_files
    from natv2.splits import load_data
    from natv2.warmup import warmup

    settings = settings_from_args(args)
    out = Path(args.out)
    check_writable(out)  # before the training, not after it
    state_dir = (Path(args.state_dir) if args.state_dir else out.parent / ".resume") / f"{out.name}.warmup"
    data = load_data(args.data, device=None)
    net, meta = load_supernet(args.supernet)
    meta = dict(meta or {})
    # the state belongs to these inputs: a rerun after an upstream change starts over
    state = ResumeFolder(state_dir, fingerprint(
        {"supernet": args.supernet, **split_files(args.data)},
        {"seed": settings.seed, "warmup": settings.warmup, "data": settings.data},
    ))
    summary = warmup(net, data, settings.warmup, device=settings.torch_device(), seed=settings.seed,
                     source_classes=meta.get("classes"), state_dir=state.folder, pad=data.pad,
                     flip=data.flip, progress=not args.no_progress)
    meta.update({"warmup": summary, "classes": list(data.classes)})
    save_supernet(out, net.cpu(), meta)
    state.remove()  # the output is whole: resume state no longer needed
    return 0
