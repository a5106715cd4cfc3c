"""Import of quantized PyTorch models into Relax (without our rewrite)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax

from tvm_ternary import from_torch, quantize
from tvm_ternary.frontend import QUANTIZE_ATTR

from .test_quant import small_net


def quantizer_attrs(mod: tvm.IRModule) -> list[dict]:
    return [json.loads(str(f.attrs[QUANTIZE_ATTR])) for _, f in mod.functions_items()
            if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and QUANTIZE_ATTR in f.attrs]


@pytest.mark.parametrize("scheme", ["fatnn", "w1a1", "fgq_w2a8"])
def test_quantize_op_survives_export_and_runs_in_plain_relax(scheme):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    model = quantize(small_net(), scheme, x)
    mod = from_torch(model, x)
    attrs = quantizer_attrs(mod)               # the first and last layer in int8 (quantize's default)
    assert [a["scheme"]["scheme"] for a in attrs] == ["int8", *[model[2].preset.kernel] * 3, "int8"]
    ex = tvm.compile(mod, target=tvm.target.Target("llvm"))
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy())).numpy()
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_from_torch_errors():
    model = quantize(small_net(), "ternary", torch.randn(1, 3, 6, 6))
    with pytest.raises(ValueError, match="training mode"):
        from_torch(model.train(), torch.randn(1, 3, 6, 6))
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        from_torch(lambda x: x, torch.randn(1))


def test_single_output_is_not_wrapped_in_a_tuple():
    mod = from_torch(nn.Linear(4, 2).eval(), torch.randn(1, 4))
    assert isinstance(mod["main"].ret_ty, relax.TensorType)


def test_import_raises_no_pytree_future_warnings():
    """torch 2.13's ``isinstance(treespec, LeafSpec)`` deprecation, raised inside torch.export
    once per copied spec, is not passed on to the user."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 6, 6)
    model = quantize(small_net(), "ternary", x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from_torch(model, x)
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]
