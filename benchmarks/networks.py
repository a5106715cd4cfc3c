"""End-to-end runners for benchmarks/speedup.py (``--scope model``): a network of
:data:`NETWORKS` (ResNet-18, the default, or ResNet-50 with its 1x1 bottleneck convolutions;
``--models``) at 224x224, batch 1, random weights, at every precision.

* ``torch_fp32``: the float model; ``torch_int8``: PyTorch's FX graph-mode int8 (x86
  engine, default qconfig, ``impl`` ``torch-fx``), quantize and dequantize inside the timed
  call as a deployed model would; checked against the float model (:data:`INT8_TOLERANCE`).
* ``tvm_fp32``: the float model through ``tvm_ternary.build`` (``impl`` ``build``): its
  convolutions become our register-tiled float kernel, the rest Relax lowering with our
  plain float schedules; untuned.
* ours: ``tvm_ternary.quantize(model, scheme)`` built with ``tvm_ternary.build`` and
  checked against the PyTorch quantized model once: with the stem and classifier in int8
  (``impl`` ``hand``, the default of ``quantize``), kept in float (``first_last="float"``,
  ``hand-float-first-last``) and quantized by the scheme like every other layer
  (``first_last="same"``, ``hand-all-quantized``). ``w2a2`` (unsigned weights) is a layer kernel only: a model's
  W2A2 is ``w2a2_bw`` (``quantize(model, "w2a2")``, bipolar weights); so is ``int8`` (the
  first and last layers' kernel, in every precision's default model). With tuning records
  (``speedup.py --schedules hand,tuned``), the default model is built once more with them
  (``tuned``).

Every contender is timed by :mod:`harness` (a Python loop around the model call).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import tvm
from harness import Runner, runner
from precisions import Layer, torch_runner
from torch import nn
from tqdm import tqdm
from tvm import relax

import tvm_ternary
from tvm_ternary.models import ResNet18, ResNet50, randomize_batchnorm


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
    """A whole model as one benchmark row; ``network`` names it in :data:`NETWORKS`."""

    mac_count: int = 0
    network: str = "resnet18"

    @property
    def macs(self) -> int:
        return self.mac_count


NETWORKS = {"resnet18": ResNet18, "resnet50": ResNet50}
"""The networks ``--scope model`` can time (``speedup.py --models``), by name."""

SIZE = 224
"""Input height and width of the timed networks."""


def network(name: str, size: int = SIZE) -> tuple[nn.Module, torch.Tensor]:
    """Network ``name`` of :data:`NETWORKS` (1000 classes, random weights and BatchNorm
    statistics, seed 0) in eval mode and a random input of ``size`` x ``size``, batch 1."""
    if name not in NETWORKS:
        raise ValueError(f"networks.py: unknown network {name!r}; choose from {list(NETWORKS)}")
    generator = torch.Generator().manual_seed(0)
    model = randomize_batchnorm(NETWORKS[name](1000), generator).eval()
    return model, torch.randn(1, 3, size, size, generator=generator)


@lru_cache(maxsize=None)
def loaded(name: str) -> tuple[nn.Module, torch.Tensor]:
    """:func:`network` at 224x224, made once per process: every precision times the same
    weights and input."""
    return network(name)


def network_layer(name: str) -> Network:
    """The benchmark row of network ``name`` end to end at 224x224."""
    model, x = loaded(name)
    return Network(f"{name}_{SIZE}_end_to_end", "model", tuple(x.shape), (), mac_count=count_macs(model, x),
                   network=name)


FLOAT_STEM_TOLERANCE = 5e-2
"""Relative error allowed on the logits of a model with a float stem. The stem sums in
another order than oneDNN, so a first-quantizer input within an ulp of a threshold may land
on the other side: most runs see none (error ~4e-7), some see a flip that moves the random
ResNet-18's logits by ~2e-2 (observed 1.7e-2 to 1.9e-2; ternary ResNet-50: 7.6e-7 in its first
run)."""

FLOAT_TOLERANCE = 1e-4
"""Relative error allowed for the float model (no quantizers): summation order only."""

INT8_TOLERANCE = 0.1
"""Relative error allowed for PyTorch's FX int8 model against the float model: the 8-bit
quantization error of the random ResNet-18 (observed 2.0e-2 to 2.1e-2) and ResNet-50 (2.2e-2)."""

QUANTIZE_SCHEME = {"w2a2_bw": "w2a2"}
"""Benchmark precision -> ``tvm_ternary.quantize`` scheme where the names differ."""

LAYER_ONLY = {"w2a2", "int8"}
"""Precisions that no ``tvm_ternary.quantize`` scheme is (w2a2: unsigned weights; int8: the
kernel of every scheme's first and last layers): no model rows."""

ALL_QUANTIZED_TOLERANCE = 1e-5
"""Relative error allowed with every layer quantized (by the scheme, or the first and last in
int8): no float stem, so the integer layers are bit-identical to PyTorch and only the
classifier's float scale remains; this is the check that catches kernel bugs."""


def check_logits(got: np.ndarray, expected: np.ndarray, impl: str, tolerance: float) -> None:
    """Raise when ``got`` differs from ``expected`` by more than ``tolerance`` (relative L2)."""
    error = np.linalg.norm(got - expected) / np.linalg.norm(expected)
    tqdm.write(f"check: {impl} logits, relative error {error:.1e} (allowed {tolerance:.0e})")
    if error > tolerance:
        raise AssertionError(f"networks.py: {impl} logits differ from the reference by {error:.2e} (relative), "
                             f"more than {tolerance:.0e}")


def _tvm_runner(mod: tvm.IRModule, target, data: torch.Tensor, expected: np.ndarray, precision: str, impl: str,
                tolerance: float = FLOAT_STEM_TOLERANCE, tuned: str | None = None) -> Runner:
    main = relax.VirtualMachine(tvm_ternary.build(mod, target, tuned=tuned), tvm.cpu())["main"]
    x = tvm.runtime.tensor(data.numpy())
    check_logits(main(x).numpy(), expected, f"{precision} {impl}", tolerance)
    return runner(impl, lambda: [lambda: main(x)])


def network_runner(precision: str, fgq_group: int, target, name: str = "resnet18",
                   tuned: str | None = None) -> Runner | tuple[Runner, ...]:
    """A checked, timed runner of network ``name`` (:data:`NETWORKS`) at ``precision``; with
    ``tuned`` (a tuning directory or ``"shipped"``), one runner of our default model built
    with those records (``impl`` ``tuned``) instead of the hand-scheduled variants."""
    model, x = loaded(name)
    with torch.no_grad():
        reference = model(x).numpy()
    if precision == "torch_fp32":
        return torch_runner(lambda: [lambda: model(x)])
    if precision == "torch_int8":
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
        torch.backends.quantized.engine = "x86"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping("x86"), (x,))
            with torch.no_grad():
                prepared(x)
            int8 = convert_fx(prepared)
        with torch.no_grad():
            check_logits(int8(x).numpy(), reference, "torch_int8 torch-fx", INT8_TOLERANCE)
        return torch_runner(lambda: [lambda: int8(x)], "torch-fx")
    if precision == "tvm_fp32":
        return _tvm_runner(tvm_ternary.from_torch(model, x), target, x, reference, precision, "build",
                           FLOAT_TOLERANCE)
    if precision in LAYER_ONLY:
        raise ValueError(f"networks.py: no model of precision {precision!r}: it is a layer kernel only "
                         f"(a model's W2A2 is w2a2_bw)")
    runners = []
    variants = ((("int8", "tuned", ALL_QUANTIZED_TOLERANCE),) if tuned else
                (("int8", "hand", ALL_QUANTIZED_TOLERANCE),
                 ("float", "hand-float-first-last", FLOAT_STEM_TOLERANCE),
                 ("same", "hand-all-quantized", ALL_QUANTIZED_TOLERANCE)))
    for first_last, impl, tolerance in variants:
        quantized = tvm_ternary.quantize(model, QUANTIZE_SCHEME.get(precision, precision), x,
                                         first_last=first_last, group_size=fgq_group)
        with torch.no_grad():
            expected = quantized(x).numpy()
        runners.append(_tvm_runner(tvm_ternary.from_torch(quantized, x), target, x, expected, precision,
                                   impl, tolerance, tuned))
    return tuple(runners)
