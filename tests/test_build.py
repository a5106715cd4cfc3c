"""``build``: quantized ResNet-18 end to end, equal to the PyTorch quantized model."""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax

import tvm_ternary
from tvm_ternary import QUANTIZE_SCHEMES, build, from_torch, quantize
from tvm_ternary.models import ResNet18, randomize_batchnorm
from tvm_ternary.quant import LINEAR_ONLY_SCHEMES, QuantConv2d, QuantLayer, QuantLinear

from .conftest import host_isa
from .test_rewrite import calls

TARGET = "host"   # runs here; the kernels' numerics are pinned per ISA in test_operators


@lru_cache(maxsize=None)
def resnet(scheme: str, batch: int, seed: int, first_last: str):
    """(quantized model, input, executable), built once per test run."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)                    # the layers' initial weights: the same model in every run
    float_model = randomize_batchnorm(ResNet18(num_classes=10), generator).eval()
    x = torch.randn(batch, 3, 32, 32, generator=generator)
    model = quantize(float_model, scheme, x, first_last=first_last)
    mod = from_torch(model, x)
    return model, x, mod, build(mod, TARGET)


def run(ex, x: torch.Tensor) -> np.ndarray:
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy())).numpy()


def expected(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


CASES = [(scheme, batch, seed) for scheme in QUANTIZE_SCHEMES if scheme not in LINEAR_ONLY_SCHEMES
         for batch, seed in ((1, 0), (2, 1))]


@pytest.mark.parametrize("scheme,batch,seed", CASES)
def test_resnet18_all_layers_quantized_equals_pytorch_exactly(scheme, batch, seed):
    """Every layer quantized (stem and classifier too): all the arithmetic is integer or the
    same float32 operations, so the logits must be bit-identical; one flipped threshold
    anywhere would show."""
    model, x, _, ex = resnet(scheme, batch, seed, "same")
    got, want = run(ex, x), expected(model, x)
    assert np.array_equal(got, want), f"max |diff| {np.abs(got - want).max()}"


@pytest.mark.parametrize("scheme,batch", [("ternary", 2), ("fgq_w2a4", 1)])
def test_resnet18_int8_first_and_last_layers_equal_pytorch_exactly(scheme, batch):
    """``first_last="int8"``: the stem (signed 7-bit image levels) and the classifier run on
    our int8 kernels, the rest on the scheme's; integer arithmetic throughout, so the logits
    are bit-identical to the PyTorch quantized model."""
    model, x, mod, ex = resnet(scheme, batch, 3, "int8")
    got, want = run(ex, x), expected(model, x)
    assert np.array_equal(got, want), f"max |diff| {np.abs(got - want).max()}"
    counted = calls(tvm_ternary.rewrite.rewrite_quantized(mod, tvm_ternary.target(TARGET)))
    assert counted["relax.nn.conv2d"] == 0 and counted["relax.matmul"] == 0


@pytest.mark.parametrize("scheme", ["fatnn", "w1a1"])
def test_resnet18_float_stem_and_classifier(scheme):
    """``first_last="float"`` keeps the stem and classifier in float: those run through our
    float conv kernel and Relax's float operators, whose summation order differs from
    PyTorch's in the last bits."""
    model, x, _, ex = resnet(scheme, 2, 2, "float")
    np.testing.assert_allclose(run(ex, x), expected(model, x), rtol=1e-4, atol=1e-4 * np.abs(expected(model, x)).max())


def test_resnet18_every_quantized_layer_becomes_a_kernel():
    model, _, mod, _ = resnet("ternary", 1, 0, "same")
    quantized = sum(isinstance(m, QuantLayer) for m in model.modules())
    assert quantized == 21                      # 20 convolutions and the classifier
    counted = calls(tvm_ternary.rewrite.rewrite_quantized(mod, tvm_ternary.target(TARGET)))
    assert counted["tir:kernel"] == quantized
    assert counted["relax.nn.conv2d"] == 0 and counted["relax.matmul"] == 0
    assert counted["tir:other"] == 0


