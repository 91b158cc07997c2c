"""The instance methods' paper-era optimiser (model/optimisers.py): LARS against a hand computation,
the warm-up + cosine schedule by global step, and a LARS + cosine run that resumes exactly through
the trainer's own epoch (model/instance.py). Real modules, small shapes."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from model.config import InstanceConfig
from model.instance import make_optimiser, new_bank, train_instance_epoch
from model.instance_methods import build_method
from model.optimisers import BIAS_LR_SCALE, LARS, lr_factor

torch.set_num_threads(1)


def test_lars_steps_by_hand():
    """Weight: step = lr * eta * |w| / |g + wd w| * (g + wd w), with momentum; bias: plain momentum SGD,
    no decay, no adaptation."""
    w = torch.nn.Parameter(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))  # |w| = 5
    b = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    opt = LARS([{"params": [w]}, {"params": [b], "lr": 0.01, "weight_decay": 0.0}], lr=0.1, weight_decay=0.5,
               momentum=0.9, eta=0.001)
    w0 = w.detach().clone()
    w.grad = torch.tensor([[0.5, 0.0], [0.0, -2.0]])  # g + 0.5 w = [[2, 0], [0, 0]]: norm 2
    b.grad = torch.tensor([2.0, 4.0])
    opt.step()
    first = torch.tensor([[2.0, 0.0], [0.0, 0.0]]) * (0.001 * 5 / 2)
    assert torch.allclose(w, w0 - 0.1 * first)
    assert torch.allclose(b, torch.tensor([1.0 - 0.02, -1.0 - 0.04]))
    w1, b1 = w.detach().clone(), b.detach().clone()
    w.grad = torch.zeros(2, 2)  # the update is then the decay term alone, rescaled to eta |w|
    b.grad = torch.zeros(2)
    opt.step()
    decay = 0.5 * w1
    second = decay * (0.001 * torch.linalg.vector_norm(w1) / torch.linalg.vector_norm(decay))
    assert torch.allclose(w, w1 - 0.1 * (0.9 * first + second))
    assert torch.allclose(b, b1 - 0.01 * 0.9 * torch.tensor([2.0, 4.0]))


def test_lars_keeps_a_plain_step_for_zero_weights():
    w = torch.nn.Parameter(torch.zeros(2, 2))
    opt = LARS([w], lr=0.1, momentum=0.0)
    w.grad = torch.ones(2, 2)
    opt.step()
    assert torch.allclose(w, torch.full((2, 2), -0.1))


def test_warmup_then_cosine_by_hand():
    assert [lr_factor(s, 100, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 100, 4) == pytest.approx(1.0)
    assert lr_factor(52, 100, 4) == pytest.approx(0.001 + 0.999 * 0.5)  # half way through the decay
    assert lr_factor(99, 100, 4) == pytest.approx(0.001, abs=1e-3)
    assert lr_factor(100, 100, 4) == lr_factor(500, 100, 4) == 0.001
    assert lr_factor(0, 10, 0) == 1.0


def test_cosine_needs_its_length_and_a_shorter_warmup():
    cfg = InstanceConfig(method="delores-s", schedule="cosine", warmup_epochs=10)
    assert cfg.schedule_epochs is None and cfg.planned_for(100).schedule_epochs == 100
    assert cfg.planned_for(100).planned_for(200).schedule_epochs == 100  # an explicit length is kept
    assert InstanceConfig(method="delores-s").planned_for(100).schedule_epochs is None  # constant: no length
    with pytest.raises(ValidationError, match="warmup_epochs"):
        cfg.planned_for(10)
    with pytest.raises(ValidationError, match="optimiser"):
        InstanceConfig(method="delores-s", optimiser="sgd")


CLIPS, BATCH = 12, 4  # 3 steps an epoch


def small(**overrides) -> InstanceConfig:
    return InstanceConfig(method="delores-m", encoder_dim=32, projector_dim=16, queue_size=8, instance_dim=8,
                          crop_frames=16, bank_size=8, batch_size=BATCH, lr=0.05, optimiser="lars",
                          schedule="cosine", warmup_epochs=1, schedule_epochs=3, **overrides)


POOL = np.random.default_rng(0).standard_normal((CLIPS, 64, 24)).astype(np.float32)


def fresh(cfg: InstanceConfig, seed: int):
    torch.manual_seed(seed)
    method = build_method(cfg, 64)
    return method, make_optimiser(method, cfg), new_bank(cfg, 64)


def epoch(state, cfg: InstanceConfig, t: int) -> dict:
    method, optimiser, bank = state
    return train_instance_epoch(method, optimiser, bank, lambda i: POOL[i], CLIPS, cfg, 0, t, torch.device("cpu"))


def test_lars_cosine_rates_follow_the_global_step_and_resume_exactly():
    """Each epoch ends at the rate of its global step (the warm-up ends after epoch 0 instead of
    restarting each epoch: the reference code's defect), biases at 0.024 of it; epoch 1 rerun from
    epoch 0's saved state (weights, LARS momentum, bank) gives the same tensors."""
    cfg = small()
    run = fresh(cfg, 0)
    first = epoch(run, cfg, 0)
    saved = copy.deepcopy([part.state_dict() for part in run])
    second = epoch(run, cfg, 1)
    steps = 3 * 3  # schedule_epochs x steps per epoch; warm-up: one epoch = 3 steps
    assert [first["lr"], second["lr"]] == pytest.approx([0.05 * lr_factor(2, steps, 3), 0.05 * lr_factor(5, steps, 3)])
    assert first["lr"] == pytest.approx(0.05)  # end of the warm-up
    assert second["lr"] == pytest.approx(0.05 * (0.001 + 0.999 * 0.5 * (1 + math.cos(math.pi * 2 / 6))))
    weights, others = run[1].param_groups
    assert (weights["lr"], others["lr"]) == pytest.approx((second["lr"], second["lr"] * BIAS_LR_SCALE))
    assert all(p.ndim > 1 for p in weights["params"]) and all(p.ndim == 1 for p in others["params"])

    resumed = fresh(cfg, 5)
    for part, state in zip(resumed, saved):
        part.load_state_dict(state)
    assert epoch(resumed, cfg, 1)["loss"] == second["loss"]
    for (name, a), b in zip(run[0].state_dict().items(), resumed[0].state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(run[2].data, resumed[2].data)
