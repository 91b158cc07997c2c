"""DeLoRes-S, DeLoRes-M and SLICER: the shared losses against hand computations, the teacher and
queue helpers, and each method's contract with the generic trainer (finite loss, gradients only
to the student, exact EMA, exact resume, same seed -> same model). Real modules, small shapes."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from model.config import InstanceConfig
from model.contrastive import (
    Queue,
    barlow_twins_loss,
    cluster_contrastive_loss,
    ema_update,
    frozen_copy,
    info_nce,
    marginal_entropy,
    nt_xent,
    projector,
)
from model.instance_methods import METHODS, build_method

torch.set_num_threads(1)

BATCH, MELS, FRAMES = 6, 64, 16


def small_config(method: str, **overrides) -> InstanceConfig:
    return InstanceConfig(method=method, encoder_dim=64, projector_dim=32, queue_size=16, instance_dim=16,
                          cluster_heads=8, crop_frames=FRAMES, batch_size=BATCH, **overrides)


def views(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(BATCH, 1, MELS, FRAMES, generator=g), torch.randn(BATCH, 1, MELS, FRAMES, generator=g))


def built(method: str, seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    return build_method(small_config(method, **overrides), MELS)


def identity(keys: torch.Tensor) -> torch.Tensor:
    return keys


def train_step(model: nn.Module, v1: torch.Tensor, v2: torch.Tensor, seed: int = 7, gather=identity) -> torch.Tensor:
    """One trainer step as the pipeline does it; SGD without momentum has no state to carry."""
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    torch.manual_seed(seed)
    loss, _ = model(v1, v2)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    model.after_step(gather)
    return loss.detach()


def teacher_pairs(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    return [(model.teacher_encoder, model.encoder), (model.teacher_head, model.head)]


# ---------------------------------------------------------------- losses by hand

def test_barlow_twins_zero_for_identical_decorrelated_views():
    # the three non-constant columns of a 4x4 Hadamard matrix: mean 0, variance 1, orthogonal
    h = torch.tensor([[1., 1, 1], [-1, 1, -1], [1, -1, -1], [-1, -1, 1]])
    z = 3.0 * h + torch.tensor([5.0, -2.0, 0.5])  # scale and shift: removed by the standardisation
    assert barlow_twins_loss(z, z, lambd=0.0051, eps=0.0).item() == 0.0
    assert barlow_twins_loss(z, z, lambd=0.0051).item() == pytest.approx(0.0, abs=1e-8)


def test_barlow_twins_two_by_two_by_hand():
    # standardised columns: z1 -> [-1, 1], [1, -1]; z2 -> [-1, 1], [-1, 1]
    # c = z1n^T z2n / 2 = [[1, 1], [-1, -1]]: on-diagonal (1-1)^2 + (1+1)^2 = 4, off-diagonal 1 + 1 = 2
    z1 = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    z2 = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    lambd = 0.25
    assert barlow_twins_loss(z1, z2, lambd, eps=0.0).item() == pytest.approx(4 + 2 * lambd, abs=1e-6)


def test_projector_layout():
    net = projector(10, 8, layers=3)
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert all(m.bias is None for m in net if isinstance(m, nn.Linear))
    assert not net[-1].affine
    out = net(torch.randn(5, 10))
    assert out.shape == (5, 8)
    assert out.mean(dim=0).abs().max().item() < 1e-5  # the last BN standardises over the batch


def test_nt_xent_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[2.0, 2.0], [0.0, 3.0]])  # cosines: a0.b0 = 1/sqrt2, a1.b1 = 1
    t = 0.5
    r = 1 / math.sqrt(2)
    # rows z = [a0, a1, b0, b1]; positives 0<->2, 1<->3; cosines s01 = 0, s02 = r, s03 = 0, s12 = r, s13 = 1, s23 = r
    e = lambda s: math.exp(s / t)  # noqa: E731
    terms = [
        -math.log(e(r) / (e(0) + e(r) + e(0))),  # row a0: others a1, b0 (positive), b1
        -math.log(e(1) / (e(0) + e(r) + e(1))),  # row a1: others a0, b0, b1 (positive)
        -math.log(e(r) / (e(r) + e(r) + e(r))),  # row b0: others a0 (positive), a1, b1
        -math.log(e(1) / (e(0) + e(1) + e(r))),  # row b1: others a0, a1 (positive), b0
    ]
    assert nt_xent(a, b, t).item() == pytest.approx(sum(terms) / 4, rel=1e-6)


def test_info_nce_by_hand():
    q = torch.tensor([[3.0, 0.0]])  # normalised inside: scale does not matter
    k = torch.tensor([[1.0, 0.0]])
    queue = torch.tensor([[0.0, 1.0], [-2.0, 0.0]])
    t = 0.5  # a loss far from 0, where float32 keeps relative precision
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(0) + math.exp(-1 / t)))
    assert info_nce(q, k, queue, t).item() == pytest.approx(expected, rel=1e-6)
    q2 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    k2 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # query 0 is orthogonal to its key, query 1 equals it
    row0 = -math.log(1 / (1 + math.exp(1 / t) + 1))
    row1 = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 1 + math.exp(-1 / t)))
    assert info_nce(q2, k2, queue, t).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_cluster_entropy_is_log_k_for_uniform_marginals():
    k = 8
    uniform_rows = torch.full((5, k), 1.0 / k)
    one_hot_each = torch.eye(k)  # each clip in its own cluster: the marginal is uniform too
    collapsed = torch.zeros(5, k).index_fill_(1, torch.tensor([3]), 1.0)
    assert marginal_entropy(uniform_rows).item() == pytest.approx(math.log(k), rel=1e-6)
    assert marginal_entropy(one_hot_each).item() == pytest.approx(math.log(k), rel=1e-6)
    assert marginal_entropy(collapsed).item() == 0.0
    p = torch.softmax(torch.randn(6, k, generator=torch.Generator().manual_seed(0)), dim=1)
    q = torch.softmax(torch.randn(6, k, generator=torch.Generator().manual_seed(1)), dim=1)
    expected = nt_xent(p.T, q.T, 1.0) - marginal_entropy(p) - marginal_entropy(q)
    assert torch.equal(cluster_contrastive_loss(p, q, 1.0), expected)
    # uniform marginals: the entropy term is exactly -2 log K
    loss = cluster_contrastive_loss(one_hot_each, one_hot_each, 1.0)
    assert loss.item() == pytest.approx(nt_xent(one_hot_each.T, one_hot_each.T, 1.0).item() - 2 * math.log(k))


def test_losses_stay_float32_under_autocast():
    """The trainer runs the methods under bfloat16 autocast; the losses' matmuls must not follow."""
    g = torch.Generator().manual_seed(0)
    z1, z2, queue = torch.randn(6, 32, generator=g), torch.randn(6, 32, generator=g), torch.randn(16, 32, generator=g)
    p1, p2 = torch.softmax(z1[:, :8], dim=1), torch.softmax(z2[:, :8], dim=1)
    losses = [lambda: barlow_twins_loss(z1, z2, 0.0051), lambda: info_nce(z1, z2, queue, 0.07),
              lambda: nt_xent(z1, z2, 0.5), lambda: cluster_contrastive_loss(p1, p2, 1.0)]
    for loss in losses:
        plain = loss()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = loss()
        assert mixed.dtype == torch.float32 and torch.equal(plain, mixed)


