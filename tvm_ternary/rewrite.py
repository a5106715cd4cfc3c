"""The Relax pass that puts our kernels into an imported model.

TVM 0.27 has no Relay, so the graph rewrite is a Relax pass over ``main``'s dataflow
bindings. A *quantized layer* is ``relax.nn.conv2d`` or ``relax.matmul`` whose data is an
activation quantizer (a ``call_tir`` marked with :data:`~tvm_ternary.frontend.QUANTIZE_ATTR`,
which names the kernel scheme) and whose weights are constant integers. Each one becomes:

- a data stage: quantize + pack (bit planes, or FGQ's byte layout) on the device, fused;
- the kernel (``call_tir``), weights packed once, here, at compile time;
- its epilogue fused: the layer's ``multiply``/``add`` by per-channel constants (scale,
  bias, folded BatchNorm) and a ``relu`` that follow it alone. When that result feeds only
  the activation quantizer of another quantized layer of the same scheme, all of it and
  the next quantizer fold into per-channel **integer thresholds** on the int32
  accumulator (exact: found by bisection on the very float32 operations the graph would
  run), and the kernel writes the next layer's packed input directly. Otherwise the
  kernel writes float32 (``y * scale + bias``, ReLU), and the graph goes on in Relax; a
  conv2d without ReLU whose result then goes alone into a residual ``add`` with another
  tensor (and a ``relu`` after it) adds that tensor in its epilogue too, and is emitted at
  the add (the other operand may be computed after the convolution).

A grouped conv2d becomes a channel split, a data stage and kernel per group (one
function serves all groups) and a concat, with the float epilogue; a dilated one passes
its dilation to the kernel. An FGQ layer runs as an int8-scheme kernel: its weights times
their group multipliers (integers -7..7 in models) as 4-bit signed bytes times its 8- or
4-bit activations, one exact int32 dot product (``vpdpbusd``, ``vpmaddubsw``), with the
float scale per channel in the same float epilogue. When that epilogue feeds only the
uniform activation quantizer of another such conv2d, the kernel quantizes for it and writes
its padded input bytes (:class:`~.operators.compute.ByteRequantizer`: the same float32
operations as that layer's quantize stage, so the same bytes). An FGQ
dense layer with groups of a multiple of 16 inputs or a whole row runs as ``ternary_int8``
instead: its ternary weights stay at 2 bits in memory with the group multipliers beside
them (a batch-1 linear layer streams its weights). Only weights too large for that (more bits than AVX2's int16 sums allow) take the float-scale
FGQ kernel (a float multiply per group). A float conv2d with constant weights becomes our
register-tiled float kernel (:func:`~.operators.compute.float_conv_nchw`), with an inference
``batch_norm`` (constant parameters) and ``relu`` after it in its epilogue. Everything else
is left to Relax.

Float results stay channel-blocked (:mod:`tvm_ternary.layout`) where a data stage that
reads that layout consumes them, directly or through glue that stays blocked: affine
conv2d kernels and the float conv kernel write it, residual adds, ReLUs, per-channel
multiply/add and max pool run on it, and the next layer's data stage reads it; a
conversion to NCHW is emitted before the first user that needs NCHW.
A conv2d/matmul after an activation quantizer whose weights or thresholds are not
constants (parameters kept as function inputs) stays in Relax too, where it still computes
the right values, with a :class:`~tvm_ternary.diagnostics.SlowPathWarning` naming it.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import tvm
from tvm import relax, s_tir, te
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.target import Target

from . import schedules
from .diagnostics import SlowPathWarning
from .frontend import PER_TOKEN_ATTR, QUANTIZE_ATTR, TOKEN_STEP_ATTR
from . import layout
from .packing import block_channels, taps_per_word
from .operators.compute import ByteRequantizer, affine, float_conv_nchw, pad_nchw, quantizer_levels, uniform_thresholds
from .api import make_spec
from .operators.spec import out_spatial
from .schemes import (CODE_GROUP, FGQ_INTEGER_WEIGHT_BITS, FGQ_ROW, INT8_MAX_BITS, MAX_CODE_REDUCTION, MAX_MULTIPLIER,
                      PER_TOKEN_LEVELS,
                      FgqScheme,
                      Int8Scheme, PackedScheme, Scheme, TernaryInt8Scheme,
                      make_scheme)

KERNEL_ATTR = "tvm_ternary.kernel"
"""PrimFunc attribute of the functions this pass adds: ``"<op>[<scheme>]:kernel"``,
``"<op>[<scheme>]:quantize"`` (the fused quantize + data stage), ``"<op>[<scheme>]:gather"``
(the patch gather after a previous kernel's packed output) or ``"conv2d[float]:pad"``."""

MACS_ATTR = "tvm_ternary.macs"
"""PrimFunc attribute of the conv2d/dense kernels this pass adds: multiply-accumulates per
call (``benchmarks/model_profile.py`` reports G MAC/s from it)."""

_CALL_TIR = tvm.ir.Op.get("relax.call_tir")


@dataclass
class Layer:
    """One quantized conv2d/dense found in the graph, and what the pass decided for it."""

    var: relax.Var                      # binding of the conv2d/matmul
    op: str                             # "conv2d" or "dense"
    quantizer_input: relax.Expr
    thresholds: np.ndarray              # the activation quantizer's float32 thresholds
    lo: float
    step: float
    scheme: Scheme
    weight: np.ndarray                  # integer weights, OIHW or [M, K]
    data_shape: tuple[int, ...]
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    fgq_scales: np.ndarray | None = None
    chain: list[relax.Var] = field(default_factory=list)   # epilogue bindings it absorbs
    next_quantizer: relax.Var | None = None                # the next layer's quantizer, absorbed too
    scale: np.ndarray | None = None
    bias: np.ndarray | None = None
    relu: bool = False
    next_layer: "Layer | None" = None  # requantize straight into this layer's input
    int_thresholds: np.ndarray | None = None
    requantizer: ByteRequantizer | None = None          # int8: what the epilogue writes for next_layer
    packed_input: relax.Expr | None = None
    quantizer_var: relax.Var | None = None              # binding of the activation quantizer
    residual: relax.Var | None = None                   # a residual add's other operand, added in the epilogue
    residual_add: relax.Var | None = None               # ... and that add's binding
    leading: tuple[int, ...] = ()                       # dense over [*leading, K] rows, reshaped to [N, K] around it

    @property
    def end(self) -> relax.Var:
        """The binding whose value the kernel computes: the last absorbed epilogue op."""
        return self.chain[-1] if self.chain else self.var

    @property
    def where(self) -> str:
        return _where(self.op, self.scheme, self.var)


def _where(op: str, scheme: Scheme, var: relax.Var) -> str:
    """How messages name a layer: ``rewrite: conv2d[ternary] at lv5``."""
    return f"rewrite: {op}[{scheme.label()}] at {var.name}"


@dataclass
class FloatConv:
    """A float conv2d the pass gives our float kernel (:func:`~.operators.compute.float_conv_nchw`),
    with the inference BatchNorm (as a per-channel ``scale`` and ``shift``) and ReLU after it."""

    var: relax.Var
    data: relax.Expr
    weight: np.ndarray
    data_shape: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    scale: np.ndarray | None = None
    shift: np.ndarray | None = None
    relu: bool = False
    chain: list[relax.Var] = field(default_factory=list)   # the batch_norm, its result, the relu

    @property
    def end(self) -> relax.Var:
        return self.chain[-1] if self.chain else self.var


def _const(expr: relax.Expr) -> np.ndarray | None:
    return expr.value.numpy() if isinstance(expr, tvm.ir.GenericConst) else None


def _op_name(value: relax.Expr) -> str | None:
    return str(value.op.name) if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) else None


