"""Every option of every config group composes and builds; every experiment validates."""
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class

from precond.errors import ConfigError
from precond.run.config import (
    build_data,
    build_model,
    build_monitors,
    build_optimizer_from_settings,
    build_schedule,
    settings_from_config,
)
from precond.run.entry import CONF_DIR
from precond.run.files import RunLog

GROUPS = ["model", "dataset", "preconditioner", "regularization", "normalization", "normalization_arm",
          "schedule", "logger", "curvature"]
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


def _overrides_for(group: str, option: str, fake_vision_root) -> list[str]:
    overrides = [f"{group}={option}", "batch_size=8", "steps=4", "eval_every=2", "lr=1e-3", "progress=false"]
    if group == "model" and option in IMAGE_MODELS:
        overrides.append("dataset=digits")
    if group == "dataset" and option in VISION_FILES:
        overrides += [f"dataset.root={fake_vision_root}", "model=cnn"]
    if group == "dataset" and option == "digits":
        overrides.append("model=cnn")
    if group in ("normalization", "normalization_arm") and option in ("batchnorm", "layernorm"):
        overrides.append("model=mlp")
    if (group, option) in (("normalization_arm", "bnp"), ("preconditioner", "bnp")):
        overrides.append("preconditioner.bnp_warmup=1")  # fewer than the 4 steps (a longer one is refused)
    if group == "curvature":
        overrides += ["model=mlp", "model.widths=[4]", "curvature.every=2", "curvature.max_matvecs=5"]
    if group == "schedule":
        overrides += {"warmup": ["schedule.warmup_steps=1"], "cosine": ["schedule.warmup_steps=1"],
                      "step": ["schedule.step_size=1"], "constant": []}[option]
    return overrides


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes_builds_and_steps(group, fake_vision_root, monkeypatch, tmp_path):
    """Each option is built exactly as a run builds it, and two steps plus the monitors run."""
    import torchvision

    from precond.run.loop import train

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda p, md5=None: Path(p).is_file())
    options = _options(group)
    assert len(options) >= 2
    for option in options:
        cfg = _compose(*_overrides_for(group, option, fake_vision_root), "device=cpu")
        settings = settings_from_config(cfg)
        data = build_data(settings)
        model = build_model(settings, data)
        optimizer = build_optimizer_from_settings(settings, model)
        scheduler = build_schedule(settings, optimizer)
        monitors = build_monitors(settings, model, optimizer, data)
        assert model(data.x_train[:8]).shape == (8, data.num_outputs)
        before = [p.detach().clone() for p in model.parameters()]
        logger = settings.logger
        with RunLog(tmp_path / f"{group}-{option}", {}, logger if logger.mode != "online" else None) as runlog:
            summary = train(model, optimizer, data, settings.loop, runlog, monitors=monitors, scheduler=scheduler)
        assert summary["status"] == "completed" and summary["steps"] == 4, (group, option)
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), (group, option)
        if group == "curvature":
            assert summary["curvature/p/lam_max"] > 0, option


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes_and_validates(experiment):
    cfg = _compose(f"experiment={experiment}")
    settings_from_config(cfg)
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
    (["curvature=lanczos", "curvature.every=150"], "curvature.every"),
    (["curvature=lanczos", "curvature.spaces=[q]"], "curvature.spaces"),
    (["curvature=dense", "curvature.bn_mode=both"], "curvature.bn_mode"),
    (["preconditioner=bnp", "curvature=lanczos"], "curvature.spaces"),
    (["normalization.name=groupnorm"], "normalization.name"),
    (["schedule=step", "schedule.gamma=2"], "schedule.gamma"),
    (["schedule=cosine", "schedule.warmup_steps=5000"], "schedule.warmup_steps"),
    (["preconditioner=bnp", "regularization=l1", "regularization.variable=p"], "regularization.form"),
])
def test_validate_names_the_bad_key(overrides, key):
    with pytest.raises(ConfigError) as err:  # every rule, joint ones included, before anything is built
        settings_from_config(_compose(*overrides))
    assert str(err.value).startswith(f"{key}:")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="device: expected a CUDA GPU"):
        settings_from_config(_compose("device=cuda"))


@pytest.mark.parametrize("normalization", ["none", "batchnorm", "layernorm"])
def test_standardize_inputs_adds_input_standardization_to_any_normalization(normalization):
    """normalization.standardize_inputs=true gives the same inputs as normalization=input (train-split mean 0, std 1
    per feature), with the norm layers of the chosen normalization; false leaves the raw inputs."""
    base = ("dataset=digits", "model=mlp", f"normalization={normalization}")
    raw = build_data(settings_from_config(_compose(*base)))
    standardized = build_data(settings_from_config(_compose(*base, "normalization.standardize_inputs=true")))
    reference = build_data(settings_from_config(_compose("dataset=digits", "model=mlp", "normalization=input")))
    torch.testing.assert_close(standardized.x_train, reference.x_train)
    torch.testing.assert_close(standardized.x_val, reference.x_val)
    assert not torch.allclose(raw.x_train, reference.x_train)
    settings = settings_from_config(_compose(*base, "normalization.standardize_inputs=true"))
    model = build_model(settings, standardized)
    has_norm = any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.LayerNorm)) for m in model.modules())
    assert has_norm == (normalization != "none")


def test_standardize_inputs_must_be_a_flag():
    with pytest.raises(ConfigError, match="normalization.standardize_inputs: expected true or false"):
        settings_from_config(_compose("normalization.standardize_inputs=maybe"))
