"""Datasets as tensors resident on the device; batches are index slices.

Three sources:

* :func:`synthetic` — least squares or multi-class classification with a
  conditioning knob: latent standardized features ``Z`` (optionally
  equicorrelated with coefficient ``ρ``) are observed as
  ``X_j = s_j (Z_j + offset)`` with scales ``s_j`` log-spaced from ``1`` down to
  ``10^{-scale_decades}``. The Hessian of least squares is ``XᵀX/N``, whose
  condition number grows like ``10^{2·scale_decades}``; a diagonal
  preconditioner (or input standardization) removes the scale part.
  The embedded default: no files, no network.
* :func:`digits` — scikit-learn's bundled 8×8 handwritten digits (1797 images,
  shipped inside the scikit-learn wheel): a real dataset with no download.
* :func:`torchvision_dataset` — MNIST, Fashion-MNIST, CIFAR-10 from
  ``root`` through torchvision's own loaders (``download=True`` fetches them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from precond.errors import ConfigError

TASKS = ("regression", "classification")


@dataclass
class Dataset:
    """Train/val(/test) tensors; inputs keep their natural shape (vectors or C×H×W images)."""

    name: str
    task: str
    num_outputs: int
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Optional[Tensor] = None
    y_test: Optional[Tensor] = None

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def n_train(self) -> int:
        return self.x_train.shape[0]

    def splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        out = {"train": (self.x_train, self.y_train), "val": (self.x_val, self.y_val)}
        if self.x_test is not None:
            out["test"] = (self.x_test, self.y_test)
        return out

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32, channels_last: bool = False
           ) -> Dataset:
        """Move every split to ``device`` once; inputs (and regression targets) to ``dtype``;
        image inputs to NHWC memory with ``channels_last``."""
        layout = torch.channels_last if channels_last else torch.preserve_format

        def move_x(x):
            return None if x is None else x.to(device=device, dtype=dtype, memory_format=layout)

        def move_y(y):
            if y is None:
                return None
            return y.to(device=device, dtype=dtype if self.task == "regression" else torch.long)

        return replace(
            self,
            x_train=move_x(self.x_train), y_train=move_y(self.y_train),
            x_val=move_x(self.x_val), y_val=move_y(self.y_val),
            x_test=move_x(self.x_test), y_test=move_y(self.y_test),
        )


def synthetic(
    task: str = "regression",
    n_train: int = 2048,
    n_val: int = 512,
    n_test: int = 512,
    features: int = 32,
    outputs: int = 1,
    classes: int = 4,
    scale_decades: float = 2.0,
    mean_offset: float = 0.0,
    correlation: float = 0.0,
    noise: float = 0.1,
    data_seed: int = 0,
) -> Dataset:
    """An ill-conditioned problem whose difficulty is set by ``scale_decades``.

    Latent ``Z ~ N(0, C)``, ``C = (1−ρ) I + ρ 11ᵀ``; inputs ``X_j = s_j (Z_j + offset)``
    with ``s_j = 10^{-scale_decades · j/(d−1)}``. Regression targets are
    ``y = Z W*/√d + noise·ε`` (so the loss floor is ``noise²``); classification
    labels are ``argmax(Z W* + noise·Gumbel)``.
    """
    if task not in TASKS:
        raise ConfigError("task", f"one of {list(TASKS)}", task)
    if not 0.0 <= correlation < 1.0:
        raise ConfigError("correlation", "a value in [0, 1)", correlation)
    if min(n_train, n_val, features) < 1:
        raise ConfigError("n_train, n_val, features", "positive sizes", (n_train, n_val, features))
    g = torch.Generator().manual_seed(data_seed)
    f32 = torch.float32  # explicit: the data must not depend on torch's global default dtype
    n = n_train + n_val + n_test
    z = math.sqrt(1.0 - correlation) * torch.randn(n, features, generator=g, dtype=f32)
    z += math.sqrt(correlation) * torch.randn(n, 1, generator=g, dtype=f32)
    exponents = torch.linspace(0.0, -scale_decades, features, dtype=f32) if features > 1 else torch.zeros(1, dtype=f32)
    x = (z + mean_offset) * 10.0**exponents
    if task == "regression":
        w = torch.randn(features, outputs, generator=g, dtype=f32)
        y = z @ w / math.sqrt(features) + noise * torch.randn(n, outputs, generator=g, dtype=f32)
        num_outputs = outputs
    else:
        if classes < 2:
            raise ConfigError("classes", "at least 2 classes", classes)
        w = torch.randn(features, classes, generator=g, dtype=f32)
        gumbel = -torch.log(-torch.log(torch.rand(n, classes, generator=g, dtype=f32).clamp_min(1e-12)))
        y = (z @ w + noise * gumbel).argmax(dim=1)
        num_outputs = classes
    a, b = n_train, n_train + n_val
    return Dataset(
        name=f"synthetic_{task}", task=task, num_outputs=num_outputs,
        x_train=x[:a], y_train=y[:a], x_val=x[a:b], y_val=y[a:b],
        x_test=x[b:] if n_test else None, y_test=y[b:] if n_test else None,
    )


def _split(name: str, x: Tensor, y: Tensor, val_fraction: float, test_fraction: float, data_seed: int,
           x_test: Optional[Tensor] = None, y_test: Optional[Tensor] = None) -> Dataset:
    """Random train/val(/test) split with a fixed seed; ``test_fraction`` only when no test split exists."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError("val_fraction", "a value in (0, 1)", val_fraction)
    if x_test is None and not 0.0 <= test_fraction < 1.0:
        raise ConfigError("test_fraction", "a value in [0, 1)", test_fraction)
    if x_test is None and val_fraction + test_fraction >= 1.0:
        raise ConfigError("val_fraction, test_fraction", "fractions that leave training data (sum < 1)",
                          (val_fraction, test_fraction))
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(data_seed))
    n_val = max(1, int(round(val_fraction * x.shape[0])))
    n_test = 0 if x_test is not None else int(round(test_fraction * x.shape[0]))
    test_idx, val_idx, train_idx = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
    if x_test is None and n_test:
        x_test, y_test = x[test_idx], y[test_idx]
    return Dataset(
        name=name, task="classification", num_outputs=int(y.max()) + 1,
        x_train=x[train_idx], y_train=y[train_idx], x_val=x[val_idx], y_val=y[val_idx],
        x_test=x_test, y_test=y_test,
    )


