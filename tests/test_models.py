"""Models: shapes, parameter counts, and the documented norm-layer position."""
import pytest
import torch
from torch import nn

from precond import models
from precond.errors import ConfigError


@pytest.mark.parametrize("norm", ["none", "input", "batchnorm", "layernorm"])
@pytest.mark.parametrize("factory,shape", [
    (models.mlp, (1, 8, 8)), (models.cnn, (1, 8, 8)), (models.resnet, (3, 16, 16)),
])
def test_models_forward_every_normalization(factory, shape, norm):
    model = factory(shape, 10, norm)
    out = model(torch.randn(4, *shape))
    assert out.shape == (4, 10)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    has_ln = any(isinstance(m, (nn.LayerNorm, nn.GroupNorm)) for m in model.modules())
    assert has_bn == (norm == "batchnorm") and has_ln == (norm == "layernorm")


def test_mlp_places_norm_between_linear_and_activation():
    m = models.mlp((5,), 3, "batchnorm", widths=(4, 6))
    kinds = [type(layer).__name__ for layer in m]
    assert kinds == ["Flatten", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]


def test_resnet_sizes():
    assert sum(p.numel() for p in models.resnet((3, 32, 32), 10, "batchnorm", arch="resnet18").parameters()) \
        == 11_173_962
    assert sum(p.numel() for p in models.resnet((3, 32, 32), 10, "batchnorm", arch="resnet20").parameters()) \
        < 300_000


def test_linear_refuses_hidden_layer_norms_with_a_hint():
    with pytest.raises(ConfigError, match="normalization=input"):
        models.linear((4,), 1, "batchnorm")
