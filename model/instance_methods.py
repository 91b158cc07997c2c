"""The instance methods by name, one interface (what the pipeline's generic trainer calls):

    method = build_method(cfg, n_mels)          # nn.Module; method.encoder is kept afterwards
    loss, stats = method(view1, view2)         # views (B, 1, n_mels, T); stats: floats to log
    loss.backward(); optimiser.step()          # optimise only parameters with requires_grad
    method.after_step(gather)                  # EMA teacher update, enqueue gather(keys)

`gather` concatenates a tensor over processes in rank order (identity with one process), so
every process's queue stays the same. `state_dict()` holds everything a resumed run needs:
student, teacher, projectors, heads, queue and its pointer.
"""
from __future__ import annotations

from torch import nn

from model.config import InstanceConfig
from model.delores_m import DeLoResM
from model.delores_s import DeLoResS
from model.slicer import Slicer

METHODS: dict[str, type[nn.Module]] = {"delores-s": DeLoResS, "delores-m": DeLoResM, "slicer": Slicer}


def build_method(cfg: InstanceConfig, n_mels: int = 64) -> nn.Module:
    """The method cfg.method names, built on the current torch RNG (same seed, same weights)."""
    return METHODS[cfg.method](cfg, n_mels)
