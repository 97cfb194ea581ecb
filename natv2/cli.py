"""The ``natv2`` command line: one subcommand per workflow step; argument parsing only.

Each module in :mod:`natv2.steps` registers its own subcommand through ``register(subparsers)``
and sets ``func`` to a callable taking the parsed arguments. Snakemake rules call these
commands and nothing else, so every step can also be run by hand.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

import natv2
import natv2.steps
from natv2.errors import Natv2Error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="natv2", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"natv2 {natv2.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="STEP", required=True)
    for info in sorted(pkgutil.iter_modules(natv2.steps.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"natv2.steps.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        result = args.func(args)
    except Natv2Error as e:
        print(f"natv2: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("natv2: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
