"""``models``: the reference networks' structure, and ResNet-50 (bottleneck blocks, 1x1
convolutions) quantized and built end to end, equal to the PyTorch quantized model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax

import tvm_ternary
from tvm_ternary.models import Bottleneck, ResNet18, ResNet50, randomize_batchnorm


def convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("batch,size,width,classes", [(1, 32, 8, 10), (2, 64, 4, 7)])
def test_resnet50_output_shape(batch, size, width, classes):
    model = ResNet50(num_classes=classes, width=width).eval()
    with torch.no_grad():
        out = model(torch.randn(batch, 3, size, size))
    assert out.shape == (batch, classes)
    assert model.fc.in_features == 32 * width          # 8x width bottleneck channels, expanded 4x


def test_resnet50_structure():
    """53 convolutions at the default structure: the stem, 3 in each of the 16 bottlenecks
    and a projection shortcut at the start of each of the 4 stages; the ImageNet network
    has ResNet-50's 25.6 M parameters."""
    model = ResNet50()
    assert len(convs(model)) == 53
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16
    assert sum(b.downsample is not None for b in blocks) == 4
    assert sum(p.numel() for p in model.parameters()) == 25_557_032
    assert sum(m.kernel_size == (1, 1) for m in convs(model)) == 36        # 2 per block and 4 shortcuts


def test_bottleneck_strides_on_the_3x3_conv():
    """ResNet v1.5: the 3x3 conv carries the stride, the 1x1 convs do not."""
    block = Bottleneck(64, 32, 2)
    assert (block.conv1.stride, block.conv2.stride, block.conv3.stride) == ((1, 1), (2, 2), (1, 1))
    assert block.downsample[0].stride == (2, 2)
    assert block.eval()(torch.randn(1, 64, 8, 8)).shape == (1, 128, 4, 4)
    assert Bottleneck(128, 32, 1).downsample is None                      # shape kept: identity shortcut


def test_resnet18_still_has_its_structure():
    assert len(convs(ResNet18())) == 20                                    # 1 + 16 + 3 shortcuts


@pytest.mark.parametrize("width", [16, 8])
def test_resnet50_all_layers_quantized_equals_pytorch_exactly(width):
    """Every layer of a small ResNet-50 quantized to ternary (stem and classifier too), built
    for this host: the 1x1 reduce/expand convolutions, strided 3x3s and projection shortcuts
    of the bottlenecks are integer arithmetic or the same float32 operations as PyTorch's, so
    the logits must be bit-identical. Width 8 gives the first stage's 3x3 convolutions 8
    input channels, fewer than half a word: the patch layout on any x86 host (its 1x1
    convolutions, a single tap, keep the ordinary layout in a partly filled word)."""
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():                      # conv and linear weights: seeded, test-local
        torch.manual_seed(0)
        float_model = randomize_batchnorm(ResNet50(num_classes=10, width=width), generator).eval()
    x = torch.randn(1, 3, 32, 32, generator=generator)
    model = tvm_ternary.quantize(float_model, "ternary", x, first_last="same")
    ex = tvm_ternary.build(tvm_ternary.from_torch(model, x), "host")
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy())).numpy()
    with torch.no_grad():
        want = model(x).numpy()
    assert np.array_equal(got, want), f"max |diff| {np.abs(got - want).max()}"