class _Graph:
    """``main``'s bindings: values by var, and which bindings use each var."""

    def __init__(self, func: relax.Function):
        self.values: dict[relax.Var, relax.Expr] = {}
        self.users: dict[relax.Var, list[relax.Var]] = {}
        for block in func.body.blocks:
            for binding in block.bindings:
                if not isinstance(binding, relax.VarBinding):
                    continue
                self.values[binding.var] = binding.value
                for v in relax.analysis.free_vars(binding.value):
                    self.users.setdefault(v, []).append(binding.var)
        for v in relax.analysis.free_vars(func.body.body):
            self.users.setdefault(v, []).append(None)

    def sole_user(self, var: relax.Var) -> relax.Var | None:
        users = self.users.get(var, [])
        return users[0] if len(users) == 1 else None


@dataclass(frozen=True)
class ConvAttrs:
    """What our kernels take of a Relax conv2d's attributes (NCHW/OIHW, symmetric padding)."""

    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int


def _conv_attrs(attrs) -> ConvAttrs | None:
    """The conv2d's geometry if our kernels take its layouts and padding, else None."""
    pad = [int(q) for q in attrs.padding]
    if (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout)) != ("NCHW", "OIHW", "NCHW") \
            or pad[:2] != pad[2:]:
        return None
    return ConvAttrs(tuple(int(q) for q in attrs.strides), tuple(pad[:2]), tuple(int(d) for d in attrs.dilation),
                     int(attrs.groups))


