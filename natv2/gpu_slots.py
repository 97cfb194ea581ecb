"""One GPU per job on a machine with several: a lock file per device, claimed for the process's life.

Snakemake counts GPU jobs (`--resources gpu=N` in profiles/multigpu, each GPU rule asks for
`gpu: 1`) but hands out no device ids, so every job would use cuda:0. A job that sees more than
one GPU claims the first free slot ``k`` by an exclusive, non-blocking ``flock`` on
``.snakemake/natv2/gpu-slot-<k>.lock`` (relative to the working directory, where Snakemake runs
its jobs) and uses ``cuda:<k>``. The kernel drops the lock when the process exits, however it
ends (a crash or SIGKILL included), so no lock is ever stale. Jobs that see one GPU (a scheduler
such as SLURM already set ``CUDA_VISIBLE_DEVICES``) or run under torchrun never get here.
"""
from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import IO

LOCK_DIR = Path(".snakemake") / "natv2"

log = logging.getLogger(__name__)

# lock folder (resolved) -> (slot, open lock file); the open file is what holds the lock
_held: dict[str, tuple[int, IO]] = {}


def claim_gpu_slot(n_devices: int, lock_dir: Path | str = LOCK_DIR) -> int:
    """The index of a GPU that no other process using ``lock_dir`` holds, kept until this process exits.

    Repeated calls return the same slot. When every slot is taken (more concurrent jobs than
    GPUs: ``--resources gpu`` above the device count) the job shares device ``pid % n_devices``
    and says so in the log rather than waiting.
    """
    if n_devices < 1:
        raise ValueError(f"n_devices: expected at least 1, got {n_devices}")
    lock_dir = Path(lock_dir)
    key = str(lock_dir.resolve())
    if key in _held:
        return _held[key][0]
    lock_dir.mkdir(parents=True, exist_ok=True)
    for slot in range(n_devices):
        handle = open(lock_dir / f"gpu-slot-{slot}.lock", "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _held[key] = (slot, handle)
        log.info("GPU slot %d of %d claimed (%s)", slot, n_devices, lock_dir / f"gpu-slot-{slot}.lock")
        return slot
    slot = os.getpid() % n_devices
    log.warning("all %d GPU slots in %s are held by other jobs: sharing cuda:%d "
                "(set --resources gpu to at most the number of GPUs)", n_devices, lock_dir, slot)
    return slot


def release_gpu_slot(lock_dir: Path | str = LOCK_DIR) -> None:
    """Give back this process's slot in ``lock_dir`` (process exit does the same)."""
    held = _held.pop(str(Path(lock_dir).resolve()), None)
    if held is not None:
        held[1].close()
