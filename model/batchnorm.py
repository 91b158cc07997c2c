"""Precise batch-norm statistics ("precise BN"): recompute every BatchNorm's running mean and
variance on a fixed sample of data before the network is used in eval mode.

A freshly initialised EfficientNet-B0 with default running statistics (mean 0, var 1) shrinks
activations 40-100x per stage in eval mode and maps every input to (nearly) the same embedding
(METHODS.md, "What we measured about DECAR here"). Pure torch.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def batchnorm_layers(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recompute_batchnorm(net: nn.Module, batches: Iterable[torch.Tensor], device: str | torch.device = "cpu",
                        forward=None) -> int:
    """Reset the running statistics of every BatchNorm in `net`, then set them to the cumulative
    average over `batches` (inputs as the network gets them, e.g. (B, 1, n_mels, T)), run forward
    without gradients with the BatchNorms in train mode and everything else in eval mode (so
    stochastic depth and dropout stay off and the statistics are those of the eval-mode network).
    Momenta and the train/eval mode of every module are restored.
    `forward(net, x)` defaults to net(x); pass e.g. `lambda n, x: n.embed(x)` for a net without head.
    Deterministic for the same batches. Returns the number of examples seen."""
    layers = batchnorm_layers(net)
    if not layers:
        return 0
    modes = {m: m.training for m in net.modules()}
    momenta = [bn.momentum for bn in layers]
    seen = 0
    try:
        for bn in layers:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative moving average: equal weight for every batch
        net.eval()
        for bn in layers:
            bn.train()
        for x in batches:
            x = x.to(device)
            forward(net, x) if forward else net(x)
            seen += len(x)
    finally:
        for bn, momentum in zip(layers, momenta):
            bn.momentum = momentum
        for m, training in modes.items():
            m.train(training)
    if seen == 0:
        raise ValueError("recompute_batchnorm got no batches: the statistics would stay reset")
    return seen
