"""The paper-era optimiser of the instance methods: LARS with a linear warm-up and cosine decay.

DeLoRes-S follows Barlow Twins (Zbontar et al., 2021, section 4 and its appendix), which trains with
LARS (momentum 0.9; each weight matrix's step scaled to eta = 0.001 times its norm over its
gradient's norm; biases and normalisation parameters neither adapted nor decayed and trained at
0.0048 / 0.2 = 0.024 of the weights' rate), 10 warm-up epochs, then a cosine decay to 1/1000 of the
base rate. Written here from that description.

The schedule is a function of the *global* step (epoch x steps per epoch + step), never of the
step within an epoch (METHODS.md: the reference code's warm-up never ended), so it carries no
state and a run resumed at any epoch continues the same curve. Pure torch: no Prefect.
"""
from __future__ import annotations

import math

import torch

LARS_ETA = 0.001  # trust coefficient
LARS_MOMENTUM = 0.9
BIAS_LR_SCALE = 0.0048 / 0.2  # Barlow Twins: biases and norm parameters vs weights
COSINE_FLOOR = 0.001  # the decay ends at this fraction of the base rate


def is_weight(p: torch.Tensor) -> bool:
    """Weight matrices and kernels (adapted and decayed by LARS); biases and norm scales are 1-d."""
    return p.ndim > 1


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose step for each weight tensor is rescaled to eta * |w| / |g + wd w|
    (layer-wise adaptive rate scaling); 1-d parameters take a plain momentum step, undecayed."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = LARS_MOMENTUM,
                 eta: float = LARS_ETA):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "eta": eta})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if is_weight(p):
                    update = update.add(p, alpha=group["weight_decay"])
                    weight_norm, update_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    # an all-zero weight or gradient keeps the plain step (trust ratio 1)
                    trust = torch.where((weight_norm > 0) & (update_norm > 0),
                                        group["eta"] * weight_norm / update_norm, torch.ones_like(weight_norm))
                    update = update.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffer = state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                p.add_(buffer, alpha=-group["lr"])
        return loss


def lr_factor(step: int, total_steps: int, warmup_steps: int, floor: float = COSINE_FLOOR) -> float:
    """Fraction of the base rate at global step `step` (0-based): linear warm-up to 1 over
    `warmup_steps`, then cosine decay to `floor` at `total_steps`, and `floor` after it."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= total_steps:
        return floor
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
