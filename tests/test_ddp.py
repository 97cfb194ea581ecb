"""DistributedDataParallel: the same ``train`` call under torchrun (2 processes, gloo, CPU).

This file is also the worker: ``torchrun --nproc-per-node 2 tests/test_ddp.py OUT`` trains the
toy supernet below and each rank saves its weights and losses to ``OUT_<rank>.pt``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class TwoHeads(nn.Module):
    """A toy supernet without BN (so one process and two match): the genome picks one head,
    leaving the other head's weights unused in that sub-step (as in a real supernet)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.heads = nn.ModuleList([nn.Linear(8, 4), nn.Linear(8, 4)])
        self.active = 0

    def set_active(self, genome):
        self.active = int(genome[0])

    def forward(self, x):
        return self.heads[self.active](F.relu(self.conv(x)).mean(dim=(2, 3)))


def run_training(progress: bool = False):
    from natv2.splits import ImageSet
    from natv2.train import TrainConfig, TrainRun, train

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (256,), generator=g)
    x = (torch.rand(256, 3, 16, 16, generator=g) * 80).to(torch.uint8)
    for c in range(4):
        x[y == c, c % 3, : 8 if c < 2 else 16] += 150
    model = TwoHeads()
    cfg = TrainConfig(epochs=2, lr=0.2, batch_size=64, label_smoothing=0.0)
    history = train(model, ImageSet(images=x, labels=y), cfg,
                    TrainRun(resolution=16, seed=3, progress=progress,
                             subnet_sampler=lambda rng: [int(rng.integers(2))], subnets_per_step=2))
    return model, history


def test_two_gloo_processes_match_one_process(tmp_path):
    single, h_single = run_training()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(Path(__file__).resolve()), str(tmp_path / "rank")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank_{r}.pt", weights_only=True) for r in (0, 1)]
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key  # DDP keeps the replicas identical
        # each rank saw half of every global batch; averaged gradients = the global batch's
        # (float32 sums in another order: ~1.5e-5 apart after 8 steps at lr 0.2 with natv2.rng's streams)
        assert torch.allclose(value, single.state_dict()[key], atol=5e-5), key
    losses = [(a + b) / 2 for a, b in zip(ranks[0]["losses"], ranks[1]["losses"])]
    assert losses[-1] < losses[0]
    assert abs(losses[0] - h_single.losses[0]) < 1e-4


if __name__ == "__main__":  # torchrun worker
    model, history = run_training()
    rank = int(os.environ.get("RANK", "0"))
    torch.save({"state": model.state_dict(), "losses": history.losses}, f"{sys.argv[1]}_{rank}.pt")
