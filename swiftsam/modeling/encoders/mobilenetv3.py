"""MobileNetV3-Large (Howard et al., 2019) as a multi-level trunk for an FPN neck (nanosam2's students).

Written here (no torchvision), with torchvision's module names: ``features.0`` the stem (conv, batch norm,
hardswish), ``features.1`` .. ``features.15`` the inverted residual blocks (``features.N.block.K.0`` conv,
``.1`` batch norm; squeeze-and-excitation as ``features.N.block.K.fc1`` / ``fc2``), ``features.16`` the last
1x1 conv to 960 channels. A torchvision ImageNet state dict's ``features.*`` entries load into
:class:`MobileNetV3Large` unchanged (its classifier is not part of a trunk). Batch norms use torchvision's
eps (1e-3).

``forward`` returns four levels, high resolution first: the outputs of ``features.3`` (stride 4, 24 channels),
``features.6`` (stride 8, 40), ``features.12`` (stride 16, 112) and ``features.16`` (stride 32, 960).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

BN_EPS = 1e-3  # torchvision's MobileNetV3 batch norms: eps 0.001, momentum 0.01
BN_MOMENTUM = 0.01

# one row per inverted residual block (features.1 .. features.15):
# (kernel, expanded channels, output channels, squeeze-and-excitation, activation, stride)
LARGE_BLOCKS: tuple[tuple[int, int, int, bool, str, int], ...] = (
    (3, 16, 16, False, "relu", 1),
    (3, 64, 24, False, "relu", 2),
    (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2),
    (5, 120, 40, True, "relu", 1),
    (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hardswish", 2),
    (3, 200, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1),
    (3, 480, 112, True, "hardswish", 1),
    (3, 672, 112, True, "hardswish", 1),
    (5, 672, 160, True, "hardswish", 2),
    (5, 960, 160, True, "hardswish", 1),
    (5, 960, 160, True, "hardswish", 1),
)
STEM_CHANNELS = 16
LAST_CHANNELS = 960  # features.16: 6 x 160
# the ``features`` index whose output is each level, high resolution first (strides 4, 8, 16, 32)
LEVEL_INDICES = (3, 6, 12, 16)


def make_divisible(value: float, divisor: int = 8) -> int:
    """The nearest multiple of ``divisor`` to ``value``, never below 90 % of it (MobileNet's channel rounding)."""
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * value else out


def _activation(name: str | None) -> nn.Module | None:
    if name is None:
        return None
    return {"relu": nn.ReLU, "hardswish": nn.Hardswish}[name]()


class ConvBNAct(nn.Sequential):
    """conv (no bias) -> batch norm -> optional activation, as ``0``, ``1``, ``2`` (torchvision's
    Conv2dNormActivation). Inference folds the batch norm into the conv (``engines.optimize``)."""

    bn_pairs = (("0", "1"),)

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 activation: str | None = None) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM),
        ]
        act = _activation(activation)
        if act is not None:
            layers.append(act)
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Channel gates from the global average: ``fc1`` (1x1 conv) -> ReLU -> ``fc2`` -> hardsigmoid."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean(dim=(2, 3), keepdim=True)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(scale))))


class InvertedResidual(nn.Module):
    """1x1 expansion (left out when it would not widen), depthwise conv, optional squeeze-and-excitation,
    1x1 linear projection; a residual connection when the block keeps the stride and width."""

    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, se: bool, activation: str,
                 stride: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(ConvBNAct(cin, expanded, 1, activation=activation))
        layers.append(ConvBNAct(expanded, expanded, kernel, stride, groups=expanded, activation=activation))
        if se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4)))
        layers.append(ConvBNAct(expanded, cout, 1))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_residual else y


class MobileNetV3Large(nn.Module):
    """MobileNetV3-Large's ``features`` (no classifier), returning the four levels of ``LEVEL_INDICES``.

    ``channel_list`` is lowest resolution first (960, 112, 40, 24), as ``FpnNeck.backbone_channel_list`` wants.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(3, STEM_CHANNELS, 3, 2, activation="hardswish")]
        cin = STEM_CHANNELS
        for kernel, expanded, cout, se, activation, stride in LARGE_BLOCKS:
            layers.append(InvertedResidual(cin, kernel, expanded, cout, se, activation, stride))
            cin = cout
        layers.append(ConvBNAct(cin, LAST_CHANNELS, 1, activation="hardswish"))
        self.features = nn.Sequential(*layers)
        widths = [STEM_CHANNELS] + [row[2] for row in LARGE_BLOCKS] + [LAST_CHANNELS]
        self.channel_list = [widths[i] for i in reversed(LEVEL_INDICES)]
        self._init_weights()

    def _init_weights(self) -> None:  # torchvision's initialisation
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        levels = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in LEVEL_INDICES:
                levels.append(x)
        return levels
