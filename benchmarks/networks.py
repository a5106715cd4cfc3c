"""End-to-end runners for benchmarks/speedup.py (``--scope model``): ResNet-18 at 224x224,
batch 1, random weights, at every precision.

* ``torch_fp32``: the float model; ``torch_int8``: PyTorch's FX graph-mode int8 (x86
  engine, default qconfig), quantize and dequantize inside the timed call as a deployed
  model would.
* ``tvm_fp32``: the float model through ``tvm_ternary.build``: its convolutions become our
  register-tiled float kernel, the rest Relax lowering with our plain float schedules; untuned.
* ours: ``tvm_ternary.quantize(model, precision)`` built with ``tvm_ternary.build`` and
  checked against the PyTorch quantized model once: with the stem and classifier kept in
  float (``impl`` ``hand``, the default of ``quantize``) and with every layer quantized
  (``hand-all-quantized``).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import tvm
from precisions import Layer, Runner, time_tvm, torch_runner
from torch import nn
from tvm import relax

import tvm_ternary
from tvm_ternary.models import ResNet18, randomize_batchnorm


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of the model's Conv2d and Linear layers for input ``x``."""
    total = 0

    def hook(module, args, out):
        nonlocal total
        total += out.numel() * (module.weight[0].numel() if isinstance(module, (nn.Conv2d, nn.Linear)) else 0)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


@dataclass(frozen=True)
class Network(Layer):
    """A whole model as one benchmark row."""

    mac_count: int = 0

    @property
    def macs(self) -> int:
        return self.mac_count


def resnet18() -> tuple[nn.Module, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    model = randomize_batchnorm(ResNet18(1000), generator).eval()
    return model, torch.randn(1, 3, 224, 224, generator=generator)


MODEL, INPUT = resnet18()
NETWORK = Network("resnet18_224_end_to_end", "model", tuple(INPUT.shape), (), mac_count=count_macs(MODEL, INPUT))


FLOAT_STEM_TOLERANCE = 1e-2
"""Relative error allowed on the logits. The float stem sums in another order than oneDNN,
and at 224x224 that moves a handful of the ~200k first-quantizer inputs across a threshold.
All-integer models are bit-identical (tests/test_build.py); a real bug moves the logits by
far more."""


def _tvm_runner(mod: tvm.IRModule, target, expected: np.ndarray, impl: str) -> Runner:
    vm = relax.VirtualMachine(tvm_ternary.build(mod, target), tvm.cpu())
    args = [tvm.runtime.tensor(INPUT.numpy())]
    got = vm["main"](*args).numpy()
    error = np.linalg.norm(got - expected) / np.linalg.norm(expected)
    if error > FLOAT_STEM_TOLERANCE:
        raise AssertionError(f"networks.py: {impl} logits differ from PyTorch's by {error:.2e} (relative)")
    return Runner(impl, lambda repeat: time_tvm(vm, "main", args, repeat))


def network_runner(precision: str, fgq_group: int, target) -> Runner | tuple[Runner, ...]:
    """A checked, timed runner of ResNet-18 at ``precision``."""
    with torch.no_grad():
        reference = MODEL(INPUT).numpy()
    if precision == "torch_fp32":
        return torch_runner(lambda: MODEL(INPUT))
    if precision == "torch_int8":
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
        torch.backends.quantized.engine = "x86"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = prepare_fx(copy.deepcopy(MODEL), get_default_qconfig_mapping("x86"), (INPUT,))
            with torch.no_grad():
                prepared(INPUT)
            int8 = convert_fx(prepared)
        return torch_runner(lambda: int8(INPUT))
    if precision == "tvm_fp32":
        return _tvm_runner(tvm_ternary.from_torch(MODEL, INPUT), target, reference, "relax+float-schedules")
    runners = []
    for keep_first_last, impl in ((True, "hand"), (False, "hand-all-quantized")):
        quantized = tvm_ternary.quantize(MODEL, precision, INPUT, keep_first_last=keep_first_last,
                                         group_size=fgq_group)
        with torch.no_grad():
            expected = quantized(INPUT).numpy()
        runners.append(_tvm_runner(tvm_ternary.from_torch(quantized, INPUT), target, expected, impl))
    return tuple(runners)
