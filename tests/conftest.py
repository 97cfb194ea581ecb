"""Shared fixtures: the repository root, the CIFAR-10 folder beside it, small settings."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CIFAR10 = Path(os.environ.get("NATV2_CIFAR10", REPO.parent / "shared" / "data" / "cifar10"))


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    # Test tensors are small: one thread is faster than two fighting over CI's 2 cores (the
    # workflow tests' subprocesses get their own threads from the rules).
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def cifar10_root() -> Path:
    if not (CIFAR10 / "train").is_dir():
        pytest.skip(f"CIFAR-10 folder not found at {CIFAR10} (set NATV2_CIFAR10)")
    return CIFAR10
