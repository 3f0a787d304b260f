"""NanoSAM-style student: a ResNet trunk and a light neck that outputs SAM's 256 x 64 x 64 embedding.

The trunk's parameter names match the usual ResNet layout (conv1/bn1/layer1..4), so ImageNet
ResNet weights in that layout load into ``trunk`` unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..contract import FeatureInfo

class BasicBlock(nn.Module):
    expansion = 1
    bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))  # (conv, batch norm) that inference may fold

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _projection(cin, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4
    bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = _projection(cin, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


def _projection(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


RESNET_LAYOUTS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


class ResNetTrunk(nn.Module):
    """ResNet without pooling head; returns the stride-32 feature map."""

    bn_pairs = (("conv1", "bn1"),)

    def __init__(self, depth: str = "resnet18") -> None:
        super().__init__()
        if depth not in RESNET_LAYOUTS:
            raise ValueError(f"unknown ResNet {depth!r}; choose from {sorted(RESNET_LAYOUTS)}")
        block, counts = RESNET_LAYOUTS[depth]
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), counts), start=1):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, stride=2 if (j == 0 and i > 1) else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ResNetLevels(ResNetTrunk):
    """The same trunk (same parameter names: ``conv1``, ``bn1``, ``layer1``..``layer4``) returning every stage's
    output, high resolution first: strides 4, 8, 16, 32 (``layer1``..``layer4``), for an FPN neck (nanosam2's
    students). ``channel_list`` is lowest resolution first, as ``FpnNeck.backbone_channel_list`` wants."""

    def __init__(self, depth: str = "resnet18") -> None:
        super().__init__(depth)
        expansion = RESNET_LAYOUTS[depth][0].expansion
        self.channel_list = [planes * expansion for planes in (512, 256, 128, 64)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        levels = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            levels.append(x)
        return levels


class ResNetSamEncoder(nn.Module):
    """NanoSAM's design: 3x (conv3x3 + GELU) at stride 32, ConvTranspose x2 to stride 16,
    conv3x3 + GELU, conv1x1, plus a learned 256 x 64 x 64 position term.

    At input sizes other than 1024 the stride-16 map is resized to 64 x 64 (bilinear) before the
    output convolutions, so the embedding grid always matches SAM's decoder.
    """

    def __init__(self, depth: str = "resnet18", img_size: int = 1024, neck_channels: int = 256,
                 out_chans: int = 256, grid: int = 64) -> None:
        super().__init__()
        if img_size % 32:
            raise ValueError(f"input size must be a multiple of 32, got {img_size}")
        self.img_size = img_size
        self.grid = grid
        self.feature_info = (FeatureInfo("image_embeddings", out_chans, grid),)
        self.trunk = ResNetTrunk(depth)
        c = neck_channels
        self.up = nn.Sequential(
            nn.Conv2d(self.trunk.out_channels, c, 3, padding=1), nn.GELU(),
            nn.Conv2d(c, c, 3, padding=1), nn.GELU(),
            nn.Conv2d(c, c, 3, padding=1), nn.GELU(),
            nn.ConvTranspose2d(c, c, 3, stride=2, padding=1, output_padding=1), nn.GELU(),
        )
        self.proj = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.GELU(), nn.Conv2d(c, out_chans, 1))
        self.pos_embedding = nn.Parameter(1e-5 * torch.randn(1, out_chans, grid, grid))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(self.trunk(x))
        if x.shape[-2:] != (self.grid, self.grid):
            x = F.interpolate(x, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
        return self.proj(x) + self.pos_embedding
