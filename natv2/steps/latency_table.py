"""``natv2 latency-table``: measure the search space's blocks on this device -> table.json.

    natv2 latency-table --config C --out table.json [--repeats R] [--warmup W] [--classes N]

Run it on the device the networks will be deployed on; name the file in the search's config
(``search.latency_table``) and use ``latency_lut`` as an objective or a constraint.
Timing settings are evaluation.latency_* (threads: evaluation.latency_threads, 1 by default,
recorded in the table's ``device``), the same as every measured ``latency_ms``.
The table covers the ``supernet:`` resolutions and every dataset's own ``resolutions``.
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from natv2.config import add_config_argument

    p = sub.add_parser("latency-table", help="measure every block of the search space on this device (lookup table)")
    add_config_argument(p)
    p.add_argument("--out", required=True, metavar="JSON", help="table.json to write")
    p.add_argument("--repeats", type=int, metavar="R", help="timed blocks per net (default: evaluation.latency_repeats)")
    p.add_argument("--warmup", type=int, metavar="W", help="untimed passes first (default: evaluation.latency_warmup)")
    p.add_argument("--classes", type=int, default=10, metavar="N", help="classes of the head (default 10)")
    p.set_defaults(func=run)


def table_supernet_config(settings):
    """The ``supernet:`` section with the resolutions of every dataset added."""
    import dataclasses

    resolutions = set(settings.supernet.resolutions)
    for key in settings.datasets:
        resolutions |= set(settings.supernet_for(key).resolutions)
    return dataclasses.replace(settings.supernet, resolutions=tuple(sorted(resolutions)))


def run(args: argparse.Namespace) -> int:
    import logging

    from natv2.config import settings_from_args
    from natv2.errors import Natv2Error
    from natv2.io import write_json
    from natv2.latency_table import measure_table
    from natv2.nets import build_supernet

    settings = settings_from_args(args)
    ev = settings.evaluation
    repeats = args.repeats if args.repeats is not None else ev.latency_repeats
    warmup = args.warmup if args.warmup is not None else ev.latency_warmup
    if repeats < 1 or warmup < 0 or args.classes < 1:
        raise Natv2Error(f"latency-table: expected --repeats >= 1, --warmup >= 0, --classes >= 1; got {repeats}, {warmup}, {args.classes}")
    import torch

    torch.manual_seed(settings.seed)  # module init draws from the global generator; weights do not matter for time
    supernet = build_supernet(table_supernet_config(settings), args.classes)
    table = measure_table(supernet, **{**ev.latency_kwargs, "repeats": repeats, "warmup": warmup},
                          device=settings.torch_device(), channels_last=ev.channels_last, fold=ev.fold_bn, progress=True)
    write_json(args.out, table.to_dict())
    logging.getLogger(__name__).info("latency table: %d entries -> %s (%s, %s threads)", len(table.entries), args.out,
                                     table.device.get("gpu") or table.device.get("cpu"), table.device.get("threads"))
    return 0
