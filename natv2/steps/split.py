"""``natv2 split``: decode a dataset once and write its train/val/test split and tensor cache.

    natv2 split --config config/config.yaml --dataset digits --out results/digits/data

writes ``results/digits/data/split.json`` and ``results/digits/data/images.pt``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from natv2.config import add_config_argument, settings_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser("split", help="decode a dataset and write its split.json and image cache", description=__doc__.splitlines()[0])
    add_config_argument(parser)
    parser.add_argument("--dataset", required=True, metavar="KEY", help="a key of the config's datasets: section")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (split.json and images.pt go there)")
    parser.add_argument("--workers", type=int, default=0, metavar="N", help="image decoding processes (default 0 = every available core)")
    # the old name, kept for scripts: `natv2 --threads` (before the step) sets torch's threads
    parser.add_argument("--threads", dest="workers", type=int, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args) -> int:
    from natv2.io import check_writable
    from natv2.splits import SPLIT_FILE, prepare_split

    settings = settings_from_args(args)
    check_writable(args.out, directory=True)  # before reading the dataset, not after it
    check_writable(Path(args.out) / SPLIT_FILE)
    path = prepare_split(settings, args.dataset, args.out, workers=args.workers or None)
    print(path)
    return 0
