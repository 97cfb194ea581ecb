"""natv2: Neural Architecture Transfer 2 as a reproducible workflow.

Run a whole search with ``snakemake --cores 2 results/digits/pareto.csv``; every step is also a
``natv2 <step>`` command (see ``natv2 --help``).
"""
from __future__ import annotations

__version__ = "0.1.0"


def load_network(path):  # pragma: no cover - thin re-export, resolved lazily to keep import light
    """Load an exported network directory or file as an eval-mode ``nn.Module``."""
    from natv2.export import load_network as _load

    return _load(path)