class _Matcher:
    """Finds quantized layers and their epilogues for ``target``."""

    def __init__(self, mod: tvm.IRModule, graph: _Graph, target: Target):
        self.mod, self.graph, self.target = mod, graph, target
        self.residual_adds: set[relax.Var] = set()          # adds a layer's epilogue has taken

    def _marked_call(self, expr: relax.Expr, attr: str) -> tuple[relax.Call, str] | None:
        """``(call_tir, attribute value)`` if ``expr`` is a var bound to a call of a PrimFunc marked ``attr``."""
        value = self.graph.values.get(expr) if isinstance(expr, relax.Var) else None
        if not (isinstance(value, relax.Call) and value.op.same_as(_CALL_TIR)):
            return None
        func = self.mod[value.args[0]]
        if func.attrs is None or attr not in func.attrs:
            return None
        return value, str(func.attrs[attr])

    def quantizer(self, expr: relax.Expr) -> tuple | None:
        """``(input, thresholds, info)`` if ``expr`` is a var bound to an activation quantizer;
        a per-token one has no thresholds (an empty array) and ``info["per_token"]``."""
        found = self._marked_call(expr, QUANTIZE_ATTR)
        if found is not None:
            x, thresholds = found[0].args[1].fields
            return x, _const(thresholds), json.loads(found[1])
        found = self._marked_call(expr, PER_TOKEN_ATTR)
        if found is None:
            return None
        levels = float(PER_TOKEN_LEVELS)
        return found[0].args[1].fields[0], np.zeros(0, np.float32), dict(
            lo=-levels, step=1.0, scheme=json.loads(found[1]), per_token=True)

    def layer(self, var: relax.Var, value: relax.Expr) -> Layer | None:
        name = _op_name(value)
        if name not in ("relax.nn.conv2d", "relax.matmul"):
            return None
        quantized, leading = value.args[0], ()
        found = self.quantizer(quantized)
        reshaped = self.graph.values.get(quantized) if isinstance(quantized, relax.Var) else None
        if found is None and name == "relax.matmul" and _op_name(reshaped) == "relax.reshape" and \
                self.quantizer(reshaped.args[0]) is not None:   # [*leading, K] rows, flattened for the matmul
            leading = self._flattened_rows(var, value)
            if not leading:
                warnings.warn(f"rewrite: the quantized matmul at {var.name} reads a reshape of its quantizer's output "
                              f"that is not [batch * tokens, K] rows, or its result is used other than reshaped back "
                              f"to [batch, tokens, M]; it stays a float Relax matmul (right, but slow)", SlowPathWarning)
                return None
            quantized = reshaped.args[0]
            found = self.quantizer(quantized)
        if found is None:
            return None
        x, thresholds, info = found
        op = "conv2d" if name == "relax.nn.conv2d" else "dense"
        params = dict(info["scheme"])
        scheme = make_scheme(op, params.pop("scheme"), **params)
        weight = self._weight(op, value)
        variable = [what for what, const in (("weights", weight), ("activation thresholds", thresholds))
                    if const is None]
        if variable:
            warnings.warn(f"{_where(op, scheme, var)}: its {' and '.join(variable)} are not constants, so the "
                          f"layer stays a float Relax {name.split('.')[-1]} instead of our kernel (right, but slow); "
                          f"import the model with its parameters as constants (tvm_ternary.from_torch does) "
                          f"or bind them (relax.transform.BindParams)", SlowPathWarning)
            return None
        data_shape = tuple(int(d) for d in value.args[0].ty.shape)
        layer = Layer(var, op, x, thresholds.astype(np.float32), float(info["lo"]), float(info["step"]), scheme,
                      weight, data_shape, quantizer_var=quantized, leading=leading)
        if info.get("per_token", False) != scheme.per_token:
            raise ValueError(f"{layer.where}: its activation quantizer is "
                             f"{'per token' if info.get('per_token') else 'static'}, its scheme is not")
        if op == "conv2d":
            conv = _conv_attrs(value.attrs)
            if conv is None:
                raise ValueError(f"{layer.where}: only NCHW/OIHW layouts and symmetric padding are supported, "
                                 f"got {value.attrs}")
            layer.stride, layer.padding, layer.dilation, layer.groups = conv.stride, conv.padding, conv.dilation, \
                conv.groups
        self._check(layer)
        return layer

    def float_conv(self, var: relax.Var, value: relax.Expr) -> FloatConv | None:
        """A float32 NCHW conv2d with constant OIHW weights (groups 1, dilation 1, symmetric
        padding) that is not a quantized layer: it gets our register-tiled float kernel."""
        if _op_name(value) != "relax.nn.conv2d" or self.quantizer(value.args[0]) is not None:
            return None
        weight = _const(value.args[1])
        conv = _conv_attrs(value.attrs)
        if weight is None or weight.dtype != np.float32 or str(value.args[0].ty.dtype.dtype) != "float32" \
                or conv is None or conv.groups != 1 or any(d != 1 for d in conv.dilation) \
                or str(value.attrs.out_dtype) not in ("", "float32", "void", "None"):
            return None
        found = FloatConv(var, value.args[0], weight, tuple(int(d) for d in value.args[0].ty.shape), conv.stride,
                          conv.padding)
        self._batch_norm_epilogue(found)
        return found

    def _batch_norm_epilogue(self, conv: FloatConv) -> None:
        """Absorb an inference ``batch_norm`` with constant parameters that alone follows the
        float conv (and a ``relu`` after it): ``y * scale + shift`` per channel,
        ``scale = gamma / sqrt(var + eps)``, ``shift = beta - mean * scale`` (float64, then
        float32; equal to the separate BatchNorm up to rounding)."""
        bn = self.graph.sole_user(conv.var)
        value = self.graph.values.get(bn) if bn is not None else None
        if _op_name(value) != "relax.nn.batch_norm" or int(value.attrs.axis) != 1 or bool(value.attrs.training):
            return
        gamma, beta, mean, variance = (_const(a) for a in value.args[1:5])
        item = self.graph.sole_user(bn)
        got = self.graph.values.get(item) if item is not None else None
        if any(p is None for p in (gamma, beta, mean, variance)) or not (
                isinstance(got, relax.TupleGetItem) and int(got.index) == 0):
            return
        gamma = gamma.astype(np.float64) if bool(value.attrs.scale) else np.ones(len(mean))
        beta = beta.astype(np.float64) if bool(value.attrs.center) else np.zeros(len(mean))
        scale = gamma / np.sqrt(variance.astype(np.float64) + float(value.attrs.epsilon))
        conv.scale, conv.shift = scale.astype(np.float32), (beta - mean.astype(np.float64) * scale).astype(np.float32)
        conv.chain = [bn, item]
        relu = self._relu_after(item)
        if relu is not None:
            conv.relu = True
            conv.chain.append(relu)

    def _relu_after(self, var: relax.Var) -> relax.Var | None:
        """The ``relu`` binding that alone consumes ``var``, if any."""
        user = self.graph.sole_user(var)
        return user if user is not None and _op_name(self.graph.values.get(user)) == "relax.nn.relu" else None

    def _weight(self, op: str, value: relax.Call) -> np.ndarray | None:
        w = value.args[1]
        if op == "conv2d":
            return _const(w)
        const = _const(w)
        if const is not None:
            return np.ascontiguousarray(const.T) if const.ndim == 2 else None
        bound = self.graph.values.get(w) if isinstance(w, relax.Var) else None
        if _op_name(bound) == "relax.permute_dims" and [int(a) for a in bound.attrs.axes] == [1, 0]:
            return _const(bound.args[0])
        return None

    def _check(self, layer: Layer) -> None:
        """Values and quantizer against the scheme: clear errors for a layer claimed quantized."""
        scheme = layer.scheme
        integer = None
        if isinstance(scheme, FgqScheme):
            ternary, multipliers = _split_fgq(layer, scheme)
            integer = _fgq_as_integer(layer, scheme, multipliers)
            if isinstance(integer, TernaryInt8Scheme):          # 2-bit codes and the group multipliers
                layer.weight, layer.fgq_scales = ternary, multipliers
            elif integer is None:
                if scheme.group_size == FGQ_ROW or scheme.group_size % 4:
                    codes = f"; the 2-bit-code kernel (dense layers) takes group multipliers up to {MAX_MULTIPLIER}" \
                        if layer.op == "dense" else ""
                    raise ValueError(f"{layer.where}: weights of magnitude up to {int(np.abs(layer.weight).max())} "
                                     f"are too large for the int8 kernel with {scheme.abits}-bit activations "
                                     f"(abits + weight bits <= {INT8_MAX_BITS}), and the float-scale FGQ kernel "
                                     f"needs a group size that is a multiple of 4, got {scheme.group_size!r}{codes}")
                layer.weight, layer.fgq_scales = ternary, multipliers
        try:
            scheme.check_values(layer.op, "weight", ternary if integer is not None else layer.weight)
        except ValueError as err:
            raise ValueError(f"{layer.where}: {err}") from None
        enc = scheme.activation
        expected = quantizer_levels(enc)
        got = (layer.lo, layer.step, len(layer.thresholds))
        if got != expected and not scheme.per_token:
            raise ValueError(f"{layer.where}: its activation quantizer (lo, step, thresholds) = {got} does not "
                             f"produce {enc.describe()} (expected {expected})")
        if integer is not None:             # checked as FGQ (the errors name it so), run as integers
            layer.scheme = integer

    def epilogue(self, layer: Layer) -> None:
        """Absorb ``multiply``/``add`` by per-channel constants and ``relu`` that follow the layer alone."""
        k = layer.weight.shape[0]
        rank = 4 if layer.op == "conv2d" else 2
        cur = layer.var
        if layer.leading:                   # the reshape back to [*leading, M]
            cur = self._reshape_back(layer)
        if layer.scheme.per_token:
            cur = self._token_step_epilogue(layer, cur)
        for name in ("relax.multiply", "relax.add", "relax.nn.relu"):
            nxt = self.graph.sole_user(cur)
            value = self.graph.values.get(nxt) if nxt is not None else None
            if _op_name(value) != name:
                continue
            if name != "relax.nn.relu":
                other = [a for a in value.args if not (isinstance(a, relax.Var) and a.same_as(cur))]
                const = _const(other[0]) if len(other) == 1 else None
                if const is None or const.size != k or const.shape != (1, k) + (1,) * (rank - 2):
                    continue
                setattr(layer, "scale" if name == "relax.multiply" else "bias", const.reshape(k).astype(np.float32))
            else:
                layer.relu = True
            layer.chain.append(nxt)
            cur = nxt
        if layer.op == "conv2d" and layer.groups == 1 and not layer.relu:
            self._residual_epilogue(layer, cur)

    def _flattened_rows(self, var: relax.Var, value: relax.Call) -> tuple[int, ...]:
        """``leading`` when the matmul ``value``, which reads a reshape of a quantizer's output
        ``[*leading, K]``, multiplies it flattened to rows ``[prod(leading), K]`` and only a
        reshape back to ``[*leading, M]`` reads its result (how ``torch.export`` writes a Linear
        over ``[batch, tokens, K]``), else ()."""
        rows = value.args[0]
        *leading, k = (int(d) for d in self.graph.values[rows].args[0].ty.shape)
        back = self.graph.sole_user(var)
        if len(leading) < 2 or tuple(int(d) for d in rows.ty.shape) != (int(np.prod(leading)), k) or \
                _op_name(self.graph.values.get(back)) != "relax.reshape" or \
                tuple(int(d) for d in back.ty.shape) != (*leading, int(var.ty.shape[-1])):
            return ()
        return tuple(leading)

    def _reshape_back(self, layer: Layer) -> relax.Var:
        """Absorb the ``reshape`` of a dense layer's ``[N, M]`` result back to ``[*leading, M]``
        (checked by :meth:`_flattened_rows`)."""
        nxt = self.graph.sole_user(layer.var)
        layer.chain.append(nxt)
        return nxt

    def _token_step_epilogue(self, layer: Layer, cur: relax.Var) -> relax.Var:
        """Absorb the ``multiply`` by the rows' steps (``tvm_ternary::token_step`` of the layer's
        own input) that a per-token layer's accumulator (``cur``) must meet first: the kernel
        computes the steps itself. Returns the multiply's binding; raises if the graph has none."""
        nxt = self.graph.sole_user(cur)
        value = self.graph.values.get(nxt) if nxt is not None else None
        if _op_name(value) == "relax.multiply":
            other = [a for a in value.args if not (isinstance(a, relax.Var) and a.same_as(cur))]
            step = self._marked_call(other[0], TOKEN_STEP_ATTR) if len(other) == 1 else None
            if step is not None and step[0].args[1].fields[0].same_as(layer.quantizer_input):
                layer.chain.append(nxt)
                return nxt
        raise ValueError(f"{layer.where}: a per-token layer's result must be multiplied by its rows' steps "
                         f"(tvm_ternary::token_step of the same input) first, as tvm_ternary.quant.QuantLinear does")

    def _residual_epilogue(self, layer: Layer, cur: relax.Var) -> None:
        """Absorb a residual ``add`` of another tensor of the output's shape that alone
        follows the epilogue so far, and a ``relu`` after it: the kernel adds the tensor.
        An add of two layers' results (a projection shortcut) goes to the first one matched."""
        nxt = self.graph.sole_user(cur)
        value = self.graph.values.get(nxt) if nxt is not None else None
        if _op_name(value) != "relax.add" or nxt in self.residual_adds:
            return
        other = [a for a in value.args if not (isinstance(a, relax.Var) and a.same_as(cur))]
        if len(other) != 1 or not isinstance(other[0], relax.Var) or \
                tuple(int(d) for d in other[0].ty.shape) != tuple(int(d) for d in nxt.ty.shape):
            return
        layer.residual, layer.residual_add = other[0], nxt
        self.residual_adds.add(nxt)
        layer.chain.append(nxt)
        relu = self._relu_after(nxt)
        if relu is not None:
            layer.relu = True
            layer.chain.append(relu)

    def requantize_target(self, layer: Layer, layers: dict[relax.Var, Layer]) -> Layer | None:
        """The next layer whose quantizer alone consumes this layer's epilogue, if folding applies."""
        quant = self.graph.sole_user(layer.end)
        consumer = self.graph.sole_user(quant) if quant is not None else None
        if consumer is not None and _op_name(self.graph.values.get(consumer)) == "relax.reshape":
            consumer = self.graph.sole_user(consumer)        # the rows of a dense layer over [*leading, K]
        nxt = layers.get(consumer)
        if nxt is None or nxt.quantizer_var is None or not nxt.quantizer_var.same_as(quant):
            return None
        if type(layer.scheme) is Int8Scheme:
            layer.requantizer = self._byte_requantizer(layer, nxt)
            if layer.requantizer is None:
                return None
            layer.next_quantizer = quant
            return nxt
        if not isinstance(layer.scheme, PackedScheme) or nxt.scheme != layer.scheme:
            return None
        if layer.groups > 1 or nxt.groups > 1:
            return None                  # grouped layers run a kernel per group, in float between them
        if layer.residual is not None:
            return None                  # a residual varies per element: no per-channel thresholds
        if layer.scale is not None and np.any(layer.scale <= 0):
            return None                  # decreasing in y: the kernel's thresholds count upwards
        if schedules.word_bits(self.target, layer.weight.shape) != schedules.word_bits(self.target, nxt.weight.shape):
            return None                  # the two kernels' words differ: no direct hand-over
        layer.next_quantizer = quant
        return nxt

    def _byte_requantizer(self, layer: Layer, nxt: Layer) -> ByteRequantizer | None:
        """What int8 conv2d ``layer``'s epilogue writes to be int8 conv2d ``nxt``'s data bytes
        (:meth:`~.operators.spec.OperatorSpec.byte_requantizer`), or None when it cannot: both
        must be ungrouped, ``layer`` without a residual and its output channels a multiple of
        its kernel's block, ``nxt``'s quantizer uniform."""
        if type(nxt.scheme) is not Int8Scheme or layer.op != "conv2d" or nxt.op != "conv2d" or \
                layer.groups > 1 or nxt.groups > 1 or layer.residual is not None:
            return None
        if layer.weight.shape[0] % schedules.weight_block(self.target, layer.scheme.name, layer.weight.shape):
            return None
        try:
            return _input_spec(nxt, self.target).byte_requantizer(nxt.lo, nxt.step, nxt.thresholds)
        except ValueError:
            return None                  # not a uniform quantizer: the data stage counts its thresholds


