"""Models: linear, MLP, small CNN, CIFAR-style ResNet (18 and 20).

Every factory takes ``in_shape`` (one sample's input shape), ``num_outputs``
and ``normalization`` (see :mod:`precond.normalization` for where the norm
layers go: ``Linear/Conv → Norm → act`` on hidden layers only).
Vector models flatten image inputs.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from precond.errors import ConfigError
from precond.normalization import NORMALIZATIONS, norm_layer
from precond.settings import LEARNING_RATE, Choice, Flag, Int, Nested, Seq, Settings, setting

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
ACTIVATION = Choice(tuple(sorted(ACTIVATIONS)))
#: widths and channel counts of hidden layers
WIDTHS = Seq(Int(lo=1, hi=100_000), min_len=1, max_len=100)


def _require_images(in_shape: Sequence[int], model: str) -> None:
    if len(in_shape) != 3:
        raise ConfigError("/model", f"image inputs (C×H×W) for model={model}", f"inputs of shape {tuple(in_shape)}",
                          "use dataset=digits/mnist/cifar10 or model=mlp")


@dataclass(frozen=True)
class DefaultLearningRates(Settings):
    """A model family's starting learning rate for each preconditioner (``model.default_lr``)."""

    sgd: float = setting(LEARNING_RATE, 0.1)
    adagrad: float = setting(LEARNING_RATE, 0.01)
    rmsprop: float = setting(LEARNING_RATE, 1e-3)
    adam: float = setting(LEARNING_RATE, 1e-3)
    bnp: float = setting(LEARNING_RATE, 1e-3)
    full_matrix: float = setting(LEARNING_RATE, 1e-3)
    kronecker: float = setting(LEARNING_RATE, 1e-3)


@dataclass(frozen=True)
class ModelSpec(Settings):
    """Base of the ``model`` config group; :meth:`build` makes the module for given inputs and outputs."""

    #: True for models that need C×H×W inputs (conv nets)
    needs_images: ClassVar[bool] = False
    #: the learning rate each preconditioner starts from with this model family (its preconditioner
    #: file reads ``${model.default_lr.<name>}``): a value that trains on every bundled dataset
    default_lr: DefaultLearningRates = setting(Nested(DefaultLearningRates), DefaultLearningRates())

    def normalizations(self) -> tuple[str, ...]:
        return NORMALIZATIONS

    def supports(self, normalization: str) -> bool:
        return normalization in self.normalizations()

    def build(self, in_shape: Sequence[int], num_outputs: int, normalization: str = "none") -> nn.Module:
        raise NotImplementedError


@dataclass(frozen=True)
class LinearModel(ModelSpec):
    """``f(x) = W x + b``: least squares with MSE, logistic/softmax regression with cross-entropy."""

    def normalizations(self) -> tuple[str, ...]:
        return ("none", "input")  # no hidden layer to normalize

    def build(self, in_shape, num_outputs, normalization="none"):
        if not self.supports(normalization):
            raise ConfigError("/normalization", "none or input for model=linear (it has no hidden layer to "
                              "normalize)", normalization, "use normalization=input, or model=mlp")
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), num_outputs))


@dataclass(frozen=True)
class MLPModel(ModelSpec):
    """``Linear → Norm → act`` for each width (``norm_after_activation``: ``Linear → act → Norm``), then a
    Linear output layer. Norm after the activation leaves nothing between the norm and the next Linear, so
    LayerNorm's centring makes ``[1/γ; −Σβ/γ]`` an exact null vector of that Linear's ``Ĥ = [h 1]``."""

    widths: tuple = setting(WIDTHS, (64, 64), fix="e.g. model.widths=[64,64]")
    activation: str = setting(ACTIVATION, "relu")
    norm_after_activation: bool = setting(Flag(), False, doc="Linear → act → Norm instead of Linear → Norm → act")
    norm_affine: bool = setting(Flag(), True, doc="false: norm layers without learnable γ, β")

    def build(self, in_shape, num_outputs, normalization="none"):
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = math.prod(in_shape)
        for width in self.widths:
            norm = norm_layer(normalization, width, conv=False, affine=self.norm_affine)
            act = ACTIVATIONS[self.activation]()
            layers += [nn.Linear(fan_in, width), *((act, norm) if self.norm_after_activation else (norm, act))]
            fan_in = width
        layers.append(nn.Linear(fan_in, num_outputs))
        return nn.Sequential(*layers)