# ---------------------------------------------------------------- teacher and queue

def _pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    teacher = frozen_copy(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    student(torch.randn(5, 3))  # moves the student's running statistics
    return teacher, student


def test_ema_update_momentum_zero_copies_and_half_averages():
    teacher, student = _pair()
    assert all(not p.requires_grad for p in teacher.parameters())
    before = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.5)
    for t, old, s in zip(teacher.parameters(), before, student.parameters()):
        assert torch.allclose(t, (old + s) / 2, atol=1e-7, rtol=0)
    for t, s in zip(teacher.buffers(), student.buffers()):
        assert torch.equal(t, s)
    ema_update(teacher, student, 0.0)
    for t, s in zip(teacher.state_dict().values(), student.state_dict().values()):
        assert torch.equal(t, s)
    with pytest.raises(ValueError):
        ema_update(teacher, nn.Linear(3, 4), 0.5)


def test_queue_ring_wraps_and_is_state():
    queue = Queue(5, 2, seed=3)
    assert torch.allclose(queue.keys.norm(dim=1), torch.ones(5))
    assert torch.equal(queue.keys, Queue(5, 2, seed=3).keys)
    assert not torch.equal(queue.keys, Queue(5, 2, seed=4).keys)
    assert set(queue.state_dict()) == {"keys", "ptr"}
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [0.6, 0.8], [0.8, 0.6], [0.0, 2.0]])
    queue.enqueue(rows[:3])
    assert int(queue.ptr) == 3 and torch.equal(queue.keys[:3], rows[:3])
    queue.enqueue(rows[3:7] * 2)  # wraps: rows 3, 4, then 0, 1; stored L2-normalised
    assert int(queue.ptr) == 2
    assert torch.allclose(queue.keys, torch.stack([rows[5], rows[6] / 2, rows[2], rows[3], rows[4]]))
    queue.enqueue(rows)  # more keys than rows: the newest five are kept, in ring order
    assert int(queue.ptr) == (2 + 7) % 5
    ring = torch.roll(queue.keys, -int(queue.ptr), dims=0)  # oldest first
    assert torch.allclose(ring, torch.nn.functional.normalize(rows[2:], dim=1))


# ---------------------------------------------------------------- the methods' contract with the trainer