def _input_spec(layer: Layer, target: Target):
    """The spec of ``layer``'s kernel as far as its input goes (its data layout does not
    depend on the epilogue)."""
    return make_spec(layer.op, layer.scheme, layer.data_shape, layer.weight.shape, layer.stride or 1,
                     layer.padding or 0, target, dilation=layer.dilation or 1)


def _split_fgq(layer: Layer, scheme: FgqScheme) -> tuple[np.ndarray, np.ndarray]:
    """FGQ weights arrive as ``t * m`` (ternary times the group's integer multiplier): split
    them into ternary values and per-group scales ``[K, groups, *kernel]``."""
    w = layer.weight
    if np.any(w != np.round(w)):
        raise ValueError(f"{layer.where}: FGQ weights must be integers (ternary x group multiplier)")
    k, c = w.shape[:2]
    if scheme.group_size == FGQ_ROW:          # one group: every input of an output channel
        grouped = np.abs(w.reshape(k, 1, -1))
        what = "output channel's weights"
    else:
        g = scheme.group_size
        groups = scheme.num_groups(c)
        padded = np.zeros((k, groups * g, *w.shape[2:]), w.dtype)
        padded[:, :c] = w
        grouped = np.abs(padded.reshape(k, groups, g, *w.shape[2:]))
        what = f"FGQ group of {g} input channels"
    m = grouped.max(axis=2)
    if np.any((grouped != 0) & (grouped != m[:, :, None])):
        raise ValueError(f"{layer.where}: each {what} must hold one magnitude (ternary x one scale)")
    return np.sign(w).astype(np.int32), m.astype(np.float32)


