"""Defaults that work: each dataset's own target, each model family's learning rates, and training with them."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from precond.metrics import target_metrics
from precond.run.config import settings_from_config
from precond.run.entry import CONF_DIR
from tests.conftest import read_summary, run_in_process


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.mark.parametrize("dataset", _options("dataset"))
def test_each_dataset_sets_a_target_for_its_task(dataset):
    settings = settings_from_config(_compose(f"dataset={dataset}"))
    target, task = settings.loop.target, settings.dataset.task
    expected = "val/loss" if task == "regression" else "val/acc"
    assert (target.metric, target.value) == (expected, settings.dataset.target_value)
    assert target.metric in target_metrics(task) and target.value is not None


@pytest.mark.parametrize("model", _options("model"))
@pytest.mark.parametrize("preconditioner", [p for p in _options("preconditioner") if p != "torch_optim"])
def test_each_model_family_sets_each_preconditioners_learning_rate(model, preconditioner):
    data = "dataset=digits"  # images: every model family accepts them
    cfg = _compose(f"model={model}", f"preconditioner={preconditioner}", data)
    settings = settings_from_config(cfg)
    assert settings.lr == getattr(settings.model.default_lr, preconditioner) == cfg.model.default_lr[preconditioner]
    overridden = _compose(f"model={model}", f"preconditioner={preconditioner}", data, "lr=0.123")
    assert settings_from_config(overridden).lr == 0.123


@pytest.mark.parametrize("batch,factor", [(1, 1 / 8), (16, 0.5), (64, 1.0), (256, 1.0)])
def test_bnps_default_lr_scales_with_the_square_root_of_the_batch_below_64(batch, factor):
    settings = settings_from_config(_compose("model=mlp", "preconditioner=bnp", f"batch_size={batch}"))
    assert settings.lr == pytest.approx(settings.model.default_lr.bnp * factor, rel=1e-12)
    explicit = settings_from_config(_compose("model=mlp", "preconditioner=bnp", f"batch_size={batch}", "lr=0.002"))
    assert explicit.lr == 0.002  # an lr the user gives is never scaled


def test_a_black_box_starts_from_its_own_lr_on_every_model():
    """torch_optim names any optimizer, so no model family can know its lr: the option's own value is used."""
    for model in _options("model"):
        settings = settings_from_config(_compose(f"model={model}", "preconditioner=torch_optim", "dataset=digits"))
        assert settings.lr == settings.preconditioner.lr == 1e-3


def test_an_mlp_reaches_0_9_on_the_mnist_subset_in_a_few_hundred_steps_at_its_defaults(tmp_path):
    assert run_in_process(["model=mlp", "dataset=mnist5k", "steps=400", "eval_every=20",
                           f"hydra.run.dir={tmp_path}"]) == 0
    summary = read_summary(tmp_path)
    assert summary["target_metric"] == "val/acc" and summary["target_value"] == 0.9
    assert summary["val/acc"] >= 0.9 and summary["steps_to_target"] is not None


@pytest.mark.parametrize("model,steps", [pytest.param("resnet", 100, marks=pytest.mark.slow), ("cnn", 150)])
def test_conv_nets_train_on_digits_at_their_defaults(tmp_path, model, steps):
    """ResNet-20 stayed at chance on digits at the old one-size-fits-all lr."""
    assert run_in_process([f"model={model}", "dataset=digits", f"steps={steps}", f"eval_every={steps}",
                           f"hydra.run.dir={tmp_path}"]) == 0
    assert read_summary(tmp_path)["val/acc"] >= 0.7  # chance is 0.1


def test_the_usage_pages_default_lr_table_is_the_configs():
    """docs/usage.md's table of each model family's default learning rates says what conf/model/*.yaml says."""
    import yaml

    text = (Path(CONF_DIR).parent / "docs" / "usage.md").read_text(encoding="utf-8")
    lines = text[text.index("| model | sgd | adagrad"):].splitlines()
    header = [c.strip().split(" ")[0] for c in lines[0].strip("|").split("|")][1:]
    rows = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        for model in cells[0].split(", "):
            rows[model] = dict(zip(header, (float(c) for c in cells[1:])))
    assert set(rows) == set(_options("model"))
    for model, table in rows.items():
        config = yaml.safe_load((Path(CONF_DIR) / "model" / f"{model}.yaml").read_text())["default_lr"]
        assert table == config, model