@pytest.mark.parametrize("method", sorted(METHODS))
def test_registry_and_same_seed_same_model(method):
    a, b, c = built(method, 0), built(method, 0), built(method, 1)
    assert isinstance(a, METHODS[method]) and a.encoder.out_dim == 64
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_step_gradients_and_exact_ema(method):
    model = built(method)
    v1, v2 = views()
    torch.manual_seed(3)
    loss, stats = model(v1, v2)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert stats and all(isinstance(v, float) and math.isfinite(v) for v in stats.values())
    loss.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    frozen = [p for name, p in model.named_parameters() if name.startswith("teacher_")]
    assert (len(frozen) > 0) == (method != "delores-s")
    assert all(not p.requires_grad and p.grad is None for p in frozen)

    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    optimiser.step()
    if method == "delores-s":
        before = {k: v.clone() for k, v in model.state_dict().items()}
        model.after_step(identity)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        return
    old = {id(t): [p.clone() for p in t.parameters()] for t, _ in teacher_pairs(model)}
    for t, s in teacher_pairs(model):  # the optimiser step did not touch the teacher...
        assert not all(torch.equal(a, b) for a, b in zip(t.parameters(), s.parameters()))
    keys = model._pending.clone()
    received = []
    model.after_step(lambda k: received.append(k) or k)
    m = model.cfg.ema
    for t, s in teacher_pairs(model):  # ...after_step moved it by the EMA formula exactly
        for p, o, sp in zip(t.parameters(), old[id(t)], s.parameters()):
            assert torch.equal(p, o.mul(m).add(sp, alpha=1 - m))
            assert torch.allclose(p, m * o + (1 - m) * sp, atol=1e-6, rtol=0)
        for bt, bs in zip(t.buffers(), s.buffers()):
            assert torch.equal(bt, bs)
    assert len(received) == 1 and torch.equal(received[0], keys)
    enqueued = 2 * BATCH if method == "slicer" else BATCH
    assert keys.shape == (enqueued, model.cfg.instance_dim) and not keys.requires_grad
    assert int(model.queue.ptr) == enqueued
    assert torch.allclose(model.queue.keys[:enqueued], torch.nn.functional.normalize(keys, dim=1))


@pytest.mark.parametrize("method", ["delores-m", "slicer"])
def test_gather_from_several_processes_fills_the_queue(method):
    model = built(method)
    v1, v2 = views()
    other = torch.randn(2 * BATCH, model.cfg.instance_dim)  # what a second process would contribute
    train_step(model, v1, v2, gather=lambda k: torch.cat([k, other[:len(k)]]))
    per_process = 2 * BATCH if method == "slicer" else BATCH
    assert int(model.queue.ptr) == (2 * per_process) % model.cfg.queue_size


@pytest.mark.parametrize("method", sorted(METHODS))
def test_resume_from_state_dict_continues_exactly(method):
    v1, v2 = views(1)
    w1, w2 = views(2)
    run = built(method, 0)
    for step in range(2):  # two steps: SLICER's queue (16 rows, 12 keys a step) has wrapped
        train_step(run, v1, v2, seed=step)
    resumed = built(method, 5)
    resumed.load_state_dict(run.state_dict())
    for step in range(2):
        losses = [train_step(model, w1, w2, seed=10 + step) for model in (run, resumed)]
        assert torch.equal(losses[0], losses[1])
    for (k, a), b in zip(run.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_delores_m_block_projectors_follow_the_encoder():
    """One projector per block, sized C_i * F_i of the time-averaged block output (byola: 64 channels,
    64/2, 64/4, 64/8 bins); EfficientNet's blocks work the same way."""
    assert [p[0].in_features for p in built("delores-m").projectors] == [64 * 32, 64 * 16, 64 * 8]
    model = built("delores-m", encoder="efficientnet", width_mult=0.25)
    assert len(model.projectors) == len(model.encoder.block_channels)
    v1, v2 = views()
    loss, stats = model(v1, v2)
    assert torch.isfinite(loss) and set(stats) == {"instance"} | {f"block{i}" for i in range(len(model.projectors))}


def test_delores_m_symmetric_sums_both_directions_and_enqueues_both_keys():
    """symmetric = loss(student on view 1, teacher on view 2) + loss(view 2 -> view 1), and both
    directions' teacher keys go to the queue; instance_head="mlp" is MoCo v2's two-layer head. Eval
    mode (no dropout draw, batch norm on running statistics) makes each direction deterministic."""
    both = built("delores-m", symmetric=True, instance_head="mlp")
    train_step(both, *views(2))  # the teacher now differs from the student: the directions differ too
    one = built("delores-m", instance_head="mlp")
    one.load_state_dict(both.state_dict())
    both.eval()
    one.eval()
    assert [type(m) for m in both.head] == [nn.Linear, nn.ReLU, nn.Linear]
    assert both.head[-1].out_features == both.cfg.instance_dim
    v1, v2 = views()
    with torch.no_grad():
        loss, stats = both(v1, v2)
        forward_loss, forward_stats = one(v1, v2)
        forward_keys = one._pending
        backward_loss, backward_stats = one(v2, v1)
        backward_keys = one._pending
    assert torch.allclose(loss, forward_loss + backward_loss)
    assert not torch.allclose(forward_loss, backward_loss)
    assert stats.keys() == forward_stats.keys()
    assert all(math.isclose(stats[k], forward_stats[k] + backward_stats[k], rel_tol=1e-5) for k in stats)
    assert torch.equal(both._pending, torch.cat([forward_keys, backward_keys]))
    ptr = int(both.queue.ptr)
    both.after_step(identity)
    assert int(both.queue.ptr) == (ptr + 2 * BATCH) % both.cfg.queue_size
