"""The config schema, tested through itself: every leaf key of every option of every group (and of
the top level) refuses a wrong-typed and an out-of-range value in one line naming that key, before
any data or model is built. The bad values come from each key's own rule, not from a list kept here,
so a key added without a working rule fails this test."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from precond.errors import ConfigError
from precond.run import config as run_config
from precond.run.config import GROUPS, rule_at, settings_from_config, settings_from_plain
from precond.run.entry import CONF_DIR

#: context an option needs to be valid at all (a conv net needs images; a norm layer a hidden layer)
CONTEXT = {
    ("model", "cnn"): ["dataset=digits"], ("model", "resnet"): ["dataset=digits"],
    ("model", "resnet18"): ["dataset=digits"], ("normalization", "batchnorm"): ["model=mlp"],
    ("normalization", "layernorm"): ["model=mlp"], ("curvature", "dense"): [], ("curvature", "lanczos"): [],
}


def _options() -> list[tuple[str, str]]:
    return [(group, p.stem) for group in GROUPS for p in sorted((Path(CONF_DIR) / group).glob("*.yaml"))]


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _leaves(node, prefix: str) -> list[str]:
    """Dotted keys of the values under ``node`` (a list is one value)."""
    out = []
    for key, value in node.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key == "_target_":
            continue
        out += _leaves(value, dotted) if isinstance(value, dict) else [dotted]
    return out


def _refused_everywhere(cfg, keys: list[str]) -> list[str]:
    """Feed each key its rule's refused values; return what went wrong (empty: every value refused well)."""
    settings = settings_from_config(cfg)  # the option itself is valid
    plain = OmegaConf.to_container(cfg, resolve=True)
    wrong = []
    for key in keys:
        for bad in rule_at(settings, key).refused():
            changed = copy.deepcopy(plain)
            node = changed
            *parents, last = key.split(".")
            for part in parents:
                node = node[part]
            node[last] = bad
            if key == "preconditioner.lr":
                changed["lr"] = bad  # lr: ${preconditioner.lr} carries it to the top level too
            try:
                settings_from_plain(changed)
                wrong.append(f"{key}={bad!r} was accepted")
            except ConfigError as err:
                message = str(err)
                if not message.startswith(key) or "\n" in message:
                    wrong.append(f"{key}={bad!r} gave {message!r}")
    return wrong


@pytest.mark.parametrize(("group", "option"), _options())
def test_every_key_of_every_option_refuses_a_wrong_type_and_an_out_of_range_value(group, option):
    cfg = _compose([f"{group}={option}", *CONTEXT.get((group, option), [])])
    keys = _leaves(OmegaConf.to_container(cfg[group], resolve=True), group)
    assert keys or option in ("linear", "constant", "none") or group == "normalization"
    assert _refused_everywhere(cfg, keys) == []


def test_every_top_level_key_refuses_a_wrong_type_and_an_out_of_range_value():
    cfg = _compose([])
    plain = OmegaConf.to_container(cfg, resolve=True)
    keys = [k for k in _leaves(plain, "") if k.split(".")[0] not in GROUPS]
    assert {"seed", "lr", "steps", "target.metric", "target.value", "progress", "name"} <= set(keys)
    assert _refused_everywhere(cfg, keys) == []


@pytest.mark.parametrize(("where", "key"), [
    ({}, "stpes"), ({"model": "extra"}, "model.extra"), ({"target": "nope"}, "target.nope"),
    ({"schedule": "warmup_step"}, "schedule.warmup_step"), ({"logger": "projcet"}, "logger.projcet"),
])
def test_an_unknown_key_is_refused_at_every_level(where, key):
    plain = OmegaConf.to_container(_compose(["schedule=warmup"]), resolve=True)
    node = plain[next(iter(where))] if where else plain
    node[key.split(".")[-1]] = 1
    with pytest.raises(ConfigError) as err:
        settings_from_plain(plain)
    assert str(err.value).startswith(f"{key}: expected one of the keys")


def test_a_target_outside_the_registered_settings_classes_is_refused_and_never_imported():
    plain = OmegaConf.to_container(_compose([]), resolve=True)
    plain["model"]["_target_"] = "os.system"
    with pytest.raises(ConfigError, match=r"^model\._target_: expected one of the settings classes"):
        settings_from_plain(plain)