SMALL_CNNS = {   # (model, input): each kind of convolution quantize once refused
    "grouped": (lambda: nn.Sequential(     # 4 channels a group (patch layout), then 40 (ordinary layout)
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 80, 3, padding=1, groups=4, bias=False),
        nn.BatchNorm2d(80), nn.ReLU(), nn.Conv2d(80, 32, 3, stride=2, padding=1, groups=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(512, 5)), (2, 3, 8, 8)),
    "dilated": (lambda: nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 40, 3, padding=2, dilation=2, bias=False),
        nn.BatchNorm2d(40), nn.ReLU(), nn.Conv2d(40, 24, 3, padding=2, dilation=(2, 1)), nn.ReLU(),
        nn.Flatten(), nn.Linear(1536, 5)), (2, 3, 8, 6)),
    "mobilenet": (lambda: nn.Sequential(   # depthwise-separable blocks: the depthwise convolutions stay float
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),
        nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32), nn.ReLU(), nn.Conv2d(32, 24, 1), nn.ReLU(),
        nn.Flatten(), nn.Linear(384, 5)), (2, 3, 8, 8)),
}


class LateShortcut(nn.Module):
    """A residual block that computes its projection shortcut after the convolutions (as
    torchvision's blocks do), then adds without a ReLU and with one."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU())
        self.conv1, self.bn1 = nn.Conv2d(32, 48, 3, 2, 1, bias=False), nn.BatchNorm2d(48)
        self.conv2, self.bn2 = nn.Conv2d(48, 48, 3, 1, 1, bias=False), nn.BatchNorm2d(48)
        self.down = nn.Sequential(nn.Conv2d(32, 48, 1, 2, bias=False), nn.BatchNorm2d(48))
        self.conv3 = nn.Conv2d(48, 48, 3, 1, 1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(48 * 16, 5))

    def forward(self, x):
        x = self.stem(x)
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        y = torch.relu(y + self.down(x))
        return self.head(self.conv3(y) + y)


@pytest.mark.parametrize("scheme", ["ternary", "w1a1"])
def test_residual_adds_run_in_kernel_epilogues_exactly(scheme):
    """A residual add (and its ReLU) becomes part of a kernel's epilogue even when the other
    operand is computed after the kernel's convolution; the logits stay bit-identical."""
    torch.manual_seed(0)
    net = randomize_batchnorm(LateShortcut()).eval()
    x = torch.randn(2, 3, 8, 8)
    model = quantize(net, scheme, x, first_last="same")
    mod = from_torch(model, x)
    counted = calls(tvm_ternary.rewrite.rewrite_quantized(mod, tvm_ternary.target(TARGET)))
    assert counted["relax.add"] == 0 and counted["relax.nn.relu"] == 0
    assert np.array_equal(run(build(mod, TARGET), x), expected(model, x))


@pytest.mark.parametrize("scheme", ["fatnn", "w1a1", "fgq_w2a4"])
@pytest.mark.parametrize("kind", SMALL_CNNS)
def test_grouped_dilated_and_depthwise_models_build_exactly(kind, scheme):
    """Every conv2d but the depthwise ones runs on our kernels (a kernel per group for grouped
    ones); the logits equal the PyTorch quantized model's."""
    torch.manual_seed(0)
    make, shape = SMALL_CNNS[kind]
    net = randomize_batchnorm(make()).eval()
    x = torch.randn(*shape)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "quantize: 2 depthwise")
        model = quantize(net, scheme, x, first_last="same")
    mod = from_torch(model, x)
    counted = calls(tvm_ternary.rewrite.rewrite_quantized(mod, tvm_ternary.target(TARGET)))
    groups = [m.groups for m in model.modules() if isinstance(m, QuantConv2d)]
    assert counted["tir:kernel"] == sum(groups) + 1                       # + the classifier
    assert counted["relax.nn.conv2d"] == (2 if kind == "mobilenet" else 0)   # the depthwise ones
    assert np.array_equal(run(build(mod, TARGET), x), expected(model, x))


def test_export_library_round_trip(tmp_path):
    model, x, _, ex = resnet("ternary", 1, 0, "same")
    path = str(tmp_path / "resnet18_ternary.so")
    ex.export_library(path)
    loaded = tvm.runtime.load_module(path)
    assert np.array_equal(run(loaded, x), expected(model, x))


