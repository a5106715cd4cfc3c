"""The precisions that benchmarks/speedup.py compares, each a factory of timed runners.

A runner holds everything a layer needs at one precision, already prepared (weights
packed or quantized, inputs in the layout the kernel reads), and is timed by
:mod:`harness` (a Python loop around one call, the same for every contender):

* ``torch_fp32``: ``torch.nn.functional.conv2d``/``linear`` (oneDNN).
* ``torch_int8``: ``torch.ao.nn.quantized`` Conv2d/Linear with the x86 (fbgemm) engine,
  quint8 input and output, quantize/dequantize outside the timed call.
* ``torch_int8_dynamic`` (dense only): ``torch.ao.nn.quantized.dynamic.Linear``, fp32 in and
  out, each call quantizing its input with one scale per tensor (7-bit, ``reduce_range``; at
  batch 1 the tensor is one token), how PyTorch serves language models' linears.
* ``tvm_fp32``: the same layer through TVM's default Relax pipeline, untuned.
* ours (``w1a1``, ``w2a2``, ``w2a2_bw``, ``ternary``, ``fatnn``, ``fgq_w2a4``, ``fgq_w2a8``, ``int8``):
  and ``ternary_int8`` (dense only: ternary weights at 2 bits in memory × 8-bit activations,
  BitNet b1.58's linears): the kernel of :func:`tvm_ternary.op` on already packed input with the fused requantize
  epilogue that writes the next layer's packed input (``impl="hand"``), the same kernel
  writing int32 (``hand-int32``), and the stand-alone packing of the layer's input (``pack``).
  FGQ layers run as in a network, on the int8 kernel, or dense layers with groups of a
  multiple of 16 or a whole row on the ternary_int8 kernel (see :func:`ours`), beside the
  float-scale FGQ kernel (``float-scales``).

A layer with ``cold=True`` gives each contender copies of its weights to cycle through
(:func:`harness.weight_copies`), so the weights stream from memory on every call.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import tvm
from harness import Runner, board_runner, runner, with_copies
from tqdm import tqdm
from tvm import relax

import tvm_ternary
from tvm_ternary.schemes import CODE_GROUP, FGQ_INTEGER_WEIGHT_BITS, FGQ_MULTIPLIER_MAX, FGQ_ROW


@dataclass(frozen=True)
class Layer:
    """One benchmark layer: conv2d (NCHW, OIHW) or dense ((N, K), (M, K))."""

    name: str
    op: str
    data_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    stride: int = 1
    padding: int = 0
    cold: bool = False
    """Time with the weights out of cache: each call uses the next of enough weight copies."""
    model: str = "resnet18"
    """The network the layer comes from (the CSV's ``model`` column)."""

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one forward pass."""
        spec = tvm_ternary.operators.OperatorSpec.create(self.op, tvm_ternary.make_scheme(self.op, "ternary"),
                                                         self.data_shape, self.weight_shape,
                                                         self.stride, self.padding)
        out = spec.out_shape
        return int(np.prod(out)) * int(np.prod(self.weight_shape[1:]))

    def conv_kwargs(self) -> dict:
        return dict(stride=self.stride, padding=self.padding) if self.op == "conv2d" else {}


def torch_runner(make_calls: Callable[[], list[Callable[[], object]]], impl: str = "torch") -> Runner:
    """PyTorch calls (from ``make_calls``, see :func:`harness.runner`) timed by the harness
    under ``torch.inference_mode``."""
    def timed(repeat):
        with torch.inference_mode():
            return runner(impl, make_calls).time(repeat)
    return Runner(impl, timed)


def _torch_inputs(layer: Layer, rng: np.random.Generator):
    x = torch.from_numpy(rng.standard_normal(layer.data_shape).astype(np.float32))
    w = torch.from_numpy(rng.standard_normal(layer.weight_shape).astype(np.float32) * 0.05)
    return x, w


def torch_fp32(layer: Layer, target, rng) -> Runner:
    x, w = _torch_inputs(layer, rng)
    if layer.op == "conv2d":
        call = lambda w: torch.nn.functional.conv2d(x, w, stride=layer.stride, padding=layer.padding)  # noqa: E731
    else:
        call = lambda w: torch.nn.functional.linear(x, w)  # noqa: E731
    return torch_runner(with_copies(w, torch.clone, w.nbytes, layer.cold, call))


def torch_int8(layer: Layer, target, rng) -> Runner:
    import torch.ao.nn.quantized as nnq
    torch.backends.quantized.engine = "x86"
    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
    x, w = _torch_inputs(layer, rng)
    qw = torch.quantize_per_channel(w, w.abs().amax(dim=tuple(range(1, w.dim()))) / 127,
                                    torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
    def module():
        if layer.op == "conv2d":
            m = nnq.Conv2d(layer.weight_shape[1], layer.weight_shape[0], layer.weight_shape[2:],
                           stride=layer.stride, padding=layer.padding)
        else:
            m = nnq.Linear(layer.weight_shape[1], layer.weight_shape[0])
        m.set_weight_bias(qw, None)                    # packs its own copy of the weights
        m.scale, m.zero_point = 0.05, 64
        return m

    first = module()
    # 7-bit activations, PyTorch's x86 default (reduce_range): fbgemm's AVX2 kernels sum pairs
    # of u8 x s8 products in int16 and saturate with 8-bit ones (--torch-isa avx2)
    qx = torch.quantize_per_tensor(x.clamp(0, 127 * 0.04), 0.04, 0, torch.quint8)
    reference = (torch.nn.functional.conv2d(qx.dequantize(), qw.dequantize(), stride=layer.stride,
                                            padding=layer.padding) if layer.op == "conv2d"
                 else torch.nn.functional.linear(qx.dequantize(), qw.dequantize()))
    out = first(qx).dequantize()
    inside = (reference > -64 * 0.05) & (reference < 191 * 0.05)   # not clipped by quint8 output
    error = (out - reference)[inside].abs().max().item()
    if error > 0.05:   # one output quantization step
        raise RuntimeError(f"torch_int8 {layer.name}: error {error} against fp32 on quantized values")
    return torch_runner(with_copies(first, lambda _: module(), qw.numel(), layer.cold, lambda m: m(qx)))


DYNAMIC_INT8_TOLERANCE = 0.02
"""Relative error (L2) allowed for PyTorch's dynamic int8 Linear against fp32 on its
dequantized weights: the 8-bit quantization of the input (observed ~0.4% on these layers)."""


def torch_int8_dynamic(layer: Layer, target, rng) -> Runner | None:
    """PyTorch's dynamic int8 ``Linear`` (fbgemm): None for a conv layer."""
    if layer.op != "dense":
        return None
    import torch.ao.nn.quantized.dynamic as nnqd
    torch.backends.quantized.engine = "x86"
    x, w = _torch_inputs(layer, rng)
    qw = torch.quantize_per_channel(w, w.abs().amax(dim=1) / 127, torch.zeros(w.shape[0], dtype=torch.long), 0,
                                    torch.qint8)

    def module():
        m = nnqd.Linear(layer.weight_shape[1], layer.weight_shape[0], dtype=torch.qint8)
        m.set_weight_bias(qw, None)                    # packs its own copy of the weights
        return m

    first = module()
    with torch.inference_mode():
        got, reference = first(x), torch.nn.functional.linear(x, qw.dequantize())
    error = (torch.linalg.norm(got - reference) / torch.linalg.norm(reference)).item()
    if error > DYNAMIC_INT8_TOLERANCE:
        raise RuntimeError(f"torch_int8_dynamic {layer.name}: relative error {error:.3f} against fp32")
    return torch_runner(with_copies(first, lambda _: module(), qw.numel(), layer.cold, lambda m: m(x)))


def tvm_fp32(layer: Layer, target, rng) -> Runner:
    x, w = (t.numpy() for t in _torch_inputs(layer, rng))
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(layer.data_shape, "float32"))
    wv = relax.Var("w", relax.TensorType(layer.weight_shape, "float32"))
    with bb.function("main", [xv, wv]):
        with bb.dataflow():
            if layer.op == "conv2d":
                y = relax.op.nn.conv2d(xv, wv, strides=layer.stride, padding=layer.padding)
            else:
                y = relax.op.matmul(xv, relax.op.permute_dims(wv))
            out = bb.emit_output(bb.emit(y))
        bb.emit_func_output(out)
    main = relax.VirtualMachine(tvm.compile(bb.get(), target=target), tvm.cpu())["main"]
    args = [tvm.runtime.tensor(x), tvm.runtime.tensor(w)]
    expected = (torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=layer.stride,
                                           padding=layer.padding) if layer.op == "conv2d"
                else torch.nn.functional.linear(torch.from_numpy(x), torch.from_numpy(w))).numpy()
    np.testing.assert_allclose(main(*args).numpy(), expected, rtol=1e-3, atol=1e-3)
    return runner("relax-default", with_copies(args[1], lambda _: tvm.runtime.tensor(w), w.nbytes, layer.cold,
                                               lambda w: main(args[0], w)))