def digits(val_fraction: float = 0.15, test_fraction: float = 0.15, data_seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8×8 digits as 1×8×8 images in [0, 1]; 10 classes; no download."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    return _split("digits", x, y, val_fraction, test_fraction, data_seed)


#: torchvision class name and where its files live under ``root``
_TORCHVISION = {
    "mnist": ("MNIST", "MNIST/raw"),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw"),
    "cifar10": ("CIFAR10", "cifar-10-batches-py"),
}


def torchvision_dataset(
    name: str, root: str = "data", download: bool = False, val_fraction: float = 0.1,
    limit_train: Optional[int] = None, data_seed: int = 0,
) -> Dataset:
    """MNIST / Fashion-MNIST / CIFAR-10 via torchvision, as float images in [0, 1] (N×C×H×W).

    The official train split is split into train/val; the official test split is the test split.
    ``limit_train`` keeps a random subset of the training images (quick experiments).
    """
    import torchvision

    if name not in _TORCHVISION:
        raise ConfigError("name", f"one of {sorted(_TORCHVISION)}", name)
    cls_name, subdir = _TORCHVISION[name]
    cls = getattr(torchvision.datasets, cls_name)
    try:
        train = cls(root=str(root), train=True, download=download)
        test = cls(root=str(root), train=False, download=download)
    except RuntimeError as err:
        where = Path(root).resolve() / subdir
        raise ConfigError(
            "root", f"the {name} files under {where}", None,
            f"torchvision said: {err}. Set dataset.download=true (needs network) or point "
            f"dataset.root at a folder holding {subdir}/",
        ) from err
    x, y = _images(train), torch.as_tensor(train.targets, dtype=torch.long)
    x_test, y_test = _images(test), torch.as_tensor(test.targets, dtype=torch.long)
    if limit_train is not None:
        keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(data_seed))[:limit_train]
        x, y = x[keep], y[keep]
    return _split(name, x, y, val_fraction, 0.0, data_seed, x_test=x_test, y_test=y_test)


def _images(ds) -> Tensor:
    """uint8 images (N×H×W tensor or N×H×W×C array) → float N×C×H×W in [0, 1]."""
    data = torch.as_tensor(ds.data)
    data = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)
    return data.float().div_(255.0).contiguous()


class BatchSampler:
    """Minibatch index slices over a permutation drawn per epoch (drop-last, so every batch has ``batch_size``).

    The permutation is drawn on the CPU from a seeded generator (reproducible
    on any device) and moved to the data's device once per epoch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device | str):
        if batch_size > n:
            raise ConfigError("/batch_size", f"at most the training-set size {n}", batch_size,
                              "lower batch_size or use more training data")
        self.n, self.batch_size, self.device = n, batch_size, device
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self._perm, self._pos = 0, None, n

    def next(self) -> Tensor:
        if self._pos + self.batch_size > self.n:
            perm = torch.randperm(self.n, generator=self.generator)
            if torch.device(self.device).type == "cuda":  # from pinned memory: no wait for the GPU's queue
                perm = perm.pin_memory()
            self._perm = perm.to(self.device, non_blocking=True)
            self._pos = 0
            self.epoch += 1
        idx = self._perm[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        return idx

    def state_dict(self) -> dict:
        """The position in the sample stream: generator state, current permutation, offset, epoch."""
        return {"generator": self.generator.get_state(), "perm": None if self._perm is None else self._perm.cpu(),
                "pos": self._pos, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        """Continue the stream exactly where :meth:`state_dict` left it."""
        self.generator.set_state(state["generator"])
        self._perm = None if state["perm"] is None else state["perm"].to(self.device)
        self._pos, self.epoch = int(state["pos"]), int(state["epoch"])
