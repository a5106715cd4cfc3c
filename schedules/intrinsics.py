"""Tensor intrinsics used by the schedules.

``tvm_ternary_dot_u8i8_16x4`` / ``_8x4``: FGQ's group dot product on AVX-512 VNNI and on
AVX2 (see below).

``tvm_ternary_dot_u8_codes_16`` / ``_8``: 16 activation bytes against one quad of 2-bit
weight codes per lane (:mod:`tvm_ternary.packing`), the ternary_int8 kernel's step.

``movemask_<V>``: ``V`` 0/1 int32 lanes -> one integer with bit ``l`` = lane ``l`` (the
"movemask" that packs threshold results into words). The description is the plain loop
``out += bits[l] << l``; the implementation truncates the lanes to ``uint1`` and reinterprets
the ``V`` one-bit lanes as one ``V``-bit integer. LLVM folds that truncation into the
comparison that made the bits, so the bits never exist as 0/1 vectors: on AVX-512 the
compares write a mask register read by one ``kmovw``; AVX2 uses ``vmovmskps``; NEON ands
with the lane powers of two and adds them across the vector (``addv``).
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from .tiling import TILE_SCOPE

MOVEMASK_LANES = (4, 8, 16)


def movemask_name(lanes: int) -> str:
    """Registered name of the movemask intrinsic for ``lanes`` lanes."""
    return f"tvm_ternary_movemask_{lanes}"


def _movemask_desc(lanes: int):
    @T.prim_func(s_tir=True)
    def desc(bits: T.Buffer((lanes,), "int32", offset_factor=1, scope=TILE_SCOPE),
             out: T.Buffer((1,), "uint32", offset_factor=1, scope=TILE_SCOPE)):
        with T.sblock("root"):
            T.reads(out[0:1], bits[0:lanes])
            T.writes(out[0:1])
            for lane in T.serial(lanes):
                with T.sblock("update"):
                    v = T.axis.reduce(lanes, lane)
                    out[0] = out[0] + T.shift_left(T.Cast("uint32", bits[v]), T.Cast("uint32", v))

    return desc


def _movemask_impl(lanes: int):
    @T.prim_func(s_tir=True)
    def impl(bits: T.Buffer((lanes,), "int32", offset_factor=1, scope=TILE_SCOPE),
             out: T.Buffer((1,), "uint32", offset_factor=1, scope=TILE_SCOPE)):
        with T.sblock("root"):
            T.reads(out[0:1], bits[0:lanes])
            T.writes(out[0:1])
            out[0] = out[0] + T.Cast("uint32", T.reinterpret(f"uint{lanes}", T.Cast(f"uint1x{lanes}", bits[T.ramp(0, 1, lanes)])))

    return impl


for _lanes in MOVEMASK_LANES:
    TensorIntrin.register(movemask_name(_lanes), _movemask_desc(_lanes), _movemask_impl(_lanes), override=True)


DOT_U8I8_16X4 = "tvm_ternary_dot_u8i8_16x4"
"""``C[16] += A[4] . B[16, 4]``: 4 unsigned activation bytes against 4 signed weight bytes for
each of 16 output channels, as one AVX-512 VNNI ``vpdpbusd``; ``C`` lives in registers."""


def _dot_desc(lanes: int):
    """``c[lanes] += a[4] . b[lanes, 4]``, byte by byte: the description both dot products share."""
    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((4,), "uint8", offset_factor=1),
             b: T.Buffer((lanes, 4), "int8", offset_factor=1),
             c: T.Buffer((lanes,), "int32", offset_factor=1, scope=TILE_SCOPE)):
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:4], b[0:lanes, 0:4])
            T.writes(c[0:lanes])
            for lane in T.serial(lanes):
                for byte in T.serial(4):
                    with T.sblock("update"):
                        vl, vb = T.axis.remap("SR", [lane, byte])
                        c[vl] = c[vl] + T.Cast("int32", a[vb]) * T.Cast("int32", b[vl, vb])

    return desc


@T.prim_func(s_tir=True)
def _dot_vnni(a: T.Buffer((4,), "uint8", offset_factor=1),
              b: T.Buffer((16, 4), "int8", offset_factor=1),
              c: T.Buffer((16,), "int32", offset_factor=1, scope=TILE_SCOPE)):
    with T.sblock("root"):
        T.reads(c[0:16], a[0:4], b[0:16, 0:4])
        T.writes(c[0:16])
        activations = T.reinterpret(a.vload([0], "uint8x4"), dtype="int32")       # the quad, as one word
        broadcast = T.reinterpret(T.broadcast(activations, 16), dtype="int8x64")  # ... in every lane
        c[T.ramp(0, 1, 16)] = T.call_llvm_pure_intrin(                             # LLVM >= 20: byte operands
            "int32x16", "llvm.x86.avx512.vpdpbusd.512",
            c.vload([0], dtype="int32x16"), broadcast, b.vload([0, 0], dtype="int8x64"))


TensorIntrin.register(DOT_U8I8_16X4, _dot_desc(16), _dot_vnni, override=True)


DOT_U8I8_8X4 = "tvm_ternary_dot_u8i8_8x4"
"""``C[8] += A[4] . B[8, 4]`` on AVX2: ``vpmaddubsw`` (u8 x s8 pairs -> i16) then ``vpmaddwd``
with ones (pairs -> i32). Exact only while a pair sum fits int16: FGQ's weights are
ternary (``|a0*b0 + a1*b1| <= 510``), and the int8 scheme keeps ``abits + wbits <= 15``."""


@T.prim_func(s_tir=True)
def _dot8_avx2(a: T.Buffer((4,), "uint8", offset_factor=1),
               b: T.Buffer((8, 4), "int8", offset_factor=1),
               c: T.Buffer((8,), "int32", offset_factor=1, scope=TILE_SCOPE)):
    with T.sblock("root"):
        T.reads(c[0:8], a[0:4], b[0:8, 0:4])
        T.writes(c[0:8])
        activations = T.reinterpret(a.vload([0], "uint8x4"), dtype="int32")
        broadcast = T.reinterpret(T.broadcast(activations, 8), dtype="int8x32")
        pairs = T.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw",
                                        broadcast, b.vload([0, 0], dtype="int8x32"))
        quads = T.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd", pairs, T.broadcast(T.int16(1), 16))
        c[T.ramp(0, 1, 8)] = c.vload([0], dtype="int32x8") + quads


TensorIntrin.register(DOT_U8I8_8X4, _dot_desc(8), _dot8_avx2, override=True)


DOT_U8I8_4X4 = "tvm_ternary_dot_u8i8_4x4"
"""``C[4] += A[4] . B[4, 4]`` on NEON (Cortex-A72 has no ``sdot``): the activation quad widened
to 16 bits once (``ushll``), and per byte one ``smlal`` of the 4 lanes' weights, widened to
16 bits, by that activation lane (by-element form): 4 multiply-adds of 16-bit operands into
int32 lanes per instruction, exact for every u8 x s8 product. The weights' widening and
byte-major transpose are the same expressions for every pixel of a tile, so LLVM computes
them once per quad (:func:`_byte_major`)."""


def _byte_major(quad):
    """The 16 weights of a quad (lane-major: 4 lanes x 4 bytes) widened to int16x16 and
    reordered byte-major (4 bytes x 4 lanes): ``sshll``/``sshll2``, then two rounds of
    even/odd de-interleaving (``uzp1``/``uzp2``). Written as one 16-lane shuffle, LLVM lowers
    it to a chain of lane moves, each waiting for the one before (``benchmarks/pi_estimate.py``:
    62-76% of the bound on Cortex-A72 against 74-95%)."""
    wide = T.Cast("int16x16", quad)
    halves = [T.Shuffle([wide], list(range(8))), T.Shuffle([wide], list(range(8, 16)))]
    for _ in range(2):
        halves = [T.Shuffle(halves, list(range(parity, 16, 2))) for parity in (0, 1)]
    return T.Shuffle(halves, list(range(16)))


def _smull(weights, activations, byte: int):
    """int32x4 products of the 4 lanes' weights of ``byte`` (16-bit) with that activation."""
    lanes = T.Shuffle([weights], [4 * byte + lane for lane in range(4)])
    return T.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.smull.v4i32", lanes,
                                   T.Shuffle([activations], [byte] * 4))