@pytest.mark.parametrize(("override", "key"), [
    ("lr='${lr}'", "lr"), ("seed='${oc.env:PRECOND_SURELY_UNSET}'", "seed"),
    ("steps='${nowhere.at_all}'", "steps"),
])
def test_interpolation_errors_and_missing_environment_variables_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        settings_from_config(_compose([override]))
    assert str(err.value).startswith(f"{key}: expected a value that resolves") and "\n" not in str(err.value)


@pytest.mark.parametrize("seed", [2**64, 2**63, -1, True])
def test_seeds_torch_cannot_take_are_refused(seed):
    plain = OmegaConf.to_container(_compose([]), resolve=True)
    plain["seed"] = seed
    with pytest.raises(ConfigError, match=r"^seed: expected an integer in \[0, 9223372036854775807\]"):
        settings_from_plain(plain)


@pytest.mark.parametrize(("overrides", "message"), [
    (["preconditioner=bnp", "regularization=l2"], "regularization.variable: expected penalties in variable=p"),
    (["preconditioner=bnp", "curvature=lanczos"], "curvature.spaces: expected [p] with preconditioner=bnp"),
    (["preconditioner=bnp", "model=mlp", "normalization=batchnorm"], "normalization: expected no BatchNorm"),
    (["model=mlp", "normalization=batchnorm", "batch_size=1"], "batch_size: expected at least 2"),
    (["batch_size=3000"], "batch_size: expected at most the training-split size 2048"),
    (["curvature=lanczos", "curvature.batch_size=5000"], "curvature.batch_size: expected at most the training"),
    (["target.metric=val/acc"], "target.metric: expected one of"),
    (["dataset=digits", "target.metric=val/acc", "batch_size=1300"], "batch_size: expected at most the training"),
    (["curvature=lanczos", "curvature.every=150"], "curvature.every: expected a positive multiple of eval_every"),
    (["schedule=warmup", "steps=50"], "schedule.warmup_step"),
    (["model=cnn"], "model: expected a model for vector inputs"),
    (["normalization=layernorm"], "normalization: expected a normalization LinearModel can hold"),
    (["dtype=float64", "precision=bf16"], "precision: expected fp32 with dtype=float64"),
    (["channels_last=true"], "channels_last: expected false for vector inputs"),
])
def test_rules_that_join_groups_are_refused_before_any_data_is_built(overrides, message, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("data were built before the config was checked")

    monkeypatch.setattr(run_config, "build_data", no_data)
    with pytest.raises(ConfigError) as err:
        settings_from_config(_compose(overrides))
    assert str(err.value).startswith(message)


def test_the_library_builds_the_same_settings_and_so_refuses_the_same_values():
    import torch

    from precond import build_optimizer
    from precond.curvature import measure_curvature
    from precond.models import mlp
    from precond.normalization import norm_layer
    from precond.regularizers import make_penalty

    params = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(ConfigError, match=r"^momentum: expected a finite number in \[0, 1\]"):
        build_optimizer(params, "sgd", lr=0.1, momentum=2.0)
    with pytest.raises(ConfigError, match=r"^betas: expected a list of 2"):
        build_optimizer(params, "adam", lr=0.1, betas=[0.9])
    with pytest.raises(ConfigError, match=r"^rho"):
        build_optimizer(params, "bnp", lr=0.1, rho=0.0, model=torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match=r"^form: expected one of"):
        make_penalty("l1", "p", form="lasso")
    with pytest.raises(ConfigError, match=r"^widths"):
        mlp((4,), 2, widths=[0])
    with pytest.raises(ConfigError, match=r"^name: expected one of"):
        norm_layer("groupnorm", 4, conv=False)
    model = torch.nn.Linear(2, 1)
    batch = [(torch.zeros(4, 2), torch.zeros(4, 1))]
    with pytest.raises(ConfigError, match=r"^bn_mode: expected one of"):
        measure_curvature(model, torch.nn.functional.mse_loss, batch, bn_mode="frozen")
