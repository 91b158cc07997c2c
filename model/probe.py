"""Downstream evaluation (METHODS.md): a linear probe on frozen embeddings, and fine-tuning of
encoder + linear layer. Adam, model selection by validation accuracy only (never the test set);
test accuracy and macro-F1 are reported for the selected epoch. Pure torch, deterministic per seed."""
from __future__ import annotations

import copy

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn
from torch.utils.data import DataLoader, Dataset

from model.data import pad_batch
from model.network import add_channel


def standardise(train_x: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Scale every split with the train split's mean/std per dimension. Needed because a random-init
    EfficientNet in eval mode gives ~1e-10 activations (untouched BatchNorm running statistics)."""
    mean = train_x.mean(axis=0, dtype=np.float64)
    std = train_x.std(axis=0, dtype=np.float64)
    std = np.where(std > 0, std, 1.0)
    return [((x - mean) / std).astype(np.float32) for x in (train_x, *others)]


def scores(labels: np.ndarray, predictions: np.ndarray) -> tuple[float, float]:
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.size == 0:
        return float("nan"), float("nan")
    accuracy = float((labels == predictions).mean())
    return accuracy, float(f1_score(labels, predictions, average="macro", zero_division=0))


def accuracy_interval(labels: np.ndarray, predictions: np.ndarray, resamples: int = 1000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval of the test accuracy over test clips (percentile method, seeded): with
    100-clip test sets one clip is a whole point, so scores are reported with their interval."""
    correct = (np.asarray(labels) == np.asarray(predictions)).astype(np.float64)
    if correct.size == 0:
        return float("nan"), float("nan")
    draws = np.random.default_rng(seed).integers(0, correct.size, (resamples, correct.size))
    means = correct[draws].mean(axis=1)
    return float(np.quantile(means, (1 - level) / 2)), float(np.quantile(means, (1 + level) / 2))


def score_predictions(labels: np.ndarray, predictions: np.ndarray) -> dict:
    """Accuracy with its 95 % bootstrap interval, and macro-F1, of test predictions."""
    accuracy, macro_f1 = scores(labels, predictions)
    low, high = accuracy_interval(labels, predictions)
    return {"accuracy": accuracy, "accuracy_ci_low": low, "accuracy_ci_high": high, "macro_f1": macro_f1}


def _check_split(name: str, x, y) -> None:
    if len(x) != len(y):
        raise ValueError(f"{name}: {len(x)} inputs but {len(y)} labels")
    if len(x) == 0 and name != "test":
        raise ValueError(f"{name} split is empty: the probe needs train and valid clips")


def train_linear_probe(train_x, train_y, valid_x, valid_y, test_x, test_y, epochs: int = 50, lr: float = 1e-3,
                       batch_size: int = 64, seed: int = 0, classes: int | None = None) -> dict:
    """Linear layer on standardised embeddings; returns accuracy, macro_f1 (test), valid_accuracy and
    best_epoch (1-based) of the epoch with the best validation accuracy (earliest on ties)."""
    for name, x, y in (("train", train_x, train_y), ("valid", valid_x, valid_y), ("test", test_x, test_y)):
        _check_split(name, x, y)
    train_x, valid_x, test_x = (torch.from_numpy(a) for a in standardise(
        np.asarray(train_x, np.float32), np.asarray(valid_x, np.float32), np.asarray(test_x, np.float32)))
    train_y = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    classes = classes or 1 + int(max(np.max(train_y.numpy()), np.max(valid_y), np.max(test_y, initial=0)))
    generator = torch.Generator().manual_seed(seed)
    layer = nn.Linear(train_x.shape[1], classes)
    with torch.no_grad():  # seeded init, independent of the global RNG
        bound = 1 / np.sqrt(train_x.shape[1])
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.zero_()
    optimiser = torch.optim.Adam(layer.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    predict = lambda x: layer(x).argmax(1).numpy()  # noqa: E731
    best = (-1.0, 0, None)
    for epoch in range(1, epochs + 1):
        for batch in torch.randperm(len(train_x), generator=generator).split(batch_size):
            loss = loss_fn(layer(train_x[batch]), train_y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            valid_accuracy = scores(valid_y, predict(valid_x))[0]
        if valid_accuracy > best[0]:
            best = (valid_accuracy, epoch, copy.deepcopy(layer.state_dict()))
    layer.load_state_dict(best[2])
    with torch.no_grad():
        predictions = predict(test_x)
    return {**score_predictions(test_y, predictions), "valid_accuracy": best[0], "best_epoch": best[1]}


class _Classifier(nn.Module):
    def __init__(self, encoder: nn.Module, classes: int):
        super().__init__()
        self.encoder, self.linear = encoder, nn.Linear(encoder.out_dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.encoder(x))


@torch.no_grad()
def _predict(model: nn.Module, data: Dataset, batch_size: int, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    predictions, labels = [], []
    for x, _, y in DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=pad_batch):
        predictions.append(model(add_channel(x).to(device)).argmax(1).cpu().numpy())
        labels.append(y.numpy())
    return (np.concatenate(labels), np.concatenate(predictions)) if labels else (np.zeros(0), np.zeros(0))


def finetune(encoder: nn.Module, train: Dataset, valid: Dataset, test: Dataset, classes: int, epochs: int = 50,
             lr: float = 1e-3, batch_size: int = 64, seed: int = 0, device: str | torch.device = "cpu",
             progress=None) -> dict:
    """Train encoder (with `out_dim`, input (B, 1, n_mels, T)) plus a linear layer end to end with Adam;
    same selection and report as train_linear_probe. The encoder is changed in place."""
    for name, data in (("train", train), ("valid", valid)):
        if len(data) == 0:
            raise ValueError(f"{name} split is empty: fine-tuning needs train and valid clips")
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):  # determinism without touching the caller's RNG
        torch.manual_seed(seed)
        model = _Classifier(encoder, classes).to(device)
        generator = torch.Generator().manual_seed(seed)
        loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=pad_batch)
        optimiser = torch.optim.Adam(model.parameters(), lr=lr)
        loss_fn = nn.CrossEntropyLoss()
        best = (-1.0, 0, None)
        for epoch in range(1, epochs + 1):
            model.train()
            for x, _, y in loader:
                loss = loss_fn(model(add_channel(x).to(device)), y.to(device))
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            valid_accuracy = scores(*_predict(model, valid, batch_size, device))[0]
            if valid_accuracy > best[0]:
                best = (valid_accuracy, epoch, copy.deepcopy(model.state_dict()))
            if progress:
                progress(epoch / epochs, valid_accuracy)
        model.load_state_dict(best[2])
        labels, predictions = _predict(model, test, batch_size, device)
    return {**score_predictions(labels, predictions), "valid_accuracy": best[0], "best_epoch": best[1]}


def logmel_statistics(logmel: np.ndarray) -> np.ndarray:
    """The log-mel baseline's clip vector: mean and std over time of each mel bin (2 * n_mels)."""
    logmel = np.asarray(logmel, np.float64)
    return np.concatenate([logmel.mean(axis=1), logmel.std(axis=1)]).astype(np.float32)
