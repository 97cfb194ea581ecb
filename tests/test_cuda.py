"""The GPU paths (run by bench/gpu_check.sh on a lent GPU; skipped where CUDA is absent):
training with AMP and channels_last gives finite, falling losses and the same subnet accuracy
path as the CPU; evaluation on CUDA agrees with the CPU; latency is measured with CUDA syncs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _net_and_data(resolution: int = 32, n: int = 256):
    from natv2.config import load_settings
    from natv2.nets import build_supernet
    from natv2.splits import DataBundle, ImageSet

    settings = load_settings(overrides={"supernet": {"variant": "EE_D", "n_exits": 5, "resolutions": [resolution],
                                                     "stem_stride": 1}})
    torch.manual_seed(0)
    net = build_supernet(settings.supernet, 4)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (n,), generator=g)
    # learnable: the class sets the mean brightness
    images = (labels.view(-1, 1, 1, 1) * 60 + torch.randint(0, 20, (n, 3, resolution, resolution), generator=g)).to(torch.uint8)
    part = ImageSet(images, labels)
    data = DataBundle(classes=list("abcd"), image_size=resolution, mean=(0.4,) * 3, std=(0.3,) * 3,
                      train=part, val=part, test=part)
    return settings, net, data


def test_amp_channels_last_training_on_cuda_lowers_the_loss():
    from natv2.train import TrainConfig, TrainRun, train

    _, net, data = _net_and_data()
    genome = net.space.largest()
    cfg = TrainConfig(epochs=4, lr=0.05, batch_size=64, amp=True, channels_last=True, label_smoothing=0.0)
    history = train(net, data.train, cfg, TrainRun(subnet_sampler=lambda rng: genome, device="cuda", seed=0,
                                                   progress=False, mean=data.mean, std=data.std))
    losses = history.losses
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert next(net.parameters()).device.type == "cuda"


def test_evaluation_on_cuda_matches_cpu():
    from natv2.evaluate import evaluate_genomes

    settings, net, data = _net_and_data()
    genomes = net.space.sample(3, np.random.default_rng(0), policy="natv2")
    cfg = settings.evaluation
    cpu = evaluate_genomes(net, genomes, data, cfg, split="val", device="cpu", progress=False, seed=0)
    gpu = evaluate_genomes(net, genomes, data, cfg, split="val", device="cuda", progress=False, seed=0)
    assert list(cpu["params"]) == list(gpu["params"])
    assert np.allclose(cpu["top1"], gpu["top1"], atol=1.0)  # TF32/cuDNN vs CPU: a few images at most


def test_latency_on_cuda_is_positive_and_finite():
    from natv2.costs import measure_latency

    _, net, _ = _net_and_data()
    net.set_active(net.space.smallest())
    ms = measure_latency(net.cuda(), 32)
    assert np.isfinite(ms) and ms > 0
