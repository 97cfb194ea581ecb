"""``natv2 finetune``: NATv2 two-step fine-tune of ONE front member, tested and exported.

    natv2 finetune --data results/cifar10/data/split.json --supernet results/cifar10/search/iter3/supernet.pt \
        --front results/cifar10/front.csv --id 7 --out results/cifar10/nets/7

Writes the member's directory whole or not at all: weights.pt, config.json, model.ts (see
natv2.export) and metrics.json (test top-1 before and after fine-tuning, val top-1, params,
MACs, latency, the best epoch and the val curve). Every column but the ``search_*`` ones
describes the exported net (for early-exit members the AEP net, its genome's exit gene its
deepest kept exit); ``search_*`` are those of the single-exit net the search chose. A killed job resumes from the
folder ``../.resume/finetune/{id}`` (outside ``nets/``, which DVC's fine-tune stage owns; removed
once the member is written). One job per
member: a failing member leaves the others' directories untouched.
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from natv2.config import add_config_argument

    p = sub.add_parser("finetune", help="two-step fine-tune (NATv2) of one front member; test; export")
    add_config_argument(p)
    p.add_argument("--data", required=True, metavar="JSON", help="split.json of the dataset")
    p.add_argument("--supernet", required=True, metavar="PT", help="the supernet checkpoint the front was searched on")
    p.add_argument("--front", required=True, metavar="CSV", help="front.csv (columns id, genome)")
    p.add_argument("--id", required=True, help="id of the front member to fine-tune")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory of the member (nets/{id})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    import time
    from pathlib import Path

    from natv2.config import settings_from_args
    from natv2.finetune import finetune_member, front_member, member_state, write_member
    from natv2.io import check_writable, read_csv
    from natv2.nets.checkpoint import check_classes, load_supernet
    from natv2.splits import load_data

    started = time.perf_counter()
    settings = settings_from_args(args)
    member = front_member(read_csv(args.front), args.id, args.front)
    check_writable(args.out, directory=True)  # before the training, not after it
    data = load_data(Path(args.data))
    supernet, _meta = load_supernet(args.supernet)
    check_classes(supernet, data.n_classes, args.supernet, args.data)
    supernet = supernet.to(settings.torch_device()).eval()
    state = member_state(args.out, supernet_path=args.supernet, data_path=args.data, genome=str(member["genome"]),
                         settings=settings)
    # bars on a terminal, log lines with rates in a job's log file
    net, metrics = finetune_member(supernet, member, data, settings, state=state, progress=sys.stderr.isatty(),
                                   started=started)
    write_member(args.out, net, data, metrics)
    state.remove()  # the member is done: its resume state has served
    print(f"{args.id}: test top-1 {metrics['test_top1']:.2f} % -> {metrics['test_top1_finetuned']:.2f} % after "
          f"{metrics['step2_epochs']} epochs on train + {len(data.val) - metrics['select_images']} of "
          f"{len(data.val)} val images")
    return 0