@dataclass(frozen=True)
class CNNModel(ModelSpec):
    """``[Conv3×3 → Norm → act → MaxPool2]`` per channel count, then the head and a Linear.

    ``head=avgpool``: global average pool, so the Linear sees one number per channel (C inputs);
    ``head=flatten``: the last feature map flattened (C·H·W inputs), which keeps where a feature is,
    and with few channels learns far faster (the 8/16-channel net on 28×28 MNIST: val/acc 0.75 after
    300 steps at batch 128 with the pool, above 0.9 with flatten).
    """

    needs_images: ClassVar[bool] = True
    channels: tuple = setting(WIDTHS, (32, 64), fix="e.g. model.channels=[32,64]")
    activation: str = setting(ACTIVATION, "relu")
    head: str = setting(Choice(("avgpool", "flatten")), "avgpool",
                        doc="avgpool: global average pool; flatten: the last feature map as it is")

    def build(self, in_shape, num_outputs, normalization="none"):
        _require_images(in_shape, "cnn")
        layers: list[nn.Module] = []
        c_in, height, width = in_shape
        for c in self.channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), norm_layer(normalization, c, conv=True),
                       ACTIVATIONS[self.activation]()]
            if min(height, width) >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            c_in = c
        if self.head == "flatten":
            layers += [nn.Flatten(), nn.Linear(c_in * height * width, num_outputs)]
        else:
            layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_outputs)]
        return nn.Sequential(*layers)


RESNETS = {"resnet18": ((2, 2, 2, 2), (64, 128, 256, 512)), "resnet20": ((3, 3, 3), (16, 32, 64))}


@dataclass(frozen=True)
class ResNetModel(ModelSpec):
    """CIFAR-style ResNet: 3×3 stem (no max-pool), stages of BasicBlocks, global pool, Linear.

    ``resnet18``: 4 stages (64–512 channels, 11.2M parameters for 10 classes);
    ``resnet20``: 3 stages of 3 blocks (16–64 channels, 0.27M parameters).
    """

    needs_images: ClassVar[bool] = True
    arch: str = setting(Choice(tuple(sorted(RESNETS))), "resnet20")
    activation: str = setting(ACTIVATION, "relu")

    def build(self, in_shape, num_outputs, normalization="none"):
        _require_images(in_shape, "resnet")
        return _resnet(in_shape, num_outputs, normalization, self.arch, self.activation)


def linear(in_shape: Sequence[int], num_outputs: int, normalization: str = "none") -> nn.Module:
    return LinearModel().build(in_shape, num_outputs, normalization)


def mlp(in_shape: Sequence[int], num_outputs: int, normalization: str = "none", **values) -> nn.Module:
    return MLPModel.from_mapping(values).build(in_shape, num_outputs, normalization)


def cnn(in_shape: Sequence[int], num_outputs: int, normalization: str = "none", **values) -> nn.Module:
    return CNNModel.from_mapping(values).build(in_shape, num_outputs, normalization)


def resnet(in_shape: Sequence[int], num_outputs: int, normalization: str = "none", **values) -> nn.Module:
    return ResNetModel.from_mapping(values).build(in_shape, num_outputs, normalization)


class BasicBlock(nn.Module):
    """``act(x + Norm(Conv(act(Norm(Conv x)))))`` with a 1×1 projection when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int, normalization: str, activation: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=normalization != "batchnorm")
        self.norm1 = norm_layer(normalization, c_out, conv=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=normalization != "batchnorm")
        self.norm2 = norm_layer(normalization, c_out, conv=True)
        self.act = ACTIVATIONS[activation]()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=normalization != "batchnorm"),
                norm_layer(normalization, c_out, conv=True),
            )

    def forward(self, x):
        out = self.act(self.norm1(self.conv1(x)))
        return self.act(self.norm2(self.conv2(out)) + self.shortcut(x))


#: arch → (blocks per stage, channels per stage)
RESNETS = {"resnet18": ((2, 2, 2, 2), (64, 128, 256, 512)), "resnet20": ((3, 3, 3), (16, 32, 64))}


def _resnet(in_shape: Sequence[int], num_outputs: int, normalization: str, arch: str, activation: str) -> nn.Module:
    blocks, widths = RESNETS[arch]
    layers: list[nn.Module] = [
        nn.Conv2d(in_shape[0], widths[0], 3, padding=1, bias=normalization != "batchnorm"),
        norm_layer(normalization, widths[0], conv=True),
        ACTIVATIONS[activation](),
    ]
    c_in = widths[0]
    for stage, (n, c) in enumerate(zip(blocks, widths)):
        for i in range(n):
            layers.append(BasicBlock(c_in, c, 2 if (i == 0 and stage > 0) else 1, normalization, activation))
            c_in = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_outputs)]
    return nn.Sequential(*layers)