def _fgq_as_integer(layer: Layer, scheme: FgqScheme, multipliers: np.ndarray) -> Int8Scheme | TernaryInt8Scheme | None:
    """The integer scheme an FGQ layer runs as, one exact int32 dot product per output with the
    float scale per channel in the epilogue. A dense layer whose groups are a multiple of
    :data:`~tvm_ternary.schemes.CODE_GROUP` inputs or a whole row: ``ternary_int8``, its
    ternary weights at 2 bits in memory with the integer group ``multipliers`` (a batch-1
    linear layer streams its weights). Otherwise ``int8``: its weights (ternary x integer
    group multiplier, ``-7..7`` in models) as signed ``wbits``-bit bytes times its
    ``abits``-bit activations. None (the float-scale FGQ kernel) when the weights need more
    bits than the int16 sums of AVX2's byte dot product allow with those activations."""
    codes = scheme.group_size == FGQ_ROW or scheme.group_size % CODE_GROUP == 0
    if layer.op == "dense" and codes and multipliers.max(initial=0) <= MAX_MULTIPLIER and \
            layer.weight.shape[1] <= MAX_CODE_REDUCTION:
        return TernaryInt8Scheme(group_size=scheme.group_size, abits=scheme.abits)
    wbits = max(2, int(np.abs(layer.weight).max()).bit_length() + 1)
    if wbits > 8 or scheme.abits + wbits > INT8_MAX_BITS:      # bytes hold 8 bits at most
        return None
    return Int8Scheme(abits=scheme.abits, wbits=max(wbits, FGQ_INTEGER_WEIGHT_BITS))


def _quantizers_reading_blocked_input(graph: _Graph, layers: dict[relax.Var, Layer], target: Target) -> set[relax.Var]:
    """Activation quantizers whose every user is an ungrouped conv2d that quantizes its own
    input, bit-packed in the ordinary layout or int8: their data stages can read a
    channel-blocked input (:func:`~.operators.compute.pack_blocked_data`,
    :func:`~.operators.compute.layout_bytes`)."""
    handed_over = {id(layer.next_layer) for layer in layers.values() if layer.next_layer is not None}
    fits: dict[relax.Var, bool] = {}
    for layer in layers.values():
        packed = isinstance(layer.scheme, PackedScheme) and id(layer) not in handed_over and taps_per_word(
            layer.weight.shape[1], layer.weight.shape[2:], schedules.word_bits(target, layer.weight.shape)) == 1
        good = layer.op == "conv2d" and layer.groups == 1 and (packed or type(layer.scheme) is Int8Scheme)
        fits[layer.quantizer_var] = fits.get(layer.quantizer_var, True) and good
    return {q for q, good in fits.items() if good and all(u in layers for u in graph.users.get(q, []))}


def fold_thresholds(layer: Layer, nxt: Layer) -> np.ndarray:
    """Integer thresholds ``[K, L]``: ``q_next >= level j`` iff ``y >= t[k, j]`` for the
    int32 accumulator ``y``, where the graph computes ``q_next`` from ``y`` in float32 as
    ``quantize(relu(y * scale + bias))``. Bisection per (channel, level) over the
    accumulator's range, on the same float32 operations: exact."""
    k = layer.weight.shape[0]
    scale = np.ones(k, np.float32) if layer.scale is None else layer.scale
    bias = np.zeros(k, np.float32) if layer.bias is None else layer.bias
    enc_x, enc_w = layer.scheme.activation, layer.scheme.weight
    taps = int(np.prod(layer.weight.shape[1:]))
    bound = taps * max(abs(v) for v in enc_x.value_range) * max(abs(v) for v in enc_w.value_range)
    thr = nxt.thresholds.astype(np.float32)[None, :]
    lo = np.full((k, thr.shape[1]), -bound, np.int64)
    hi = np.full_like(lo, bound + 1)             # bound + 1: never reached

    def reaches(y: np.ndarray) -> np.ndarray:
        v = y.astype(np.float32) * scale[:, None] + bias[:, None]   # float32 ops, as in the graph
        return (np.maximum(v, np.float32(0)) if layer.relu else v) >= thr

    while np.any(lo < hi):
        mid = (lo + hi) // 2
        ok = reaches(mid)
        hi = np.where(ok, mid, hi)
        lo = np.where(ok, lo, mid + 1)
    return np.clip(lo, np.iinfo(np.int32).min, np.iinfo(np.int32).max)