OURS = {
    "w1a1": ("bitserial", dict(abits=1, wbits=1, activation_encoding="bipolar", weight_encoding="bipolar")),
    "w2a2": ("bitserial", dict(abits=2, wbits=2)),
    "w2a2_bw": ("bitserial", dict(abits=2, wbits=2, weight_encoding="bipolar")),
    "ternary": ("ternary", {}),
    "fatnn": ("fatnn", {}),
    "fgq_w2a4": ("fgq", dict(abits=4)),
    "fgq_w2a8": ("fgq", dict(abits=8)),
    "ternary_int8": ("ternary_int8", {}),
    "int8": ("int8", {}),
}
"""Our precisions: kernel scheme and parameters. ``w2a2`` is the conventional bit-serial
kernel, unsigned 2-bit activations × unsigned 2-bit weights {0..3} (4 AND-popcounts per
word); ``w2a2_bw`` has bipolar weights {-3,-1,1,3} (2 more popcounts per word), which is what
``tvm_ternary.quantize(model, "w2a2")`` builds, so it is the W2A2 of the model rows.
``int8`` is our own 8-bit kernel (7-bit activations × 8-bit weights, the first and last
layers' kernel), the like-for-like int8 beside PyTorch's."""
DENSE_ONLY = {"ternary_int8"}
"""Our precisions with a dense kernel only (no conv rows)."""


