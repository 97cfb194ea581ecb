"""natv2.gpu_slots and Settings.torch_device: concurrent jobs on a multi-GPU machine get different GPUs."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from natv2 import gpu_slots
from natv2.config import load_settings

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def two_gpus(monkeypatch):
    """Pretend two CUDA devices are visible (set_device is a no-op: there is no real device)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def test_a_job_takes_the_gpu_another_job_does_not_hold(tmp_path, monkeypatch, two_gpus):
    monkeypatch.chdir(tmp_path)
    lock_dir = tmp_path / ".snakemake" / "natv2"
    lock_dir.mkdir(parents=True)
    with open(lock_dir / "gpu-slot-0.lock", "a") as other_job:  # another job holds cuda:0
        fcntl.flock(other_job, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            settings = load_settings(overrides={"device": "cuda"})
            assert settings.torch_device() == torch.device("cuda", 1)
            assert settings.torch_device() == torch.device("cuda", 1)  # the same slot on every call
        finally:
            gpu_slots.release_gpu_slot()


@pytest.mark.parametrize("device, expected", [("cuda:0", torch.device("cuda:0")), ("cpu", torch.device("cpu"))])
def test_an_explicit_device_is_not_reassigned(tmp_path, monkeypatch, two_gpus, device, expected):
    monkeypatch.chdir(tmp_path)
    assert load_settings(overrides={"device": device}).torch_device() == expected
    assert not (tmp_path / ".snakemake").exists()


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_torchrun_ranks_are_left_to_ddp(tmp_path, monkeypatch, two_gpus, device):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert load_settings(overrides={"device": device}).torch_device() == torch.device("cuda")
    assert not (tmp_path / ".snakemake").exists()


# One job: mock two GPUs, pick the device, report it, hold it until the test says "release".
_JOB = """
import sys, time, torch
from pathlib import Path
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 2
torch.cuda.set_device = lambda device: None
from natv2.config import load_settings
print(load_settings(overrides={"device": "auto"}).torch_device(), flush=True)
deadline = time.monotonic() + 60
while not Path("release").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
"""


def _start_job(cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("WORLD_SIZE", None)
    return subprocess.Popen([sys.executable, "-c", _JOB], cwd=cwd, env=env, stdout=subprocess.PIPE, text=True)


def test_two_concurrent_jobs_get_different_gpus_and_a_killed_job_frees_its_gpu(tmp_path):
    jobs = [_start_job(tmp_path), _start_job(tmp_path)]
    try:
        devices = [job.stdout.readline().strip() for job in jobs]
        assert sorted(devices) == ["cuda:0", "cuda:1"]
        jobs[0].kill()  # the kernel drops a killed job's lock with it
        jobs[0].wait(timeout=30)
        jobs.append(_start_job(tmp_path))
        assert jobs[2].stdout.readline().strip() == devices[0]  # the freed GPU, not the one still held
    finally:
        (tmp_path / "release").touch()
        for job in jobs:
            job.wait(timeout=60)
