"""``tvm_ternary.op``: compile one operator for a target and call it on numpy values.

>>> f = op("conv2d", scheme="ternary", data_shape=(1, 64, 56, 56),
...        weight_shape=(64, 64, 3, 3), stride=1, padding=1, target="host")
>>> y = f(x, w)                # values in, int32 NCHW out
>>> f.lib.inspect_source("asm")

The default target is ``"host"``, this CPU. A generic x86 target (``"llvm"``, no ``mcpu``)
gets the baseline SSE2 schedules; on a CPU with AVX2 or AVX-512 that is a
:class:`~tvm_ternary.diagnostics.SlowPathWarning` (once per target and process).

Compiled kernels are cached per (operator, shapes, scheme, stride, padding, dilation, target, tuning
directory and the state of its records) for the life of the process, so asking twice
costs one compile, and tuning more into a directory compiles its next use again.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from contextlib import contextmanager
from functools import lru_cache
from typing import Sequence

import numpy as np
import tvm
from tvm.target import Target

from . import schedules, tuning
from .diagnostics import warn_if_generic_target
from .operators.compute import ByteRequantizer
from .operators.spec import BYTE_REQUANTIZE_EPILOGUES, RESIDUAL_EPILOGUES, OperatorSpec
from .schemes import Scheme, make_scheme
from .remote import RemoteLike, RemoteModule, last_line
from .targets import TargetLike, describe, host_cannot_run, resolve_target, target_key

_LOG = logging.getLogger(__name__)


_COMPILE_LOCK = threading.Lock()
"""One compile at a time: callers may be threads (one per board), TVM's compiler is shared."""


def _compile(spec: OperatorSpec, target_json: str, tuned: str | None = None) -> tuple[tvm.runtime.Executable, bool]:
    with _COMPILE_LOCK:
        return _compile_once(spec, target_json, tuned, tuning.database_state(tuned) if tuned else None)


@lru_cache(maxsize=None)
def _compile_once(spec: OperatorSpec, target_json: str, tuned: str | None,
                  database_state: tuple[int, int] | None) -> tuple[tvm.runtime.Executable, bool]:
    """The module and whether its kernel uses a tuned record (the data stage keeps its rule).
    ``database_state`` (:func:`tuning.database_state` of ``tuned``) is only a cache key: a
    kernel compiled before more tuning into ``tuned`` is not reused after it."""
    target = Target(target_json)
    data, kernel = spec.data_prim_func(), spec.kernel_prim_func()
    tuned = None if spec.amx else tuned          # the AMX kernel has no knobs, hence no records
    tuned_kernel = tuning.tuned_schedule(kernel, target, tuned) if tuned else None
    if tuned and tuned_kernel is None:
        _LOG.warning("%s: no tuning record for this operator and target (%s) in %s; the hand schedule is used",
                     spec.where, describe(target), tuned)
    funcs = {str(data.attrs["global_symbol"]): schedules.schedule(data, target).mod["main"]}
    funcs[spec.symbol] = (tuned_kernel or schedules.schedule(kernel, target)).mod["main"]
    funcs = {name: f.with_attr("global_symbol", name) for name, f in funcs.items()}
    return tvm.compile(tvm.IRModule(funcs), target=target), tuned_kernel is not None


