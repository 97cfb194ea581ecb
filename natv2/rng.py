"""Named random streams: every seeded draw of a run comes from here.

A stream is ``numpy.random.SeedSequence([seed, code(name), *keys])``: the run's seed, the
stream's name (hashed, so adding a name never shifts another stream) and integer keys such as
the iteration or the epoch. Streams of different names or keys are independent; the same
``(seed, name, keys)`` always gives the same numbers, whichever step or process asks::

    rng = stream(settings.seed, "search", iteration)          # numpy Generator
    gen = torch_stream(settings.seed, "bn-images")             # CPU torch.Generator
    torch.manual_seed(stream_seed(settings.seed, "supernet-init"))

Every name is listed in :data:`STREAMS` with what it draws; an unknown name is an error, so a
typo cannot silently alias another stream.
"""
from __future__ import annotations

import hashlib

import numpy as np

#: name -> what the stream draws (keys in brackets)
STREAMS: dict[str, str] = {
    "split": "train / val / test split of a dataset (natv2.splits.prepare_split)",
    "holdout": "the fine-tune's selection part of val (DataBundle.holdout)",
    "supernet-init": "weights of a new supernet (nn.Module init draws from torch's global RNG)",
    "head": "a new classification head (official weights, the warm-up)",
    "teacher-bn": "BN recalibration images of the largest-subnet teacher",
    "bn-images": "BN recalibration images of evaluated and fine-tuned subnets",
    "init": "initial genomes of iteration 0",
    "init-select": "the initial archive chosen from the evaluated pool",
    "search": "surrogate fit, NSGA search and candidate selection [iteration]",
    "update": "archive update [iteration]",
    "adapt": "the adaptation's training seed [iteration]",
    "adapt-distribution": "tie breaks of the adaptation's top rows [derived adapt seed]",
    "train-batches": "shuffle, crop and flip of one training epoch [epoch]",
    "train-subnets": "subnets and resolutions sampled in one training epoch [epoch]",
    "train-global": "torch's global RNG during one training epoch: dropout [epoch]",
    "ensembles": "the ensemble search",
    "latency": "the input of a latency measurement",
}


def _code(name: str) -> int:
    if name not in STREAMS:
        raise ValueError(f"random stream {name!r}: not one of natv2.rng.STREAMS ({', '.join(STREAMS)})")
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def seed_sequence(seed: int, name: str, *keys: int) -> np.random.SeedSequence:
    """The SeedSequence of stream ``name`` for ``seed`` and ``keys`` (non-negative integers)."""
    return np.random.SeedSequence([int(seed), _code(name), *(int(k) for k in keys)])


def stream(seed: int, name: str, *keys: int) -> np.random.Generator:
    """A numpy Generator of stream ``name``."""
    return np.random.default_rng(seed_sequence(seed, name, *keys))


def stream_seed(seed: int, name: str, *keys: int) -> int:
    """A 63-bit integer seed of stream ``name`` (for APIs that take an int, e.g. ``torch.manual_seed``)."""
    return int(seed_sequence(seed, name, *keys).generate_state(1, dtype=np.uint64)[0] >> 1)


def draw_seed(rng: np.random.Generator) -> int:
    """An int seed in [0, 2**31 - 1) drawn from ``rng``, for APIs that take one (pymoo, LightGBM, scikit-learn)."""
    return int(rng.integers(0, 2**31 - 1))


def torch_stream(seed: int, name: str, *keys: int):
    """A CPU ``torch.Generator`` of stream ``name``."""
    import torch

    return torch.Generator().manual_seed(stream_seed(seed, name, *keys))
