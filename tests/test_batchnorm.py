"""Precise BN: a fresh EfficientNet in eval mode collapses every input; recomputed statistics fix it."""
import torch

from model.batchnorm import batchnorm_layers, recompute_batchnorm
from model.config import ModelConfig
from model.network import DecarNet


def _inputs(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    # varied inputs: different levels, slopes and noise per example
    base = torch.randn(n, 1, 64, 48, generator=g)
    scale = torch.rand(n, 1, 1, 1, generator=g) * 2 + 0.2
    offset = torch.randn(n, 1, 1, 1, generator=g)
    return base * scale + offset


def _spread(z: torch.Tensor) -> float:
    """Per-dimension std across examples, relative to the mean row norm."""
    return float(z.std(dim=0).mean() / z.norm(dim=1).mean().clamp_min(1e-30))


def test_fresh_net_collapses_and_precise_bn_restores_spread():
    torch.manual_seed(0)
    net = DecarNet(ModelConfig(width_mult=0.25)).eval()
    x = _inputs()
    with torch.no_grad():
        before = net.embed(x)
    assert _spread(before) < 1e-3  # every input maps to (nearly) the same embedding
    batches = list(x.split(8))
    seen = recompute_batchnorm(net, batches, forward=lambda n, b: n.embed(b))
    assert seen == len(x)
    assert not net.training and all(not m.training for m in net.modules())  # eval mode restored
    with torch.no_grad():
        after = net.embed(x)
    assert torch.unique(after, dim=0).shape[0] == len(x)
    assert _spread(after) > 1e-2


def test_same_batches_give_identical_statistics_and_momenta_are_restored():
    torch.manual_seed(1)
    net = DecarNet(ModelConfig(width_mult=0.25))
    momenta = [bn.momentum for bn in batchnorm_layers(net)]
    batches = list(_inputs(16, seed=3).split(8))
    recompute_batchnorm(net, batches, forward=lambda n, b: n.embed(b))
    first = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in batchnorm_layers(net)]
    recompute_batchnorm(net, batches, forward=lambda n, b: n.embed(b))
    for (m, v), bn in zip(first, batchnorm_layers(net)):
        assert torch.equal(m, bn.running_mean) and torch.equal(v, bn.running_var)
    assert [bn.momentum for bn in batchnorm_layers(net)] == momenta
    assert net.training  # train mode restored too