def thresholds_for(spec, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-channel thresholds at quantiles of the layer's own output, so that every level of
    the next layer's values occurs (a realistic requantization, not a constant output)."""
    levels = np.quantile(y, np.linspace(0.15, 0.85, spec.threshold_count))
    t = np.tile(np.round(levels).astype(np.int64), (spec.weight_shape[0], 1)) + \
        rng.integers(-1, 2, (spec.weight_shape[0], spec.threshold_count))
    return np.sort(t, axis=1)


def operator_runner(impl: str, f, args: list, cold: bool = False, stage: str = "kernel") -> Runner:
    """A runner of ``f.run(args, stage)``: on its board by the board's time evaluator, or here
    by the harness, with ``cold`` also on copies of its weight tensors (``args[1:-1]``)."""
    if f.remote is not None:
        return board_runner(impl, f, args, stage)

    def copy(a: list) -> list:
        return [a[0], *(tvm.runtime.tensor(t.numpy()) for t in a[1:-1]), a[-1]]
    return runner(impl, with_copies(args, copy, sum(t.numpy().nbytes for t in args[1:-1]), cold,
                                    lambda a: f.run(a, stage)))


def ours(precision: str, fgq_group: int, remote=None, tuned=None):
    """Factory for one of our precisions: runners for the kernel as it runs in a network
    (``hand``: packed, pre-padded input, fused requantize epilogue writing the next layer's
    packed planes), the same kernel with the int32 result instead (``hand-int32``), and the
    stand-alone packing (``pack``). FGQ runs as it does in a network (the rewrite): the int8
    kernel on its weights times group multipliers (4-bit) and its activations, with the
    float affine epilogue (``hand``; FGQ has no packed next layer) or int32 (``hand-int32``),
    and a dense layer with ``fgq_group`` a multiple of 16 or ``"row"`` on the ternary_int8
    kernel (2-bit weight codes, random integer multipliers 0..7) instead; ``ternary_int8``
    (dense only, no rows for conv layers) is that kernel with one group per row, as
    BitNet b1.58's linears, and ``per-token`` the same kernel on float rows that it
    quantizes per token itself (as PyTorch's dynamic int8 ``Linear`` does); ``float-scales`` is the kernel ``tvm_ternary.op(..., "fgq")``
    compiles for arbitrary float group scales (group ``fgq_group``, when a multiple of 4),
    its raw float32 result.
    With ``remote`` (see :mod:`tvm_ternary.remote`) they run and are timed on that board;
    with ``tuned`` (a :func:`tvm_ternary.tune` directory, or ``"shipped"``) the kernels use
    their records (``impl`` ``tuned...`` instead of ``hand...``; a kernel without one gives
    no row) and the packing is not timed again."""
    scheme, params = OURS[precision]

    def variants(layer: Layer) -> list[tuple[str, dict, str, str]]:
        if scheme == "fgq":
            integer = ("int8", dict(abits=params["abits"], wbits=FGQ_INTEGER_WEIGHT_BITS))
            if layer.op == "dense" and (fgq_group == FGQ_ROW or fgq_group % CODE_GROUP == 0):
                integer = ("ternary_int8", dict(abits=params["abits"], group_size=fgq_group))
            found = [(*integer, "affine", "hand"), (*integer, "int32", "hand-int32")]
            if isinstance(fgq_group, int) and fgq_group % 4 == 0:       # what the float-scale kernel takes
                found.append(("fgq", dict(params, group_size=fgq_group), "int32", "float-scales"))
            return found
        if scheme == "ternary_int8":    # float out, as a language model's linear layer
            return [(scheme, params, "affine", "hand"), (scheme, params, "int32", "hand-int32"),
                    (scheme, dict(params, activations="per_token"), "affine", "per-token")]
        if scheme == "int8":            # float out, as a model's first and last layers
            return [(scheme, params, "affine", "hand"), (scheme, params, "int32", "hand-int32")]
        return [(scheme, params, "requantize", "hand"), (scheme, params, "int32", "hand-int32")]

    def make(layer: Layer, target, rng):
        runners, first = [], None
        if precision in DENSE_ONLY and layer.op != "dense":
            return ()
        for kind, kind_params, epilogue, impl in variants(layer):
            f = tvm_ternary.op(layer.op, kind, layer.data_shape, layer.weight_shape, target=target,
                               epilogue=epilogue, remote=remote, tuned=tuned, **layer.conv_kwargs(), **kind_params)
            x = f.spec.scheme.activation.sample(rng, layer.data_shape)
            if kind_params.get("activations") == "per_token":       # float rows, quantized in the kernel
                x = rng.standard_normal(layer.data_shape).astype(np.float32)
            w = f.spec.scheme.weight.sample(rng, layer.weight_shape)
            scales = rng.random(f.spec.scales_shape).astype(np.float32) if kind == "fgq" else None
            if kind == "ternary_int8" and scheme == "fgq":      # FGQ's integer group multipliers
                scales = rng.integers(0, FGQ_MULTIPLIER_MAX + 1, f.spec.scales_shape)
            thresholds = thresholds_for(f.spec, f.spec.reference(x, w), rng) if epilogue == "requantize" else None
            scale, bias = (rng.random(layer.weight_shape[0]).astype(np.float32),
                           rng.standard_normal(layer.weight_shape[0]).astype(np.float32)) \
                if epilogue == "affine" else (None, None)
            args = f.prepare(x, w, scales, thresholds, scale, bias)
            first = first or (f, x, args)
            f.run(args)
            got, expected = args[-1].numpy(), f.reference(x, w, scales, thresholds, scale, bias)
            if got.dtype == np.float32:
                np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-2)
            else:
                np.testing.assert_array_equal(got, expected)
            if tuned and not f.tuned:
                tqdm.write(f"note: no {layer.name} {impl} row for {precision} tuned: no record for its kernel")
                continue
            if tuned:
                impl = "tuned" + impl[len("hand"):] if impl.startswith("hand") else "tuned-" + impl
            runners.append(operator_runner(impl, f, args, layer.cold))
        if not tuned:                  # the input layout of the first variant (the network's)
            f, x, args = first
            values = tvm.runtime.tensor(x.astype(np.int32), args[0].device)
            runners.append(operator_runner("pack", f, [values, args[0]], stage="data"))
        return tuple(runners)

    return make