def test_target_names():
    model, x, mod, _ = resnet("ternary", 1, 0, "same")
    assert np.array_equal(run(build(mod, "x86"), x), expected(model, x))     # AVX2 kernels run on any x86-64 host here
    assert isinstance(build(mod, "rasp4"), tvm.runtime.Executable)           # cross-compiled; runs on the board


def test_build_errors():
    _, _, mod, _ = resnet("ternary", 1, 0, "same")
    with pytest.raises(TypeError, match=r"expected a Relax IRModule, got ResNet18 \(call tvm_ternary.from_torch"):
        build(ResNet18())
    with pytest.raises(ValueError, match="target kind 'cuda' is not supported"):
        build(mod, {"kind": "cuda"})
    with pytest.raises(ValueError, match="invalid target"):
        build(mod, "llvm -mcpu=haswell")
    with pytest.raises(ValueError, match="no 'main' function"):
        build(tvm.IRModule())


@pytest.mark.skipif(host_isa() not in ("avx2", "avx512"),
                    reason="the generic x86 target warns only on an x86 host with AVX2 or better")
def test_build_for_a_generic_x86_target_on_an_avx2_host_warns(monkeypatch):
    monkeypatch.setattr(tvm_ternary.diagnostics, "_WARNED_GENERIC", set())
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    mod = from_torch(model, torch.randn(1, 3, 8, 8))
    with pytest.warns(tvm_ternary.SlowPathWarning, match=r"build: target llvm \(x86_64\) is generic x86-64"):
        build(mod, "llvm")


def language_mlp() -> nn.Module:
    """Linear layers as in a transformer block's MLP, input features not a multiple of 16."""
    return nn.Sequential(nn.Linear(100, 256), nn.ReLU(), nn.Linear(256, 100), nn.ReLU(), nn.Linear(100, 48))


@pytest.mark.parametrize("scheme,first_last,shape", [("bitnet", "same", (1, 100)), ("bitnet", "int8", (2, 5, 100)),
                                                     ("ternary", "same", (2, 3, 100))])
def test_linear_layers_equal_pytorch_exactly(scheme, first_last, shape):
    """``bitnet`` (per-token activations, ternary weights at 2 bits in memory): the kernels
    quantize each row themselves and multiply by its step first, the same float32 operations
    as the PyTorch model, so the outputs are bit-identical; no quantizer or step function is
    left for Relax to run. Inputs ``[batch, tokens, features]`` (which ``torch.export`` reshapes
    to rows around each matmul) run as rows, for every scheme."""
    torch.manual_seed(len(shape))
    x = torch.randn(*shape) * 2
    model = quantize(language_mlp(), scheme, x, first_last=first_last)
    x.view(-1, 100)[0] = 0.0
    x.view(-1, 100)[0, :2] = torch.tensor([-7.0734615, -1.531655])     # its level needs PyTorch's 127 / absmax
    mod = from_torch(model, x)
    got, want = run(build(mod, TARGET), x), expected(model, x)
    assert np.array_equal(got, want), f"max |diff| {np.abs(got - want).max()}"
    counted = calls(tvm_ternary.rewrite.rewrite_quantized(mod, tvm_ternary.target(TARGET)))
    assert counted["relax.matmul"] == 0 and counted["tir:kernel"] == 3 and counted["tir:other"] == 0


def test_per_token_layer_without_its_row_steps_is_an_error(monkeypatch):
    """A graph whose per-token layer does not multiply by its rows' steps is not what the
    kernel computes: a clear error, not a wrong model."""
    torch.manual_seed(0)
    x = torch.randn(2, 100)
    model = quantize(language_mlp(), "bitnet", x, first_last="same")
    monkeypatch.setattr(QuantLinear, "forward", lambda self, x: self.integer_output(x) * self.alpha + self.beta)
    with pytest.raises(ValueError, match=r"dense\[ternary_int8\(grow,a8,per_token\)\] at .*: a per-token layer's "
                                         r"result must be multiplied by its rows' steps"):
        build(from_torch(model, x), TARGET)