@T.prim_func(s_tir=True)
def _dot4_neon(a: T.Buffer((4,), "uint8", offset_factor=1),
               b: T.Buffer((4, 4), "int8", offset_factor=1),
               c: T.Buffer((4,), "int32", offset_factor=1, scope=TILE_SCOPE)):
    with T.sblock("root"):
        T.reads(c[0:4], a[0:4], b[0:4, 0:4])
        T.writes(c[0:4])
        weights = _byte_major(b.vload([0, 0], dtype="int8x16"))
        activations = T.Cast("int16x4", a.vload([0], "uint8x4"))
        c[T.ramp(0, 1, 4)] = c.vload([0], dtype="int32x4") + _smull(weights, activations, 0) \
            + _smull(weights, activations, 1) + _smull(weights, activations, 2) + _smull(weights, activations, 3)


TensorIntrin.register(DOT_U8I8_4X4, _dot_desc(4), _dot4_neon, override=True)


def _codes_desc(lanes: int):
    """``c[lanes] += sum_{i, b} a[4i + b] * ((w[lane, b] >> 2i) & 3)``: 16 activation bytes
    against the 16 codes a lane's quad of code bytes holds."""
    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((16,), "uint8", offset_factor=1),
             w: T.Buffer((lanes, 4), "uint8", offset_factor=1),
             c: T.Buffer((lanes,), "int32", offset_factor=1, scope=TILE_SCOPE)):
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:16], w[0:lanes, 0:4])
            T.writes(c[0:lanes])
            for lane, shift, byte in T.grid(lanes, 4, 4):
                with T.sblock("update"):
                    vl, vi, vb = T.axis.remap("SRR", [lane, shift, byte])
                    c[vl] = c[vl] + T.Cast("int32", a[vi * 4 + vb]) * T.bitwise_and(
                        T.shift_right(T.Cast("int32", w[vl, vb]), vi * 2), 3)

    return desc


