"""``from_torch``: a (quantized) PyTorch model -> Relax ``IRModule``.

The model is captured by ``torch.export`` and imported by
``tvm.relax.frontend.torch.from_exported_program``. The ``tvm_ternary::quantize`` custom op
(see :mod:`tvm_ternary.quant.layers`) becomes a ``call_tir`` to a small PrimFunc that
computes the same levels, marked with the function attribute :data:`QUANTIZE_ATTR` (its
``lo``, ``step`` and the consuming layer's scheme) so that :mod:`tvm_ternary.rewrite`
finds it. Per-token activations (``tvm_ternary::quantize_per_token`` and
``tvm_ternary::token_step``) become PrimFuncs marked :data:`PER_TOKEN_ATTR` (the layer's
scheme) and :data:`TOKEN_STEP_ATTR`. Without the rewrite the module still runs, in plain Relax.
"""

from __future__ import annotations

import json
import warnings
from typing import Sequence

import torch
import tvm
from torch import nn
from tvm import relax, te, tirx
from tvm.relax.frontend.torch import from_exported_program

from .operators.compute import per_token_levels_te, per_token_step_te, quantize_levels
from .quant import layers  # noqa: F401  (registers the tvm_ternary::quantize op)

QUANTIZE_ATTR = "tvm_ternary.quantize"
"""PrimFunc attribute of an activation quantizer: JSON ``{"lo", "step", "scheme"}``."""
PER_TOKEN_ATTR = "tvm_ternary.quantize_per_token"
"""PrimFunc attribute of a per-token activation quantizer: the consuming layer's scheme (JSON)."""
OPAQUE = {"op_pattern": 8}
"""Our quantizers' PrimFuncs are opaque to Relax's operator fusion (``kOpaque``): fused with
the reshapes around a dense layer over ``[batch, tokens, features]`` they broke ``FuseTIR``."""
TOKEN_STEP_ATTR = "tvm_ternary.token_step"
"""PrimFunc attribute of a per-token quantizer's row step (``absmax / 127``, ``[..., 1]``)."""


def quantize_prim_func(shape: Sequence[int], dtype: str, num_thresholds: int, lo: float, step: float,
                       scheme: str) -> tirx.PrimFunc:
    """PrimFunc ``(x, thresholds) -> levels`` carrying :data:`QUANTIZE_ATTR`."""
    x = te.placeholder(tuple(shape), dtype, name="x")
    thresholds = te.placeholder((num_thresholds,), dtype, name="thresholds")
    info = json.dumps({"lo": lo, "step": step, "scheme": json.loads(scheme)}, sort_keys=True)
    func = te.create_prim_func([x, thresholds, quantize_levels(x, thresholds, lo, step, dtype)])
    return func.without_attr("global_symbol").with_attrs({QUANTIZE_ATTR: info, **OPAQUE})   # named by the module


def _convert_quantize(node: torch.fx.Node, importer) -> relax.Var:
    x, thresholds = importer.env[node.args[0]], importer.env[node.args[1]]
    lo, step, scheme = float(node.args[2]), float(node.args[3]), str(node.args[4])
    shape = [int(d) for d in x.ty.shape]
    dtype = x.ty.dtype.dtype
    count = int(thresholds.ty.shape[0])
    func = quantize_prim_func(shape, dtype, count, lo, step, scheme)
    gv = importer.block_builder.add_func(func, "tvm_ternary_quantize")
    return importer.block_builder.emit(relax.call_tir(gv, [x, thresholds], relax.TensorType(shape, dtype)))


def _convert_per_token(node: torch.fx.Node, importer) -> relax.Var:
    x = importer.env[node.args[0]]
    shape, dtype = [int(d) for d in x.ty.shape], x.ty.dtype.dtype
    placeholder = te.placeholder(tuple(shape), dtype, name="x")
    func = te.create_prim_func([placeholder, per_token_levels_te(placeholder)]).without_attr("global_symbol")
    gv = importer.block_builder.add_func(func.with_attrs({PER_TOKEN_ATTR: str(node.args[1]), **OPAQUE}),
                                         "tvm_ternary_quantize_per_token")
    return importer.block_builder.emit(relax.call_tir(gv, [x], relax.TensorType(shape, dtype)))


def _convert_token_step(node: torch.fx.Node, importer) -> relax.Var:
    x = importer.env[node.args[0]]
    placeholder = te.placeholder(tuple(int(d) for d in x.ty.shape), x.ty.dtype.dtype, name="x")
    step = per_token_step_te(placeholder)
    func = te.create_prim_func([placeholder, step]).without_attr("global_symbol").with_attrs({TOKEN_STEP_ATTR: "",
                                                                                             **OPAQUE})
    gv = importer.block_builder.add_func(func, "tvm_ternary_token_step")
    return importer.block_builder.emit(relax.call_tir(gv, [x], relax.TensorType(
        [int(d) for d in step.shape], str(step.dtype))))


CUSTOM_CONVERT_MAP = {"quantize.default": _convert_quantize, "quantize_per_token.default": _convert_per_token,
                      "token_step.default": _convert_token_step}
"""Converters of our custom ops for ``from_exported_program(custom_convert_map=...)``."""


def from_torch(model: nn.Module, example_inputs: tuple | torch.Tensor) -> tvm.IRModule:
    """Export ``model`` (in eval mode) with ``torch.export`` and import it into Relax.

    ``main`` takes the example inputs' shapes (static) and returns the model's output
    (a single tensor is not wrapped in a tuple). Parameters become constants.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"from_torch: model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if model.training:
        raise ValueError("from_torch: the model is in training mode; call model.eval() first "
                         "(quantized layers export their integer inference semantics)")
    with torch.no_grad(), warnings.catch_warnings():
        # torch 2.13's pytree deprecation, raised from inside torch.export's own code (not ours
        # to fix), once per copied spec: a wall of FutureWarnings on every model
        warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
        program = torch.export.export(model, inputs)
        return from_exported_program(program, unwrap_unit_return_tuple=True,
                                     custom_convert_map=CUSTOM_CONVERT_MAP)