@mutator
class _Rewriter(PyExprMutator):
    """Emits the planned kernels in place of the layers' bindings."""

    def __init__(self, mod: tvm.IRModule, target: Target, graph: _Graph, layers: dict[relax.Var, Layer],
                 float_convs: dict[relax.Var, FloatConv], schedule: Scheduler):
        super().__init__(mod)
        self.target = target
        self.schedule = schedule
        self.sources: dict[str, tuple[str, tvm.tirx.PrimFunc]] = {}   # function name -> role, unscheduled
        self.graph = graph
        self.layers = layers
        self.float_convs = float_convs
        self.absorbed = {v for layer in layers.values() for v in layer.chain}
        self.absorbed |= {v for conv in float_convs.values() for v in conv.chain}
        self.absorbed |= {layer.next_quantizer for layer in layers.values() if layer.next_layer is not None}
        self.functions: dict[tuple, relax.GlobalVar] = {}
        self.blocked: dict[relax.Var, tuple[relax.Expr, int]] = {}   # var -> its channel-blocked value, block
        self.unblocked: set[relax.Var] = set()                       # blocked vars also emitted as NCHW
        self.blocked_quantizers = _quantizers_reading_blocked_input(graph, layers, target)
        # where each layer is emitted: at its conv2d/matmul, or at the residual add it takes
        # (the add's other operand may be computed after the convolution)
        self.emitted_at = {layer.var if layer.residual_add is None else layer.residual_add: layer
                           for layer in layers.values()}
        self.wants_blocked: dict[relax.Var, bool] = {}

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var in self.emitted_at:
            self._emit_layer(self.emitted_at[binding.var])
        elif binding.var in self.layers:
            pass                         # emitted at its residual add
        elif binding.var in self.float_convs:
            self._emit_float_conv(self.float_convs[binding.var])
        elif binding.var not in self.absorbed and not self._emit_blocked_op(binding):
            self._unblock_used(binding.value)
            super().visit_var_binding_(binding)

    # the channel-blocked float layout (tvm_ternary.layout)

    def _is_glue(self, var: relax.Var | None) -> bool:
        """Whether binding ``var`` is an op that runs on blocked operands as well (elementwise, NCHW max pool)."""
        value = self.graph.values.get(var) if var is not None else None
        name = _op_name(value)
        return name in layout.ELEMENTWISE_OPS or (name == layout.POOL_OP and layout.pool_takes_blocked(value))

    def _wants_blocked(self, var: relax.Var) -> bool:
        """Whether ``var``'s value is worth keeping blocked: some data stage that reads blocked
        input consumes it, directly or through glue ops that then stay blocked. Users that
        need NCHW get a conversion; a value nobody reads blocked is never blocked (a float
        model, FGQ layers, patch-layout layers: no conversions at all)."""
        if var not in self.wants_blocked:
            self.wants_blocked[var] = any(
                user in self.blocked_quantizers or (self._is_glue(user) and self._wants_blocked(user))
                for user in self.graph.users.get(var, []) if user is not None)
        return self.wants_blocked[var]

    def _emit_blocked_op(self, binding: relax.VarBinding) -> bool:
        """Emit an elementwise op or max pool with a blocked operand in the blocked layout, if
        its result is worth keeping blocked (:meth:`_wants_blocked`) and every operand
        converts (a blocked or NCHW tensor of its shape, a scalar or per-channel constant);
        False, nothing emitted, otherwise. The result takes the block of the first blocked
        operand."""
        value, var = binding.value, binding.var
        if not self._is_glue(var) or not self._wants_blocked(var):
            return False
        name = _op_name(value)
        blocked = [a for a in value.args if isinstance(a, relax.Var) and a in self.blocked]
        if not blocked:
            return False
        b = self.blocked[blocked[0]][1]
        if name == layout.POOL_OP:
            pooled = layout.blocked_max_pool(value, self._blocked_value(value.args[0], b), b)
            self.blocked[var] = (self.builder_.emit(pooled), b)
            return True
        shape = tuple(int(d) for d in var.ty.shape)
        operands = []
        for a in value.args:
            const = _const(a)
            if a in blocked or (isinstance(a, relax.Var) and tuple(int(d) for d in a.ty.shape) == shape):
                operands.append(a)
            elif const is not None and (as_blocked := layout.block_constant(const, shape[1], b)) is not None:
                operands.append(relax.const(as_blocked))
            else:
                return False
        args = [self._blocked_value(a, b) if isinstance(a, relax.Var) else a for a in operands]
        self.blocked[var] = (self.builder_.emit(relax.Call(value.op, args, value.attrs)), b)
        return True

    def _blocked_value(self, var: relax.Var, b: int) -> relax.Expr:
        """``var``'s value blocked by ``b``: as it is, or converted (from NCHW, or from another block)."""
        if var in self.blocked and self.blocked[var][1] == b:
            return self.blocked[var][0]
        return self.builder_.emit(layout.block(self._visit_nchw(var), b))

    def _unblock_used(self, expr: relax.Expr) -> None:
        """Make the NCHW value of every blocked var ``expr`` uses available (once each)."""
        for v in relax.analysis.free_vars(expr):
            if v in self.blocked and v not in self.unblocked:
                blocked, b = self.blocked[v]
                self.set_var_remap(v, self.builder_.emit(layout.unblock(blocked, b)))
                self.unblocked.add(v)

    def _rows(self, layer: Layer) -> relax.Expr:
        """The layer's float input as its data stage reads it: NCHW, or a dense layer's rows
        ``[N, K]`` (inputs ``[*leading, K]`` flattened)."""
        x = self._visit_nchw(layer.quantizer_input)
        return self.builder_.emit(relax.op.reshape(x, layer.data_shape)) if layer.leading else x

    def _visit_nchw(self, expr: relax.Expr) -> relax.Expr:
        self._unblock_used(expr)
        return self.visit_expr(expr)

    def _add(self, make_func, name: str, role: str, key: tuple, macs: int | None = None) -> relax.GlobalVar:
        """Schedule ``make_func()`` for the target and add it (opaque to fusion) as ``name``,
        with its multiply-accumulates per call if it is a kernel; layers with equal ``key``
        share one function."""
        if key not in self.functions:
            func = make_func()
            scheduled = self.schedule(func, role).mod["main"]
            attrs = {"op_pattern": 8, KERNEL_ATTR: role, **({} if macs is None else {MACS_ATTR: macs})}
            scheduled = scheduled.without_attr("global_symbol").with_attrs(attrs)
            self.functions[key] = self.builder_.add_func(scheduled, name)
            self.sources[self.functions[key].name_hint] = (role, func)
        return self.functions[key]

    def _emit_float_conv(self, conv: FloatConv) -> None:
        """Pad on the device, then the register-tiled float kernel (weights blocked here) with
        its BatchNorm and ReLU, writing the blocked layout when that pays (:meth:`_wants_blocked`)."""
        k, c, *kernel = conv.weight.shape
        lanes = schedules.isa_of(self.target).int32_lanes
        blocked_out = k % lanes == 0 and self._wants_blocked(conv.end)
        spatial = out_spatial(conv.data_shape[2:], kernel, conv.stride, conv.padding)
        x = te.placeholder(conv.data_shape, "float32", name="x")
        xpad = pad_nchw(x, conv.padding)
        blocked = block_channels(np.ascontiguousarray(conv.weight), lanes)          # [Kb, C, *kernel, V]
        wb = te.placeholder(blocked.shape, "float32", name="weight")
        kernel_xpad = te.placeholder(tuple(int(d) for d in xpad.shape), "float32", name="xpad")
        weights, epilogue = [relax.const(blocked)], []
        if conv.scale is None:
            out = float_conv_nchw(kernel_xpad, wb, k, spatial, conv.stride, blocked_out)
        else:
            epilogue = [te.placeholder((k,), "float32", name=name) for name in ("scale", "shift")]
            out = affine(float_conv_nchw(kernel_xpad, wb, k, spatial, conv.stride), *epilogue, conv.relu,
                         lanes if blocked_out else 0)
            weights += [relax.const(conv.scale), relax.const(conv.shift)]
        key = (conv.data_shape, conv.weight.shape, conv.stride, conv.padding)
        pad = self._add(lambda: te.create_prim_func([x, xpad]), "tvm_ternary_float_pad", "conv2d[float]:pad",
                        ("pad", *key))
        macs = int(np.prod([int(d) for d in out.shape])) * int(np.prod(conv.weight.shape[1:]))
        kernel_gv = self._add(lambda: te.create_prim_func([kernel_xpad, wb, *epilogue, out]), "tvm_ternary_conv2d_float",
                              "conv2d[float]:kernel", ("float", blocked_out, bool(epilogue), conv.relu, *key), macs)
        padded = self.builder_.emit(relax.call_tir(pad, [self._visit_nchw(conv.data)],
                                                   relax.TensorType(tuple(int(d) for d in xpad.shape), "float32")))
        result = self.builder_.emit(relax.call_tir(kernel_gv, [padded, *weights],
                                                   relax.TensorType(tuple(int(d) for d in out.shape), "float32")))
        if blocked_out:
            self.blocked[conv.end] = (result, lanes)
        else:
            self.set_var_remap(conv.end, result)

    def _emit_layer(self, layer: Layer) -> None:
        if layer.groups > 1:
            self.set_var_remap(layer.end, self._emit_grouped(layer))
            return
        may_block = layer.op == "conv2d" and layer.next_layer is None and self._wants_blocked(layer.end)
        out, block = self._emit_kernel(layer, may_block)
        if layer.leading and layer.next_layer is None:      # back to [*leading, M]
            out = self.builder_.emit(relax.op.reshape(out, (*layer.leading, layer.weight.shape[0])))
        if layer.next_layer is not None:
            layer.next_layer.packed_input = out
        elif block:
            self.blocked[layer.end] = (out, block)
        else:
            self.set_var_remap(layer.end, out)

    def _emit_grouped(self, layer: Layer) -> relax.Var:
        """A grouped conv2d: the input split by channel groups, each group quantized, packed
        and convolved on its own (one kernel function serves every group), the outputs
        concatenated; the float epilogue runs in each group's kernel."""
        groups, (n, c, *spatial), k = layer.groups, layer.data_shape, layer.weight.shape[0]
        parts = self.builder_.emit(relax.op.split(self._visit_nchw(layer.quantizer_input), groups, axis=1))
        outs = []
        for g in range(groups):
            channels = slice(g * k // groups, (g + 1) * k // groups)
            cut = lambda a: None if a is None else a[channels]  # noqa: E731
            part = self.builder_.emit(relax.TupleGetItem(parts, g))
            outs.append(self._emit_kernel(Layer(
                layer.var, layer.op, part, layer.thresholds, layer.lo, layer.step, layer.scheme,
                layer.weight[channels], (n, c // groups, *spatial), layer.stride, layer.padding, layer.dilation,
                fgq_scales=cut(layer.fgq_scales), scale=cut(layer.scale), bias=cut(layer.bias),
                relu=layer.relu, quantizer_var=layer.quantizer_var))[0])
        return self.builder_.emit(relax.op.concat(outs, axis=1))

    def _emit_kernel(self, layer: Layer, may_block: bool = False) -> tuple[relax.Var, int]:
        """The layer's data stage (unless a previous kernel handed over its packed input) and
        kernel; returns the kernel's output and, if it writes the blocked layout (allowed by
        ``may_block``, for output channels a multiple of the kernel's block), the block, else 0."""
        requantizer = None
        if layer.next_layer is not None and isinstance(layer.scheme, PackedScheme):
            epilogue = "requantize"
        elif layer.next_layer is not None:        # the int8 scheme: the next layer's bytes
            epilogue = "affine_relu_requantize" if layer.relu else "affine_requantize"
            requantizer = layer.requantizer
        else:
            epilogue = ("affine_add" if layer.residual is not None else "affine") + ("_relu" if layer.relu else "")
        request = (layer.op, layer.scheme, layer.data_shape, layer.weight.shape, layer.stride or 1,
                   layer.padding or 0, self.target, epilogue,
                   None if epilogue != "requantize" else (layer.next_layer.padding or 0))
        spec = make_spec(*request, dilation=layer.dilation or 1, requantizer=requantizer)
        if may_block and layer.weight.shape[0] % spec.block == 0:
            spec = make_spec(*request, dilation=layer.dilation or 1, blocked_output=True)
        name = f"tvm_ternary_{spec.op}_{spec.scheme.name}"
        data = layer.packed_input
        if data is None and spec.scheme.per_token:     # float rows: the kernel quantizes them
            data = self._rows(layer)
            if spec.kernel_input_shape()[0] != spec.data_shape:     # zero-padded to whole groups first
                pad = self._add(spec.data_prim_func, name + "_data", spec.where + ":pad", ("data", spec))
                data = self.builder_.emit(relax.call_tir(pad, [data], relax.TensorType(*spec.kernel_input_shape())))
        elif data is None:
            ascending = bool(np.all(np.diff(layer.thresholds) >= 0))
            uniform = uniform_thresholds(layer.thresholds)
            x = layer.quantizer_input
            block = self.blocked[x][1] if x in self.blocked and layer.quantizer_var in self.blocked_quantizers else 0
            quant = self._add(lambda: spec.quantize_data_prim_func(layer.lo, layer.step, len(layer.thresholds),
                                                                   ascending, block, uniform),
                              name + "_quantize", spec.where + ":quantize",
                              ("quantize", spec, layer.lo, layer.step, len(layer.thresholds), ascending, block,
                               uniform))
            shape, dtype = spec.kernel_input_shape()
            data = self.builder_.emit(relax.call_tir(
                quant, [self.blocked[x][0] if block else self._rows(layer), relax.const(layer.thresholds)],
                relax.TensorType(shape, dtype)))
        elif spec.patch_taps > 1:        # the previous kernel wrote padded planes: gather them into patches
            gather = self._add(spec.gather_prim_func, name + "_gather", spec.where + ":gather", ("gather", spec))
            data = self.builder_.emit(relax.call_tir(gather, [data], relax.TensorType(*spec.kernel_input_shape())))
        k = layer.weight.shape[0]
        affine = None
        if epilogue.startswith("affine"):              # the byte requantize epilogues too
            affine = (np.ones(k, np.float32) if layer.scale is None else layer.scale,
                      np.zeros(k, np.float32) if layer.bias is None else layer.bias)
        args = spec.weight_args(layer.weight, layer.fgq_scales, layer.int_thresholds, affine)
        kernel = self._add(spec.kernel_prim_func, name, spec.where + ":kernel", ("kernel", spec),
                           int(np.prod(spec.out_shape)) * int(np.prod(spec.weight_shape[1:])))
        out_shape, out_dtype = spec.kernel_output()
        inputs = [data, *(relax.const(a) for a in args)]
        if layer.residual is not None:   # in the layout the kernel writes
            inputs.append(self._blocked_value(layer.residual, spec.block) if spec.blocked_output
                          else self._visit_nchw(layer.residual))
        out = self.builder_.emit(relax.call_tir(kernel, inputs, relax.TensorType(out_shape, out_dtype)))
        return out, spec.block if spec.blocked_output else 0


Scheduler = Callable[[tvm.tirx.PrimFunc, str], s_tir.Schedule]
"""How the pass schedules a function it adds: ``(PrimFunc, role) -> schedule`` (the role is
the :data:`KERNEL_ATTR` value). By default the target's hand-written rules."""


def rewrite_quantized(mod: tvm.IRModule, target: Target, schedule: Scheduler | None = None) -> tvm.IRModule:
    """Replace every quantized conv2d/dense in ``mod["main"]`` with our kernels for
    ``target`` (see the module docstring), each function scheduled by ``schedule`` (default:
    the target's rules, :func:`tvm_ternary.schedules.schedule`); raises ``ValueError`` for
    a layer claimed quantized whose weights or quantizer do not fit its scheme, and warns
    (:class:`~tvm_ternary.diagnostics.SlowPathWarning`) for one it must leave to Relax
    because its weights or thresholds are not constants."""
    return rewrite_with_sources(mod, target, schedule)[0]


def rewrite_with_sources(mod: tvm.IRModule, target: Target, schedule: Scheduler | None = None
                         ) -> tuple[tvm.IRModule, dict[str, tuple[str, tvm.tirx.PrimFunc]]]:
    """:func:`rewrite_quantized`, and the functions it added before scheduling, by name in
    the result: ``{name: (role, PrimFunc)}`` (what :func:`tvm_ternary.tune_model` tunes)."""
    schedule = schedule or (lambda func, role: schedules.schedule(func, target))
    # the importer's leftovers (max_pool2d_with_indices becomes a tuple with a dead
    # zeros_like) would hide that a value's users take the blocked layout
    mod = tvm.ir.transform.Sequential([relax.transform.CanonicalizeBindings(),
                                       relax.transform.DeadCodeElimination()])(mod)
    func = mod["main"]
    graph = _Graph(func)
    matcher = _Matcher(mod, graph, target)
    layers = {}
    for var, value in graph.values.items():
        layer = matcher.layer(var, value)
        if layer is not None:
            layers[var] = layer
    for layer in layers.values():
        matcher.epilogue(layer)
    for layer in layers.values():
        nxt = matcher.requantize_target(layer, layers)
        if nxt is not None:
            layer.next_layer = nxt
            if isinstance(layer.scheme, PackedScheme):
                layer.int_thresholds = fold_thresholds(layer, nxt)
    float_convs = {var: conv for var, value in graph.values.items() if var not in layers
                   and (conv := matcher.float_conv(var, value)) is not None}
    rewriter = _Rewriter(mod, target, graph, layers, float_convs, schedule)
    new_main = rewriter.visit_expr(func)
    out = rewriter.builder_.get()
    out[out.get_global_var("main")] = relax.analysis.remove_all_unused(new_main)
    return out, rewriter.sources