class CompiledOperator:
    """A compiled operator: call it with values, read its assembly from :attr:`lib`.

    Calling runs two device functions: ``<symbol>_data`` packs the values (bit planes,
    or channels-last bytes for the byte schemes) and ``<symbol>`` is the kernel; weights are packed on
    the host at each call. With a ``remote``, both run on that board (see
    :mod:`tvm_ternary.remote`); the module is uploaded at the first call.
    """

    def __init__(self, spec: OperatorSpec, target: Target, remote: RemoteLike | None = None,
                 tuned: str | os.PathLike | None = None):
        self.spec = spec
        self.target = target
        tuned = None if tuned is None else str(tuning.records_dir(tuned, target))
        self.executable, self.tuned = _compile(spec, target_key(target), tuned)
        self.remote = None if remote is None else RemoteModule(self.executable, target, remote, spec.symbol)
        self._functions: tuple[tvm.runtime.Module | None, dict[str, object]] = (None, {})

    def _function(self, module: tvm.runtime.Module, name: str):
        """``module[name]``, looked up once per module (a lookup costs ~13 µs, ten times
        a small kernel); a new module (a reconnected board) starts a new cache."""
        bound, functions = self._functions
        if bound is not module:
            functions = {}
            self._functions = (module, functions)
        if name not in functions:
            functions[name] = module[name]
        return functions[name]

    @property
    def lib(self) -> tvm.runtime.Module:
        """The compiled runtime module (``inspect_source("asm")``, ``time_evaluator``)."""
        return self.executable.mod

    def kernel_asm(self) -> str:
        """The kernel's assembly alone: its body ``<symbol>_compute_`` and the parallel-loop
        bodies TVM outlines after it (``.L__tvm_parallel_lambda*``), up to the next global
        function of :attr:`lib`."""
        asm = self.lib.inspect_source("asm")
        start = re.search(rf"^{re.escape(self.spec.symbol)}_compute_:", asm, re.M)
        if start is None:
            raise RuntimeError(f"{self.spec.where}: no function {self.spec.symbol} in the module's assembly")
        following = re.search(r"^[A-Za-z_][\w.]*:", asm[start.end():], re.M)
        return asm[start.end(): start.end() + following.start() if following else None]

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Shape of what a call returns: the int32/float32 result, or with the requantize
        epilogue the next layer's packed planes."""
        return self.spec.kernel_output()[0]

    def prepare(self, x: np.ndarray, w: np.ndarray, scales: np.ndarray | None = None,
                thresholds: np.ndarray | None = None, scale: np.ndarray | None = None,
                bias: np.ndarray | None = None) -> list:
        """Validate inputs and return the device tensors ``[packed data, *weights, out]``
        (the epilogue's thresholds, or scale and bias, before ``out``), on the remote board
        if there is one."""
        if self.remote is None:
            reason = host_cannot_run(self.target)
            if reason:
                raise RuntimeError(f"{self.spec.where}: cannot run here: {reason} (the module compiled; inspect "
                                   f"it with .lib.inspect_source('asm'), or run it on a board with remote=...)")
        values = self.spec.check_data(x)
        affine = None if scale is None and bias is None else (scale, bias)
        weight_args = self.spec.weight_args(w, scales, thresholds, affine)
        with self._on_device() as (module, dev):
            packed_shape, packed_dtype = self.spec.kernel_input_shape()
            packed = tvm.runtime.empty(packed_shape, packed_dtype, dev)
            self._function(module, self.spec.symbol + "_data")(tvm.runtime.tensor(values, dev), packed)
            out = tvm.runtime.empty(*self.spec.kernel_output(), dev)
            return [packed, *(tvm.runtime.tensor(a, dev) for a in weight_args), out]

    @contextmanager
    def _on_device(self):
        """``(module, device)`` to run on; a failure on a board becomes a ``RuntimeError``
        and the next call reconnects."""
        if self.remote is None:
            yield self.lib, tvm.cpu()
            return
        module, dev = self.remote.module, self.remote.device     # connects and uploads once
        try:
            yield module, dev
        except (ValueError, TypeError):
            raise
        except Exception as err:
            self.remote.reset()
            raise RuntimeError(f"{self.spec.where}: running on {self.remote.remote} failed ({last_line(err)}); "
                               f"the board stopped, crashed or timed out; the next call reconnects") from None

    def run(self, args: list, stage: str = "kernel") -> None:
        """Run the kernel on device tensors from :meth:`prepare` (the result is ``args[-1]``),
        or the data stage (``stage="data"``, ``args`` = [values, packed]). Nothing is packed
        or checked here: this is the call to time or to repeat."""
        name = self.spec.symbol + ("_data" if stage == "data" else "")
        if self.remote is None:
            self._function(self.lib, name)(*args)
            return
        with self._on_device() as (module, _):
            self._function(module, name)(*args)

    def time(self, args: list, number: int = 1, repeat: int = 5, min_repeat_ms: int = 0,
             stage: str = "kernel") -> list[float]:
        """Seconds per call of the kernel (``stage="kernel"``, ``args`` from :meth:`prepare`)
        or of the data stage (``stage="data"``, ``args`` = [values, packed]): ``repeat``
        averages of ``number`` runs, by TVM's time evaluator where the code runs (a board's
        own clock; an emulated board's timings are not Pi timings)."""
        name = self.spec.symbol + ("_data" if stage == "data" else "")
        with self._on_device() as (module, dev):
            evaluator = module.time_evaluator(name, dev, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms)
            return list(evaluator(*args).results)

    def __call__(self, x: np.ndarray, w: np.ndarray, scales: np.ndarray | None = None,
                 thresholds: np.ndarray | None = None, scale: np.ndarray | None = None,
                 bias: np.ndarray | None = None) -> np.ndarray:
        """Run on values: ``x`` (data_shape), ``w`` (weight_shape), fgq's group ``scales``
        (ternary_int8: integer group multipliers).
        With the requantize epilogue, ``thresholds`` ``(K, L)``, and the result is the next
        layer's packed planes (see :meth:`OperatorSpec.kernel_output`); with the affine
        epilogues, per-channel ``scale`` and ``bias`` ``(K,)``, and the result is float32."""
        args = self.prepare(x, w, scales, thresholds, scale, bias)
        self.run(args)
        with self._on_device():
            return args[-1].numpy()

    def reference(self, x: np.ndarray, w: np.ndarray, scales: np.ndarray | None = None,
                  thresholds: np.ndarray | None = None, scale: np.ndarray | None = None,
                  bias: np.ndarray | None = None) -> np.ndarray:
        """The numpy reference result for the same inputs."""
        if self.spec.epilogue == "requantize":
            return self.spec.reference_requantized(x, w, thresholds)
        if self.spec.requantizer is not None:
            return self.spec.reference_requantized_bytes(x, w, scale, bias)
        if self.spec.epilogue.startswith("affine"):
            return self.spec.reference_affine(x, w, scale, bias, scales)
        return self.spec.reference(x, w, scales)

    def __repr__(self) -> str:
        s = self.spec
        return (f"CompiledOperator({s.where}, data={s.data_shape}, weight={s.weight_shape}, "
                f"stride={s.stride}, padding={s.padding}, target={describe(self.target)})")


