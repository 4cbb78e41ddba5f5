"""ResNets for the image-classification benchmark, each starting with :class:`Normalize`.

* ``small_resnet``: a basic-block ResNet with BatchNorm, widths 16-32-64 and one
  block per stage by default (~78 k parameters), so a full training run on the
  digits data (~1,000 images of 8x8 or 16x16) takes seconds on two CPU cores.
* ``resnet18``: ``torchvision.models.resnet18`` with the usual CIFAR stem (3x3
  convolution with stride 1 and no max-pool) for 32x32 inputs; never downloads weights.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from negkit.models import Normalize, register_model

__all__ = ["BasicBlock", "SmallResNet", "ImageClassifier", "small_resnet", "resnet18"]


def _stats(mean: Sequence[float] | None, std: Sequence[float] | None, in_channels: int) -> tuple:
    mean = tuple(mean) if mean is not None else (0.0,) * in_channels
    std = tuple(std) if std is not None else (1.0,) * in_channels
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} channels but in_channels={in_channels}")
    return mean, std


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a (projected when needed) identity shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """Normalize -> 3x3 stem -> stages of basic blocks (stride 1, 2, 2, ...) -> global pool -> linear.

    Args:
        num_classes: Outputs of the linear head.
        in_channels: Image channels.
        widths: Channels of each stage.
        blocks: Basic blocks per stage.
        mean: Per-channel normalisation mean (default: none, i.e. 0).
        std: Per-channel normalisation std (default: 1).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, widths: Sequence[int] = (16, 32, 64),
                 blocks: int = 1, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        super().__init__()
        if num_classes < 1 or blocks < 1 or not widths:
            raise ValueError(f"need num_classes >= 1, blocks >= 1 and widths; got {num_classes}, {blocks}, {widths}")
        self.normalize = Normalize(*_stats(mean, std, in_channels))
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        layers, c = [], widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks):
                layers.append(BasicBlock(c, w, stride=2 if (i > 0 and b == 0) else 1))
                c = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) raw pixels in [0, 1] -> (B, num_classes) logits."""
        x = self.layers(self.stem(self.normalize(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class ImageClassifier(nn.Module):
    """``Normalize`` followed by any backbone mapping normalised images to logits."""

    def __init__(self, backbone: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) raw pixels in [0, 1] -> logits."""
        return self.backbone(self.normalize(x))


@register_model("small_resnet")
def small_resnet(num_classes: int, in_channels: int = 3, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, widths: Sequence[int] = (16, 32, 64),
                 blocks: int = 1) -> SmallResNet:
    """The small basic-block ResNet used by the digits benchmark (see :class:`SmallResNet`)."""
    return SmallResNet(num_classes, in_channels, widths, blocks, mean, std)


@register_model("resnet18")
def resnet18(num_classes: int, in_channels: int = 3, mean: Sequence[float] | None = None,
             std: Sequence[float] | None = None) -> ImageClassifier:
    """torchvision's ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool), randomly initialised."""
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    return ImageClassifier(net, *_stats(mean, std, in_channels))