_VPDPBUSD = "llvm.x86.avx512.vpdpbusd.512"
_VPMADDUBSW = "llvm.x86.avx2.pmadd.ub.sw"

DOT_U8_CODES_16 = "tvm_ternary_dot_u8_codes_16"
"""AVX-512 VNNI: one 64-byte load of 16 lanes' code quads, then per shift ``i`` a ``vpsrlw``
+ ``vpand`` (codes as bytes 0..2) and a ``vpdpbusd`` against activation quad ``i`` broadcast."""


def _quad(a, i: int, lanes: int, dtype: str):
    """Activation quad ``i`` of ``a`` (4 bytes as one int32), broadcast to ``lanes`` lanes as bytes."""
    return T.reinterpret(T.broadcast(T.reinterpret(a.vload([4 * i], "uint8x4"), dtype="int32"), lanes), dtype=dtype)


def _codes(packed, i: int, halves: int, dtype: str):
    """The codes at bits ``2i`` of every byte of ``packed`` (``halves`` int16 lanes): 0..2 per byte."""
    shifted = packed if i == 0 else T.shift_right(packed, T.broadcast(T.int16(2 * i), halves))
    return T.reinterpret(T.bitwise_and(shifted, T.broadcast(T.int16(0x0303), halves)), dtype=dtype)


def _vnni_quads(c, a, packed):
    """``c`` plus the four ``vpdpbusd`` of activation quads 0..3 with the codes at bits ``2i``."""
    for i in range(4):
        c = T.call_llvm_pure_intrin("int32x16", _VPDPBUSD, c, _quad(a, i, 16, "int8x64"),
                                    _codes(packed, i, 32, "int8x64"))
    return c


def _avx2_quads(a, packed):
    """The four ``vpmaddubsw`` of activation quads 0..3 with the codes at bits ``2i``, summed in int16."""
    pairs = None
    for i in range(4):
        product = T.call_llvm_pure_intrin("int16x16", _VPMADDUBSW, _quad(a, i, 8, "int8x32"),
                                          _codes(packed, i, 16, "int8x32"))
        pairs = product if pairs is None else pairs + product
    return pairs


@T.prim_func(s_tir=True)
def _codes_vnni(a: T.Buffer((16,), "uint8", offset_factor=1),
                w: T.Buffer((16, 4), "uint8", offset_factor=1),
                c: T.Buffer((16,), "int32", offset_factor=1, scope=TILE_SCOPE)):
    with T.sblock("root"):
        T.reads(c[0:16], a[0:16], w[0:16, 0:4])
        T.writes(c[0:16])
        packed = T.reinterpret(w.vload([0, 0], dtype="uint8x64"), dtype="int16x32")
        c[T.ramp(0, 1, 16)] = _vnni_quads(c.vload([0], dtype="int32x16"), a, packed)


TensorIntrin.register(DOT_U8_CODES_16, _codes_desc(16), _codes_vnni, override=True)


DOT_U8_CODES_8 = "tvm_ternary_dot_u8_codes_8"
"""AVX2: per shift a ``vpmaddubsw`` of activation quad ``i`` with the codes (pair sums at most
``2 * 255 * 2``), the four int16 results added (at most 4080, exact), then one ``vpmaddwd``."""


@T.prim_func(s_tir=True)
def _codes_avx2(a: T.Buffer((16,), "uint8", offset_factor=1),
                w: T.Buffer((8, 4), "uint8", offset_factor=1),
                c: T.Buffer((8,), "int32", offset_factor=1, scope=TILE_SCOPE)):
    with T.sblock("root"):
        T.reads(c[0:8], a[0:16], w[0:8, 0:4])
        T.writes(c[0:8])
        packed = T.reinterpret(w.vload([0, 0], dtype="uint8x32"), dtype="int16x16")
        c[T.ramp(0, 1, 8)] = c.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
            "int32x8", "llvm.x86.avx2.pmadd.wd", _avx2_quads(a, packed), T.broadcast(T.int16(1), 16))


TensorIntrin.register(DOT_U8_CODES_8, _codes_desc(8), _codes_avx2, override=True)
