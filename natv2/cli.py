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
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads of torch and BLAS (the workflow passes each job's cores)")
    sub = parser.add_subparsers(dest="command", metavar="STEP", required=True)
    for info in sorted(pkgutil.iter_modules(natv2.steps.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"natv2.steps.{info.name}")
        module.register(sub)
    return parser


def set_threads(n: int) -> None:
    """Limit intra-op threads, so parallel jobs do not oversubscribe the machine's cores.

    torch reads OMP_NUM_THREADS when it loads, so it is imported here only if already loaded:
    the table-only steps (collect, update, front, pareto, hypervolume) never load it, and
    importing torch is 2.5-3.7 s of every such job on a 2-core machine.
    """
    import os

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)  # read by the BLAS libraries (and torch) when they load
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads:
        set_threads(args.threads)
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
    except OSError as e:
        # a folder that cannot be written, a full disk, a file where a folder should be: the
        # path and the OS reason on one line (the traceback only with --verbose)
        logging.getLogger("natv2").debug("OS error", exc_info=True)
        where = f"{e.filename}: " if e.filename else ""
        print(f"natv2: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("natv2: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
