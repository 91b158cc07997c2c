"""The one clip dataset and padding collate shared by training, probing and fine-tuning."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset


class Clips(Dataset):
    """Item i is (normalised log-mel (n_mels, frames) float32 tensor, integer label of clip i).

    `load(i)` returns clip i's normalised log-mel; the dataset never knows where bytes live."""

    def __init__(self, load: Callable[[int], np.ndarray], labels: np.ndarray):
        self.load, self.labels = load, np.asarray(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return torch.as_tensor(self.load(i)), int(self.labels[i])


def pad_batch(items) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log-mel, label) items -> zero-padded batch (B, n_mels, T_max), lengths (B,), labels (B,).

    Zero is the dataset mean after normalising, so padding adds no energy."""
    lengths = torch.tensor([x.shape[1] for x, _ in items])
    batch = torch.zeros(len(items), items[0][0].shape[0], int(lengths.max()))
    for i, (x, _) in enumerate(items):
        batch[i, :, : x.shape[1]] = x
    return batch, lengths, torch.tensor([y for _, y in items])
