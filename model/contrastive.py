"""Losses and teacher helpers shared by DeLoRes-S, DeLoRes-M and SLICER (METHODS.md).

Pure torch: no paths, no processes. Every loss computes in float32 whatever the input dtype and
with autocast switched off (autocast would run the matmuls in bfloat16 even on float32 inputs),
so that mixed-precision training does not turn logits / 0.07 or a 2048 x 2048 cross-correlation
into rounding noise. State that a resumed run needs
(teacher weights, queues and their pointers) lives in parameters and registered buffers, so
`state_dict()` holds all of it.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def _full_precision(t: torch.Tensor) -> torch.autocast:
    """A context with autocast off on t's device: the losses' matmuls stay float32."""
    return torch.autocast(t.device.type, enabled=False)


def batch_standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each dimension to mean 0 and variance 1 over the batch, as BatchNorm1d(affine=False) in
    training mode does (biased variance, eps inside the square root)."""
    z = z.float()
    return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + eps)


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins: c = z1n^T z2n / B over the batch-standardised projections;
    loss = sum_i (1 - c_ii)^2 + lambd * sum_{i != j} c_ij^2.

    The diagonal makes the two views agree dimension by dimension, the off-diagonal terms
    decorrelate the dimensions (redundancy reduction), which is what keeps the embedding from
    collapsing without negatives or a teacher. Not divided by the dimension: lambd = 0.0051 is
    tuned for this sum."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"need two (B, D) projections of the same shape, got {tuple(z1.shape)}, {tuple(z2.shape)}")
    with _full_precision(z1):
        c = batch_standardise(z1, eps).T @ batch_standardise(z2, eps) / z1.shape[0]
    diagonal = torch.diagonal(c)
    on = (1 - diagonal).pow(2).sum()
    off = c.pow(2).sum() - diagonal.pow(2).sum()
    return on + lambd * off


def projector(in_dim: int, dim: int, layers: int = 3) -> nn.Sequential:
    """Barlow Twins projector: (layers - 1) x [Linear(no bias)-BN-ReLU], a last Linear, then
    BatchNorm1d(dim, affine=False). Linear layers before a BN carry no bias (the BN removes it)."""
    if layers < 1:
        raise ValueError(f"a projector needs at least one layer, got {layers}")
    modules: list[nn.Module] = []
    width = in_dim
    for _ in range(layers - 1):
        modules += [nn.Linear(width, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU()]
        width = dim
    modules += [nn.Linear(width, dim, bias=False), nn.BatchNorm1d(dim, affine=False)]
    return nn.Sequential(*modules)


def info_nce(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v2's loss: for each query (B, D) its own key (B, D) is the positive and the queue's
    rows (K, D) are the negatives; all L2-normalised; logits = [q.k, q.queue^T] / T;
    cross-entropy with target 0, averaged over the batch. Keys and queue carry no gradient."""
    with _full_precision(query):
        q = F.normalize(query.float(), dim=1)
        k = F.normalize(key.detach().float(), dim=1)
        negatives = F.normalize(queue.detach().float(), dim=1)
        logits = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ negatives.T], dim=1) / temperature
        return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent over the 2N rows of a (N, D) and b (N, D): cosine similarities / T, each
    row's positive is its partner (a_i <-> b_i) and its negatives are the other 2N - 2 rows
    (itself excluded); cross-entropy averaged over all 2N rows."""
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"need two (N, D) inputs of the same shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    n = a.shape[0]
    with _full_precision(a):
        z = F.normalize(torch.cat([a, b]).float(), dim=1)
        logits = (z @ z.T) / temperature
        logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
        return F.cross_entropy(logits, target)


def marginal_entropy(p: torch.Tensor) -> torch.Tensor:
    """H(m) = -sum_k m_k log m_k of the cluster marginal m = column sums of p (B, K) normalised
    to 1; at most log K (every cluster used equally), 0 when one cluster takes everything."""
    m = p.float().sum(dim=0)
    m = m / m.sum()
    return -torch.special.xlogy(m, m).sum()


def cluster_contrastive_loss(p1: torch.Tensor, p2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Contrastive Clustering's cluster-level loss for two views' softmax outputs p1, p2 (B, K):
    column k of each is cluster k's representation over the batch; NT-Xent over the 2K columns
    (cluster k of view 1 and of view 2 are positives), minus the two views' marginal entropies.

    The sign: the entropy is SUBTRACTED, so minimising the loss maximises H (at most log K each);
    without it every clip can go to one cluster and the columns still agree. The paper writes the
    term as log K - H (non-negative); that differs by the constant 2 log K, same gradients.
    (The authors' SLICER code has the term commented out; METHODS.md keeps it.)"""
    return nt_xent(p1.T, p2.T, temperature) - (marginal_entropy(p1) + marginal_entropy(p2))


# ---------------------------------------------------------------- momentum teacher and queue

def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy for a momentum teacher: same weights and buffers, requires_grad False, so no
    optimiser step or gradient reaches it; it changes only through ema_update."""
    teacher = copy.deepcopy(module)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student for every parameter (written as
    that product and sum, so a test can check it bit for bit); buffers (batch-norm running
    statistics, counters) are copied from the student, as the teacher has no statistics of its own
    worth keeping. The two modules must have the same structure."""
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    t_buffers, s_buffers = list(teacher.buffers()), list(student.buffers())
    if len(t_params) != len(s_params) or len(t_buffers) != len(s_buffers):
        raise ValueError("teacher and student differ in structure")
    for t, s in zip(t_params, s_params):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)
    for t, s in zip(t_buffers, s_buffers):
        t.copy_(s)


class Queue(nn.Module):
    """MoCo's ring buffer of negative keys: `keys` (size, dim) and `ptr` (the next row to write)
    are registered buffers, so a checkpoint holds them and a resumed run draws the same
    negatives. Starts as random unit vectors from its own generator (seed), which leaves the
    caller's RNG untouched: two runs with the same seed start from the same queue."""

    def __init__(self, size: int, dim: int, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("keys", F.normalize(torch.randn(size, dim, generator=generator), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write keys (n, dim), L2-normalised, over the oldest rows, wrapping around. n may be
        any count (the caller gathers keys from all processes, so every process's queue stays the
        same); with n > size only the newest `size` keys are kept."""
        keys = F.normalize(keys.detach().to(self.keys.dtype), dim=1)
        n = keys.shape[0]
        start = int(self.ptr)
        if n > self.size:
            start = (start + n - self.size) % self.size
            keys = keys[-self.size:]
        rows = (start + torch.arange(keys.shape[0], device=self.keys.device)) % self.size
        self.keys[rows] = keys
        self.ptr.fill_((start + keys.shape[0]) % self.size)