def op(name: str, scheme: str, data_shape: Sequence[int], weight_shape: Sequence[int],
       stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
       target: TargetLike = "host", epilogue: str = "int32",
       next_padding: int | Sequence[int] | None = None, remote: RemoteLike | None = None,
       tuned: str | os.PathLike | None = None, dilation: int | Sequence[int] = 1,
       **scheme_params) -> CompiledOperator:
    """Compile operator ``name`` ("conv2d" or "dense") for ``target``.

    Args:
        name: "conv2d" (data NCHW ``(N, C, H, W)``, weight ``(K, C, KH, KW)``) or
            "dense" (data ``(N, K)``, weight ``(M, K)``; no stride/padding).
        scheme: "ternary", "fatnn", "bitserial", "fgq", "int8" or "ternary_int8" (dense: ternary
            weights at 2 bits in memory × 8-bit activations; see :mod:`tvm_ternary.schemes`).
        stride, padding, dilation: an int or one int per spatial axis (conv2d only).
        target: "host" (this CPU, the default), a preset name (``"avx2"``, ``"avx512"``, ``"amx"``,
            ``"rasp4"``, ...; on a target with AMX-INT8 the int8 scheme's conv2d runs on
            AMX tiles, :mod:`tvm_ternary.operators.amx`), a kind string (``"llvm"``: generic x86-64, the SSE2 baseline
            schedules; a :class:`~tvm_ternary.diagnostics.SlowPathWarning` on a CPU with AVX2
            or better, once per target), a dict or a ``tvm.target.Target``.
        epilogue: "int32" (the integer result); "affine" / "affine_relu" (float32
            ``y * scale[k] + bias[k]``, then ReLU); or "requantize": per-channel integer
            thresholds turn the result into the next layer's values (same encoding as this
            layer's activations), packed and padded by ``next_padding`` (default: ``padding``)
            for the next layer's kernel. Epilogues run inside the kernel's register tile: the
            int32 result never reaches memory.
        remote: run on a board over TVM RPC: ``"host:port"`` (e.g. an emulated board,
            ``python -m tvm_ternary.emulator serve``) or ``{"tracker": "host:port", "key": k}``.
        tuned: a tuning directory of :func:`tvm_ternary.tune`, or ``"shipped"`` (the records
            that ship for the target's ISA class): the kernel uses its best record for this
            operator and target (where it has none, the hand schedule, and a warning on the
            ``tvm_ternary.api`` logger; ``.tuned`` says which). Tuning more into the
            directory makes the next call compile again.
        **scheme_params: bitserial ``abits``, ``wbits`` (1..8), ``activation_encoding``,
            ``weight_encoding`` ("unipolar"/"bipolar"); fgq ``group_size`` (a multiple of 4 for
            this float-scale kernel), ``abits`` (4/8); int8 ``activation_encoding`` ("unsigned":
            0..127, or "signed": -64..63, for 7 bits), ``abits``/``wbits`` (2..8, sum <= 15);
            ternary_int8 ``group_size`` (a multiple of 16, or "row", the default), ``abits`` (1..8),
            ``activations`` ("static": integer data 0..2^abits-1, the default; "per_token": float32
            data, each row quantized to -127..127 with step ``absmax / 127`` in the kernel, BitNet's
            activations; the "int32" epilogue then returns the level sums, the affine epilogues
            multiply by each row's step first).

    Returns:
        A :class:`CompiledOperator`; ``f(x, w)`` (fgq: ``f(x, w, scales=s)``, float group scales;
        ternary_int8: optionally ``scales=m``, integer group multipliers -127..127, default 1)
        returns int32 (fgq: float32) ``(N, K, OH, OW)`` or ``(N, M)``.

    Raises:
        ValueError / TypeError naming the operator and the violated constraint.
    """
    target = resolve_target(target)
    if epilogue in BYTE_REQUANTIZE_EPILOGUES:
        raise ValueError(f"{name}[{scheme}]: the {epilogue!r} epilogue writes the next layer's input inside a built "
                         f"model; op() offers 'int32', 'affine', 'affine_relu' and 'requantize'")
    spec = make_spec(name, scheme, data_shape, weight_shape, stride, padding, target, epilogue, next_padding,
                     dilation=dilation, **scheme_params)
    if epilogue in RESIDUAL_EPILOGUES:
        raise ValueError(f"{spec.where}: the {epilogue!r} epilogue adds a residual tensor inside a built model; "
                         f"op() offers 'int32', 'affine', 'affine_relu' and 'requantize'")
    if remote is None:
        warn_if_generic_target(target, spec.where)
    return CompiledOperator(spec, target, remote, tuned)


def make_spec(name: str, scheme: str | Scheme, data_shape: Sequence[int], weight_shape: Sequence[int],
              stride: int | Sequence[int], padding: int | Sequence[int], target: Target, epilogue: str = "int32",
              next_padding: int | Sequence[int] | None = None, dilation: int | Sequence[int] = 1,
              blocked_output: bool = False, requantizer: ByteRequantizer | None = None,
              **scheme_params) -> OperatorSpec:
    """The validated :class:`OperatorSpec` of :func:`op`'s arguments (``scheme`` a name with
    ``scheme_params``, or a built :class:`Scheme`), with ``target``'s weight block and word size
    (``requantizer``: with a byte requantize epilogue, see :meth:`OperatorSpec.create`)."""
    if isinstance(scheme, str):
        scheme = make_scheme(name, scheme, **scheme_params)
    return OperatorSpec.create(name, scheme, data_shape, weight_shape, stride, padding,
                               schedules.weight_block(target, scheme.name, weight_shape), epilogue,
                               next_padding, schedules.word_bits(target, weight_shape), dilation, blocked_output,
                               schedules.has_amx(target), requantizer)
