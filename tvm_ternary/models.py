"""Reference networks for tests, examples and benchmarks: ResNet-18 and ResNet-50 (random
weights; nothing is downloaded)."""

from __future__ import annotations

from torch import Tensor, nn


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """A block's shortcut: a 1x1 conv-BN when the shape changes, else None (identity)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN pairs and a shortcut (1x1 conv-BN when the
    shape changes); ReLU after the second BN's sum."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = _projection(in_channels, channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + shortcut)


class Bottleneck(nn.Module):
    """ResNet bottleneck block (ResNet v1.5, as torchvision's): a 1x1 conv that reduces to
    ``channels``, a 3x3 conv with the block's stride, a 1x1 conv that expands to
    ``channels * expansion``, each followed by BatchNorm; ReLU after the first two and after
    the sum with the shortcut (1x1 conv-BN when the shape changes, identity otherwise)."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, 1, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, 1, 0, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.downsample = _projection(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + shortcut)


class ResNet(nn.Module):
    """A ResNet (He et al. 2016): a 7x7/2 conv-BN-ReLU stem, 3x3/2 max pool, four stages of
    ``depths`` blocks with ``width``, 2x, 4x, 8x channels (times the block's expansion at its
    output; stride 2 at the first block of the second stage on), global average pool and a
    linear classifier."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths: tuple[int, int, int, int],
                 num_classes: int = 1000, width: int = 64, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, channels = [], width
        for i, (depth, inner) in enumerate(zip(depths, [width, 2 * width, 4 * width, 8 * width])):
            blocks = []
            for j in range(depth):
                blocks.append(block(channels, inner, 2 if i > 0 and j == 0 else 1))
                channels = inner * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


class ResNet18(ResNet):
    """ResNet-18: two basic blocks per stage. ``width=64`` is the ImageNet network."""

    def __init__(self, num_classes: int = 1000, width: int = 64, in_channels: int = 3):
        super().__init__(BasicBlock, (2, 2, 2, 2), num_classes, width, in_channels)


class ResNet50(ResNet):
    """ResNet-50 (stride on the 3x3 conv, as in v1.5): 3, 4, 6 and 3 bottleneck blocks.
    ``width=64`` is the ImageNet network: 53 convolutions (stem, 48 in the blocks, 4
    shortcut projections)."""

    def __init__(self, num_classes: int = 1000, width: int = 64, in_channels: int = 3):
        super().__init__(Bottleneck, (3, 4, 6, 3), num_classes, width, in_channels)


def randomize_batchnorm(model: nn.Module, generator=None) -> nn.Module:
    """Give every BatchNorm random running statistics and affine parameters (as a trained
    network would have), so folding them is actually exercised."""
    import torch
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
    return model
