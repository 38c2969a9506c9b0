"""Every option of every config group composes and builds; every experiment validates."""
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class

from precond.errors import ConfigError
from precond.train import CONF_DIR, build_data, build_model, build_optimizer_from_config, validate

GROUPS = ["model", "dataset", "preconditioner", "regularization", "normalization", "logger", "hessian"]
IMAGE_MODELS = {"cnn", "resnet", "resnet18"}
VISION_FILES = {"mnist", "fashion_mnist", "cifar10"}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def _compose(*overrides, hydra_cfg=False):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra_cfg)


@pytest.fixture(scope="module")
def fake_vision_root(tmp_path_factory):
    """Tiny MNIST/Fashion-MNIST idx files and CIFAR-10 pickles in their real layouts."""
    import pickle
    import struct

    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for folder in ("MNIST", "FashionMNIST"):
        raw = root / folder / "raw"
        raw.mkdir(parents=True)
        for split, n in (("train", 40), ("t10k", 10)):
            for kind, shape, magic in (("images-idx3", (n, 28, 28), 2051), ("labels-idx1", (n,), 2049)):
                with open(raw / f"{split}-{kind}-ubyte", "wb") as f:
                    f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in shape))
                    f.write(rng.integers(0, 10 if kind.startswith("labels") else 256, shape, dtype=np.uint8).tobytes())
    cifar = root / "cifar-10-batches-py"
    cifar.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(cifar / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (8, 3072), dtype=np.uint8),
                         "labels": rng.integers(0, 10, 8).tolist()}, f)
    with open(cifar / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    return root


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes_validates_and_builds(group, fake_vision_root, monkeypatch):
    import torchvision

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda p, md5=None: Path(p).is_file())
    options = _options(group)
    assert len(options) >= 2
    for option in options:
        overrides = [f"{group}={option}", "batch_size=8"]
        if group == "model" and option in IMAGE_MODELS:
            overrides.append("dataset=digits")
        if group == "dataset" and option in VISION_FILES:
            overrides += [f"dataset.root={fake_vision_root}", "model=cnn"]
        if group == "dataset" and option == "digits":
            overrides.append("model=cnn")
        if group == "normalization" and option in ("batchnorm", "layernorm"):
            overrides.append("model=mlp")
        cfg = _compose(*overrides)
        validate(cfg)
        data = build_data(cfg, torch.device("cpu"))
        model = build_model(cfg, data, torch.device("cpu"))
        optimizer = build_optimizer_from_config(cfg, model)
        assert model(data.x_train[:8]).shape == (8, data.num_outputs)

        def closure():
            optimizer.zero_grad()
            loss = model(data.x_train[:8]).float().pow(2).mean()
            loss.backward()
            return loss

        optimizer.step(closure)


def test_each_preconditioner_file_sets_a_learning_rate():
    for option in _options("preconditioner"):
        cfg = _compose(f"preconditioner={option}")
        assert cfg.lr == cfg.preconditioner.lr > 0


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes_and_validates(experiment):
    cfg = _compose(f"experiment={experiment}")
    validate(cfg)
    assert cfg.name == experiment


@pytest.mark.parametrize("launcher", ["local_parallel", "slurm"])
def test_launcher_configs_point_at_installed_plugins(launcher):
    cfg = _compose(f"hydra/launcher={launcher}", hydra_cfg=True)
    assert get_class(cfg.hydra.launcher._target_).__name__.endswith("Launcher")


@pytest.mark.parametrize("overrides,key", [
    (["regularization=l2", "regularization.variable=q"], "regularization.variable"),
    (["regularization=l2", "regularization.strength=-1"], "regularization.strength"),
    (["regularization=l2", "regularization.policy=biases"], "regularization.policy"),
    (["lr=-0.1"], "lr"),
    (["steps=0"], "steps"),
    (["dtype=float16"], "dtype"),
    (["device=tpu"], "device"),
    (["model=mlp", "normalization=batchnorm", "batch_size=1"], "batch_size"),
    (["logger=wandb", "logger.mode=sometimes"], "logger.mode"),
    (["regularization=l1", "regularization.form=lasso"], "regularization.form"),
    (["regularization=gradnorm", "regularization.backend=forward"], "regularization.backend"),
    (["regularization=gradnorm", "regularization.r=-1"], "regularization.r"),
    (["hessian=lanczos", "hessian.every=150"], "hessian.every"),
    (["hessian=lanczos", "hessian.spaces=[q]"], "hessian.spaces"),
    (["hessian=dense", "hessian.bn_mode=both"], "hessian.bn_mode"),
    (["preconditioner=bnp", "hessian=lanczos"], "hessian.spaces"),
    (["preconditioner=bnp", "regularization=l1", "regularization.variable=p"], "regularization.form"),
])
def test_validate_names_the_bad_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        validate(_compose(*overrides))
    assert str(err.value).startswith(f"{key}:")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="device: expected a CUDA GPU"):
        validate(_compose("device=cuda"))
