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


@pytest.mark.parametrize("head,linear_inputs", [("avgpool", 16), ("flatten", 16 * 7 * 7)])
def test_cnn_heads_feed_the_linear_the_pooled_or_the_whole_last_map(head, linear_inputs):
    """28×28 inputs, channels 8 and 16, two MaxPool2: the last map is 16×7×7. Parameters by hand:
    conv 1·8·9+8, conv 8·16·9+16, Linear (inputs+1)·10 (the 8/16-channel flatten net of bn_vs_bnp_cnn: 9,098)."""
    model = models.cnn((1, 28, 28), 10, "none", channels=(8, 16), head=head)
    assert isinstance(model[-1], nn.Linear) and model[-1].in_features == linear_inputs
    assert sum(p.numel() for p in model.parameters()) == (8 * 9 + 8) + (8 * 16 * 9 + 16) + (linear_inputs + 1) * 10
    x = torch.randn(2, 1, 28, 28)
    assert model(x).shape == (2, 10)
    if head == "flatten":  # the logits see where a feature is: moving the image changes them, pooled or not
        features = model[:-2](x)
        assert torch.equal(model[-1](features.flatten(1)), model(x))


def test_cnn_flatten_head_on_non_square_images():
    model = models.cnn((3, 12, 20), 4, "batchnorm", channels=(2,), head="flatten")
    assert model[-1].in_features == 2 * 6 * 10 and model(torch.randn(3, 3, 12, 20)).shape == (3, 4)


def test_resnet_sizes():
    assert sum(p.numel() for p in models.resnet((3, 32, 32), 10, "batchnorm", arch="resnet18").parameters()) \
        == 11_173_962
    assert sum(p.numel() for p in models.resnet((3, 32, 32), 10, "batchnorm", arch="resnet20").parameters()) \
        < 300_000


def test_linear_refuses_hidden_layer_norms_with_a_hint():
    with pytest.raises(ConfigError, match="normalization=input"):
        models.linear((4,), 1, "batchnorm")
