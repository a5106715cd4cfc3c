"""Schedule rule dispatch (the per-target fast rules come with their own tests)."""

import platform
import re

import numpy as np

import pytest
import torch
import tvm
from tvm import te

import tvm_ternary
from tvm_ternary import schedules
from tvm_ternary.api import make_spec
from tvm_ternary.operators import OperatorSpec
from tvm_ternary.schedules.float_ops import FloatCPU
from tvm_ternary.schemes import make_scheme
from tvm_ternary.targets import resolve_target

from .asm import count
from .conftest import AVX2, AVX512, RASP4, host_has_avx512_popcount

from neon_instructions import innermost_loop, mnemonics  # conftest puts benchmarks/ on sys.path
from pi_estimate import stack_vector_accesses

KERNELS = [("conv2d", "ternary", {}), ("conv2d", "fatnn", {}), ("conv2d", "bitserial", dict(abits=2, wbits=2)),
           ("conv2d", "bitserial", dict(abits=1, wbits=1, activation_encoding="bipolar", weight_encoding="bipolar")),
           ("dense", "ternary", {}), ("dense", "bitserial", dict(abits=2, wbits=2))]
KERNEL_IDS = ["conv-ternary", "conv-fatnn", "conv-w2a2", "conv-w1a1", "dense-ternary", "dense-w2a2"]


def kernel_asm(op, scheme, params, target):
    shapes = ((1, 128, 14, 14), (128, 128, 3, 3)) if op == "conv2d" else ((1, 512), (256, 512))
    f = tvm_ternary.op(op, scheme, *shapes, padding=1 if op == "conv2d" else 0, target=target, **params)
    return f.kernel_asm()


@pytest.mark.parametrize("op,scheme,params", KERNELS, ids=KERNEL_IDS)
def test_avx2_kernels_use_the_vpshufb_lookup_not_scalar_popcnt(op, scheme, params):
    asm = kernel_asm(op, scheme, params, AVX2)
    assert count(asm, "vpshufb") >= 2 and count(asm, "vpsadbw") + count(asm, "vpaddb") >= 1
    assert count(asm, "popcntl") + count(asm, "popcntq") + count(asm, "popcnt") == 0


@pytest.mark.parametrize("op,scheme,params", KERNELS, ids=KERNEL_IDS)
def test_avx512_kernels_use_vpopcnt(op, scheme, params):
    asm = kernel_asm(op, scheme, params, AVX512)
    assert count(asm, "vpopcntd") + count(asm, "vpopcntq") >= 2
    assert "zmm" in asm                                  # 16 words per vector
    assert count(asm, "popcntl") + count(asm, "popcntq") == 0


def test_avx512_requantize_epilogue_reads_comparisons_as_mask_registers():
    """Threshold compares land in k registers and ``kmovw`` reads 16 channel bits at once;
    no 0/1 vectors go through memory into a shuffle-tree or-reduction."""
    f = tvm_ternary.op("conv2d", "ternary", (1, 64, 14, 14), (64, 64, 3, 3), padding=1, target=AVX512,
                       epilogue="requantize")
    asm = f.kernel_asm()
    assert count(asm, "kmovw") >= 2 * 7                   # two planes per pixel of a 7-pixel tile
    assert count(asm, "vpshufd") == 0 and count(asm, "vpmovm2d") <= 1


@pytest.mark.parametrize("op,scheme,params", KERNELS, ids=KERNEL_IDS)
def test_neon_kernels_accumulate_popcounts_in_16_bit_lanes(op, scheme, params):
    """cnt (bytes) then one uadalp into 16-bit accumulator lanes per word vector; no uaddlp
    per word (the 32-bit-lane chain was cnt + uaddlp + uadalp)."""
    asm = kernel_asm(op, scheme, params, RASP4)
    cnt = count(asm, "cnt")
    assert cnt >= 2
    assert len(re.findall(r"^\s+uadalp\s+v\d+\.8h, v\d+\.16b", asm, re.M)) == cnt
    assert count(asm, "uaddlp") < cnt


@pytest.mark.parametrize("epilogue", ["requantize", "affine"])
@pytest.mark.parametrize("width,most", [(56, 1 / 6), (14, 1 / 6), (7, 1 / 4)])
def test_neon_conv_broadcasts_each_input_word_for_several_products(epilogue, width, most):
    """On NEON a broadcast (``ld1r``) takes a pipe slot like an ALU op, so a ternary conv tile
    shares each broadcast input word: four output-channel blocks (two words of the
    requantize epilogue's output), and the kernel's columns unrolled inside the tile (pixels
    o and o + 1 read the same word for columns c + 1 and c). A tile of one block with the
    columns outside broadcasts each plane's word once per pixel and tap, as many ``ld1r`` as
    ``cnt``; two blocks left 0.25, 0.33 and 0.43 per ``cnt`` at widths 56, 14 and 7 (4x2,
    4x2 and 4x1 tiles: 1/6, 1/6 and 1/4)."""
    f = tvm_ternary.op("conv2d", "ternary", (1, 128, width, width), (128, 128, 3, 3), padding=1, target=RASP4,
                       epilogue=epilogue)
    asm = f.kernel_asm()
    cnt, ld1r = count(asm, "cnt"), count(asm, "ld1r")
    assert cnt >= 12 and 0 < ld1r <= cnt * most, (cnt, ld1r)


W1A1_BIPOLAR = {"abits": 1, "wbits": 1, "activation_encoding": "bipolar", "weight_encoding": "bipolar"}


@pytest.mark.parametrize("scheme,params,width,stride", [
    ("ternary", {}, 56, 1), ("bitserial", {"abits": 2, "wbits": 2}, 56, 1), ("bitserial", W1A1_BIPOLAR, 56, 1),
    ("bitserial", W1A1_BIPOLAR, 16, 1), ("bitserial", W1A1_BIPOLAR, 14, 2)],
    ids=["ternary", "w2a2", "w1a1", "w1a1-16", "w1a1-s2"])
def test_neon_conv_tile_stays_in_registers(scheme, params, width, stride):
    """With the kernel's columns inside a NEON conv tile, its accumulators, the row's
    broadcast inputs and a column's weight vectors stay within ``Isa.tile_registers``, so the
    popcount loop spills nothing to the stack. w1a1 took 8 pixels x 2 blocks before, which
    spilled 13 vector registers per iteration at width 56 and 22 at width 16. At stride 2 a
    7-pixel row broadcasts 15 positions, not 9: counted so, w1a1 takes 4 blocks of 1 pixel
    (ranked as at stride 1, 2 blocks of 7 pixels spilled 10 per iteration)."""
    f = tvm_ternary.op("conv2d", scheme, (1, 64, width, width), (64, 64, 3, 3), stride=stride, padding=1,
                       target=RASP4, epilogue="requantize", **params)
    loop = innermost_loop(f.kernel_asm().splitlines(), lambda body: "cnt" in mnemonics(body))
    spills = stack_vector_accesses([line.strip() for line in loop])
    assert mnemonics(loop).count("cnt") >= 12 and spills == 0, spills


def test_column_tile_bounds_the_pixel_run():
    """The pixel run of a tile with the columns inside counts the broadcast inputs and one
    column's weight vectors besides the accumulators: w1a1 (1 accumulator per pixel and
    block, 1 weight plane, 2 input planes) at width 56 with 2 blocks keeps 2 weight vectors
    and 2 inputs at each of ``t + 2`` positions, so 7 pixels within 36 registers (6 + 4 per
    pixel) where the accumulator budget alone allows 8; at dilation 2, ``t + 4`` positions,
    so 4 pixels (10 + 4 per pixel)."""
    assert schedules.tiling.fewest_loads(56, 1, 20, [1, 2]) == (2, 8)
    columns = schedules.tiling.ColumnTile(columns=3, weight_planes=1, input_planes=2, registers=36)
    assert columns.most_pixels(56, 2, 2) == 7
    assert schedules.tiling.fewest_loads(56, 1, 20, [1, 2], columns=columns) == (2, 7)
    dilated = schedules.tiling.ColumnTile(columns=3, weight_planes=1, input_planes=2, registers=36, dilation=2)
    assert dilated.most_pixels(56, 2, 2) == 4
    strided = schedules.tiling.ColumnTile(columns=3, weight_planes=1, input_planes=2, registers=36, stride=2)
    assert strided.broadcasts_per_product(7, 2) == 15 / 42 and columns.broadcasts_per_product(7, 2) == 9 / 42
    assert schedules.tiling.fewest_loads(7, 1, 20, [1, 2, 4], columns=strided) == (4, 1)
    assert schedules.tiling.ColumnTile(1, 1, 2, 36, stride=2).broadcasts_per_product(4, 1) == 1  # 1x1: no overlap
    assert dilated.broadcasts_per_product(4, 1) == 8 / 12 and dilated.broadcasts_per_product(1, 1) == 1  # 0, 2, 4


def test_neon_conv_tiles_take_the_fewest_broadcasts():
    """With the columns inside (NEON), a tile is chosen by its broadcasts per product, which
    take a NEON pipe slot, not by its weight loads, which take only the load pipe: ternary
    (2 accumulators per pixel and block, 2 planes each) in a 7-pixel row takes 4 blocks of
    1 pixel (3 broadcasts per plane for 12 products) where counting weight loads too took 1
    block of 7 (9 for 21); in a 14-pixel row 4 blocks of 2. A 1x1 kernel shares no broadcast
    between columns, so its tiles rank by all loads, a broadcast counted twice (w2a2 28 wide:
    2 blocks of 2 pixels, where 4 blocks of 1 spilled; ternary 7 wide: 4 blocks of 1, where
    counting loads once took 1 block of 7). A requantizing tile reaches 4 blocks by spanning
    two words of 2 blocks, where the words pair up."""
    ternary = schedules.tiling.ColumnTile(columns=3, weight_planes=2, input_planes=2, registers=36)
    assert schedules.tiling.fewest_loads(7, 2, 20, [1, 2, 4], columns=ternary) == (4, 1)
    assert schedules.tiling.fewest_loads(7, 2, 20, [1, 2, 4]) == (1, 7)
    assert schedules.tiling.fewest_loads(14, 2, 20, [1, 2, 4], columns=ternary) == (4, 2)
    one_column = schedules.tiling.ColumnTile(columns=1, weight_planes=2, input_planes=2, registers=36)
    assert schedules.tiling.fewest_loads(28, 4, 20, [1, 2, 4], columns=one_column) == (2, 2)   # 1x1: loads,
    assert schedules.tiling.fewest_loads(7, 2, 20, [1, 2, 4], columns=one_column) == (4, 1)    # broadcasts 2x
    assert schedules.popcount._block_choices(2, 4, 4) == [1, 2, 4]
    assert schedules.popcount._block_choices(2, 3, 4) == [1, 2]
    assert schedules.popcount._block_choices(8, 2, 4) == [1, 2, 4]


def test_isa_of_pinned_targets():
    assert schedules.isa_of(tvm.target.Target(AVX2)).name == "avx2"
    assert schedules.isa_of(tvm.target.Target(AVX512)).name == "avx512"
    assert schedules.isa_of(tvm.target.Target(RASP4)).name == "neon"
    assert schedules.isa_of(tvm.target.Target("llvm")).name == "baseline"
    assert schedules.weight_block(tvm.target.Target(AVX512)) == 16
    assert schedules.word_bits(tvm.target.Target(AVX2)) == 64           # 4 x u64 per ymm
    assert schedules.weight_block(tvm.target.Target(AVX2)) == 4
    assert schedules.weight_block(tvm.target.Target(AVX2), "fgq") == 8   # int32 lanes
    pi4 = tvm.target.Target(RASP4)
    assert (schedules.word_bits(pi4), schedules.weight_block(pi4)) == (16, 8)       # 8 x u16 per q register
    assert schedules.weight_block(pi4, "fgq") == 4
    # 16-bit words while uint16 accumulators cannot overflow (<= 4095 words per output), else 32-bit
    assert schedules.word_bits(pi4, (8, 512, 3, 3)) == 16
    assert (schedules.word_bits(pi4, (8, 8192, 3, 3)), schedules.weight_block(pi4, "ternary", (8, 8192, 3, 3))) == (32, 4)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="reads x86 CPU flags")
def test_host_preset_picks_the_best_isa_this_cpu_has():
    expected = "avx512" if host_has_avx512_popcount() else "avx2"
    assert schedules.isa_of(resolve_target("host")).name == expected


def spec(scheme="ternary", padding=1, **params):
    return OperatorSpec.create("conv2d", make_scheme("conv2d", scheme, **params), (1, 33, 6, 6),
                               (4, 33, 3, 3), 1, padding, 8)


@pytest.mark.parametrize("tunable", [False, True])
def test_popcount_rule_tiles_registers_and_vectorizes(tunable, rng):
    seed = sample_seed(rng)
    sch = schedules.PopcountKernel().apply(spec().kernel_prim_func(), tvm.target.Target(AVX2), tunable, seed=seed)
    script = sch.mod.script()
    assert "T.parallel" in script and "T.vectorized(8)" in script, f"seed {seed}"
    assert 'scope="local"' not in script, f"seed {seed}"   # tile buffers on the stack (see the asm test below)
    sampled = [inst.kind.name for inst in sch.trace.insts if inst.kind.name.startswith("Sample")]
    assert bool(sampled) == tunable


def sample_seed(rng: np.random.Generator) -> int:
    """A seed for a sampled schedule (``apply(..., seed=)``), drawn from the test's ``rng`` so
    that a failing sample is reproduced by its test id; tests report it when they fail."""
    return int(rng.integers(1, 2**31 - 1, endpoint=True))


SAMPLED_KERNELS = [("ternary", "int32", {}), ("bitserial", "requantize", dict(abits=2, wbits=2)),
                   ("fgq", "int32", dict(group_size=4, abits=4))]


def avx2_spec(scheme: str, epilogue: str, params: dict) -> OperatorSpec:
    """A conv2d spec laid out for the AVX2 target, as :func:`tvm_ternary.op` makes it."""
    return make_spec("conv2d", scheme, (2, 40, 7, 14), (24, 40, 3, 3), 1, 1, tvm.target.Target(AVX2), epilogue,
                     **params)


@pytest.mark.parametrize("scheme,epilogue,params", SAMPLED_KERNELS, ids=["ternary", "requantize", "fgq"])
def test_same_seed_samples_the_same_schedule(scheme, epilogue, params, rng):
    """A seed fixes the sampled knobs (trace decisions and the scheduled TIR alike), and the
    seeds do reach the sampling: a few of them give more than one schedule."""
    func = avx2_spec(scheme, epilogue, params).kernel_prim_func()
    target, rule = tvm.target.Target(AVX2), schedules.FgqKernel() if scheme == "fgq" else schedules.PopcountKernel()
    seeds = [sample_seed(rng) for _ in range(8)]
    scripts = set()
    for seed in seeds:
        first, second = (rule.apply(func, target, True, seed=seed) for _ in range(2))
        assert str(first.trace) == str(second.trace), f"seed {seed}"
        assert first.mod.script() == second.mod.script(), f"seed {seed}"
        scripts.add(first.mod.script())
    assert len(scripts) > 1, f"seeds {seeds} all sampled the same schedule"


@pytest.mark.parametrize("scheme,params", [("ternary", {}), ("fatnn", {})])
def test_neon_requantize_samples_spanning_two_words_stay_exact(scheme, params, rng, board, monkeypatch):
    """The tunable NEON requantize schedule with tiles of 4 channel blocks (two 16-channel
    output words, each word's thresholds and packing apart) computes the reference on the
    emulated Pi 4 for a few sampled pixel runs and loop orders."""
    original = schedules.schedule
    seed = [0]

    def sampled(func, target, **kwargs):
        sch = schedules.PopcountKernel().apply(func, target, True, seed=seed[0])
        return sch if sch is not None else original(func, target, **kwargs)

    monkeypatch.setattr(schedules, "schedule", sampled)
    tvm_ternary.api._compile_once.cache_clear()     # compiled samples must not outlive the test
    try:
        for seed[0] in [sample_seed(rng) for _ in range(3)]:
            f = tvm_ternary.op("conv2d", scheme, (2, 24, 7, 10), (64, 24, 3, 3), padding=1, target=RASP4,
                               epilogue="requantize", next_padding=1, remote=board.address, **params)
            s = f.spec
            x, w = s.scheme.activation.sample(rng, s.data_shape), s.scheme.weight.sample(rng, s.weight_shape)
            levels = np.quantile(s.reference(x, w), np.linspace(0.1, 0.9, s.threshold_count))
            thresholds = np.tile(np.round(levels).astype(np.int64), (64, 1))
            np.testing.assert_array_equal(f(x, w, thresholds=thresholds), f.reference(x, w, thresholds=thresholds),
                                          err_msg=f"PopcountKernel().apply(..., True, seed={seed[0]})")
    finally:
        tvm_ternary.api._compile_once.cache_clear()


def test_same_seed_samples_the_same_packing_schedule(rng):
    """Rows wider than MAX_VECTOR_ROW are split by a sampled factor."""
    wide = make_spec("conv2d", "ternary", (1, 40, 3, 100), (8, 40, 3, 3), 1, 1, tvm.target.Target(AVX2))
    func = wide.data_prim_func()
    target, rule = tvm.target.Target(AVX2), schedules.ActivationPack()
    seeds = [sample_seed(rng) for _ in range(8)]
    scripts = set()
    for seed in seeds:
        first, second = (rule.apply(func, target, True, seed=seed) for _ in range(2))
        assert first.mod.script() == second.mod.script(), f"seed {seed}"
        scripts.add(first.mod.script())
    assert len(scripts) > 1, f"seeds {seeds} all sampled the same schedule"


@pytest.mark.parametrize("scheme,epilogue,params", SAMPLED_KERNELS, ids=["ternary", "requantize", "fgq"])
def test_fixed_schedule_is_deterministic(scheme, epilogue, params):
    """``tunable=False`` samples nothing: every rule's schedule of the kernel and of its data
    stage is the same each time, whatever the schedule's random state."""
    s = avx2_spec(scheme, epilogue, params)
    target = tvm.target.Target(AVX2)
    for func in (s.kernel_prim_func(), s.data_prim_func()):
        first, second = (schedules.schedule(func, target) for _ in range(2))
        assert not [inst for inst in first.trace.insts if inst.kind.name.startswith("Sample")]
        assert str(first.trace) == str(second.trace) and first.mod.script() == second.mod.script()


@pytest.mark.parametrize("target,lanes", [(AVX2, 8), (AVX512, 16), (RASP4, 4)], ids=["avx2", "avx512", "neon"])
def test_requantize_epilogue_is_fused_and_tensorized(target, lanes):
    fused = OperatorSpec.create("conv2d", make_scheme("conv2d", "ternary"), (1, 64, 8, 8), (64, 64, 3, 3), 1, 1,
                                lanes, "requantize")
    script = schedules.schedule(fused.kernel_prim_func(), tvm.target.Target(target)).mod.script()
    assert f'T.reinterpret("uint{lanes}"' in script             # movemask over the V lanes
    assert f"T.vectorized({lanes})" in script
    assert script.count("T.parallel") == 2                     # the tile loop nest and repad
    assert 'scope="local"' not in script


@pytest.mark.parametrize("op,shapes,epilogue", [
    ("conv2d", ((1, 64, 56, 56), (64, 64, 3, 3)), "requantize"), ("conv2d", ((1, 64, 56, 56), (64, 64, 3, 3)), "int32"),
    ("dense", ((1, 4096), (4096, 4096)), "requantize"), ("dense", ((1, 4096), (4096, 4096)), "int32")],
    ids=["conv-requantize", "conv-int32", "dense-requantize", "dense-int32"])
def test_parallel_loop_body_allocates_nothing(op, shapes, epilogue):
    """Tile buffers are stack allocations LLVM keeps in registers: no TVMBackendAllocWorkspace
    call in the parallel loop bodies (one per iteration cost 10-15% of a ResNet-18 layer)."""
    f = tvm_ternary.op(op, "ternary", *shapes, padding=1 if op == "conv2d" else 0, target=AVX512, epilogue=epilogue)
    bodies = f.kernel_asm().split(".L__tvm_parallel_lambda:", 1)
    assert len(bodies) == 2, "no parallel loop in the kernel"
    assert "TVMBackendAllocWorkspace" not in bodies[1]


def dense_spec(scheme="ternary", **params):
    return OperatorSpec.create("dense", make_scheme("dense", scheme, **params), (2, 70), (9, 70), block=8)


@pytest.mark.parametrize("func", [dense_spec().data_prim_func(), dense_spec("fgq", group_size=4).data_prim_func()],
                         ids=["dense-pack", "fgq-layout"])
def test_generic_rule_parallelizes_what_the_specific_rules_leave(func):
    target = tvm.target.Target(AVX2)
    assert all(rule.apply(func, target, False) is None for rule in schedules.rules_for(target)[:-1])
    assert "T.parallel" in schedules.schedule(func, target).mod.script()


def test_fgq_rule_never_materializes_group_sums():
    func = spec("fgq", group_size=4, abits=4).kernel_prim_func()
    assert schedules.GenericCPU().apply(func, tvm.target.Target(AVX2), False) is None
    script = schedules.schedule(func, tvm.target.Target(AVX2)).mod.script()
    assert script.index('T.sblock("group_update') > script.index("T.parallel")   # inside acc's loop nest


def test_rule_declines_foreign_functions():
    a = te.placeholder((4,), "float32", name="a")
    b = te.compute((4,), lambda i: a[i] * 2, name="double")
    func = te.create_prim_func([a, b])
    assert schedules.GenericCPU().apply(func, tvm.target.Target(AVX2), False) is None
    with pytest.raises(ValueError, match="schedules: no rule for main"):
        schedules.schedule(func, tvm.target.Target(AVX2))


def test_non_cpu_target_is_refused():
    with pytest.raises(ValueError, match="schedules: target kind 'c' is not supported"):
        schedules.rules_for(tvm.target.Target("c"))


@pytest.mark.parametrize("scheme,params", [("int8", {}), ("int8", dict(abits=8, wbits=4)),
                                           ("fgq", dict(group_size=4, abits=8))], ids=["int8", "a8w4", "fgq"])
def test_neon_byte_kernels_multiply_16_bit_lanes_by_element(scheme, params):
    """On NEON (no ``sdot`` on Cortex-A72) each byte of a quad is one ``smlal``/``smull`` of
    the 4 lanes' 16-bit weights by an activation lane, not 32-bit ``mla`` of widened bytes.
    The weights reach byte-major order by ``uzp1``/``uzp2``, not by a chain of byte-lane moves
    (``mov vN.b[i], ...``: LLVM's lowering of the transpose as one shuffle)."""
    f = tvm_ternary.op("conv2d", scheme, (1, 40, 7, 9), (24, 40, 3, 3), padding=1, target=RASP4, **params)
    asm = f.kernel_asm()
    by_element = re.findall(r"^\s+(?:smlal2?|smull2?)\s+v\d+\.4s, v\d+\.[48]h, v\d+\.h\[\d\]", asm, re.M)
    assert len(by_element) >= 4 and count(asm, "mla") == 0
    lane_moves = re.findall(r"^\s+(?:mov|ins)\s+v\d+\.[bh]\[\d+\]", asm, re.M)
    assert count(asm, "uzp1") >= 2 and count(asm, "uzp2") >= 2 and not lane_moves, lane_moves


@pytest.mark.parametrize("group_size", [4, 64])
def test_fgq_uses_byte_dot_product_instructions(group_size):
    shapes = ((1, 128, 14, 14), (128, 128, 3, 3))
    vnni = tvm_ternary.op("conv2d", "fgq", *shapes, padding=1, target=AVX512, group_size=group_size, abits=8)
    assert count(vnni.kernel_asm(), "vpdpbusd") >= 1
    avx2 = tvm_ternary.op("conv2d", "fgq", *shapes, padding=1, target=AVX2, group_size=group_size, abits=8)
    asm = avx2.kernel_asm()                       # haswell has no VNNI:
    assert count(asm, "vpdpbusd") == 0 and count(asm, "vpmaddubsw") >= 1 and count(asm, "vpmaddwd") >= 1


@pytest.mark.parametrize("op,scheme,epilogue,params", [
    ("conv2d", "ternary", "int32", {}), ("conv2d", "bitserial", "requantize", dict(abits=2, wbits=2)),
    ("dense", "fatnn", "requantize", {}), ("conv2d", "fgq", "int32", dict(group_size=4, abits=4)),
    ("conv2d", "int8", "int32", {}), ("dense", "ternary_int8", "affine", dict(group_size=32)),
    ("dense", "ternary_int8", "int32", dict(activations="per_token")),
], ids=["conv-int32", "conv-requantize", "dense-requantize", "fgq", "int8", "ternary-int8", "per-token"])
def test_tunable_samples_stay_exact(op, scheme, epilogue, params, rng):
    """Every point of the search space computes the same thing: compile a few random samples."""
    shapes = ((2, 40, 7, 14), (24, 40, 3, 3)) if op == "conv2d" else ((4, 100), (64, 100))
    f = tvm_ternary.op(op, scheme, *shapes, padding=1 if op == "conv2d" else 0, target=AVX2,
                       epilogue=epilogue, **params)
    s = f.spec
    x, w = s.scheme.activation.sample(rng, s.data_shape), s.scheme.weight.sample(rng, s.weight_shape)
    if params.get("activations") == "per_token":
        x = rng.standard_normal(s.data_shape).astype(np.float32)
    scales = rng.random(s.scales_shape).astype(np.float32) if scheme == "fgq" else None
    if scheme == "ternary_int8":
        scales = rng.integers(-127, 128, s.scales_shape)
    thresholds = np.tile([-3, 0, 3][:s.threshold_count], (s.weight_shape[0], 1)) if epilogue == "requantize" else None
    affine = (rng.standard_normal(s.weight_shape[0]), rng.standard_normal(s.weight_shape[0])) \
        if epilogue == "affine" else (None, None)
    args = f.prepare(x, w, scales, thresholds, *affine)
    expected = f.reference(x, w, scales, thresholds, *affine)
    target = tvm.target.Target(AVX2)
    rule = {"fgq": schedules.FgqKernel, "int8": schedules.DotKernel,
            "ternary_int8": schedules.CodeDotKernel}.get(scheme, schedules.PopcountKernel)()
    for seed in [sample_seed(rng) for _ in range(5)]:
        sch = rule.apply(s.kernel_prim_func(), target, True, seed=seed)
        assert any(inst.kind.name.startswith("Sample") for inst in sch.trace.insts)
        kernel = tvm.compile(sch.mod, target=target)
        args[-1].copyfrom(np.zeros(args[-1].shape, args[-1].dtype))     # the sample must write it all
        kernel[s.symbol](*args)
        message = f"the sample of {type(rule).__name__}.apply(..., seed={seed})"
        if scheme == "fgq":
            np.testing.assert_allclose(args[-1].numpy(), expected, rtol=1e-5, atol=1e-4, err_msg=message)
        elif epilogue == "affine":      # integer sums, then the float epilogue
            np.testing.assert_allclose(args[-1].numpy(), expected, rtol=1e-6, atol=1e-5, err_msg=message)
        else:
            np.testing.assert_array_equal(args[-1].numpy(), expected, err_msg=message)


def test_tuned_float_conv_kernels_sum_in_the_hand_order(rng):
    """Samples of the float conv kernel (tuning) keep the hand schedule's summation order, so a
    tuned float model computes bit for bit what the hand-scheduled one does."""
    from tvm_ternary.rewrite import rewrite_with_sources
    target = tvm.target.Target(AVX2)
    x = torch.randn(1, 20, 9, 11)
    _, sources = rewrite_with_sources(tvm_ternary.from_torch(torch.nn.Conv2d(20, 32, 3, padding=1).eval(), x), target)
    (func,) = [f for role, f in sources.values() if role.endswith(":kernel")]
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    args = [tvm.runtime.tensor(rng.standard_normal([int(d) for d in info.shape]).astype(str(info.dtype)))
            for info in ArgInfo.from_prim_func(func)]

    def output(sch):
        tvm.compile(sch.mod, target=target)["main"](*args)
        return args[-1].numpy().copy()

    hand = output(schedules.schedule(func, target))
    samples = [schedules.PopcountKernel().apply(func, target, True, seed=sample_seed(rng)) for _ in range(4)]
    assert any(inst.kind.name == "SampleCategorical" for inst in samples[0].trace.insts)
    for sch in samples:
        np.testing.assert_array_equal(output(sch), hand)


def test_float_pooling_reads_a_padded_tile_and_equals_pytorch():
    """FloatCPU computes a pooling's padding per vector run (no bounds check per tap in the
    reduction) and keeps PyTorch's result exactly, on an odd shape with stride 2."""
    from tvm.relax.backend.cpu_generic import legalize_passes

    x = torch.randn(2, 5, 13, 11, generator=torch.Generator().manual_seed(0))
    mod = tvm_ternary.from_torch(torch.nn.MaxPool2d(3, 2, 1).eval(), x)
    target = tvm.target.Target(AVX2)
    with target:
        mod = tvm.transform.Sequential(legalize_passes(target))(mod)
    (name, func), = [(gv.name_hint, f) for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    sch = FloatCPU().apply(func, target, False)
    assert "if_then_else" not in str(sch.get(sch.get_sblock("pool_max_update")).body)
    assert sch.mod.script().index("T.parallel") < sch.mod.script().index('T.sblock("pad_temp")')
    lib = tvm.compile(tvm.IRModule({name: sch.mod["main"].with_attr("global_symbol", name)}), target=target)
    out = tvm.runtime.tensor(np.zeros((2, 5, 7, 6), "float32"))
    lib[name](tvm.runtime.tensor(x.numpy()), out)
    np.testing.assert_array_equal(out.numpy(), torch.nn.functional.max_pool2d(x, 3, 2, 1).numpy())


def test_float_schedule_lets_errors_other_than_schedule_errors_through(monkeypatch):
    """A ``ScheduleError`` means "this stage cannot be inlined" and is passed over; any other
    error in inlining is a bug and surfaces."""
    x = te.placeholder((4, 16), "float32", name="x")
    y = te.compute((4, 16), lambda i, j: x[i, j] + 1, name="y")
    z = te.compute((4, 16), lambda i, j: y[i, j] * 2, name="z")

    def broken(self, block):
        raise TypeError("compute_inline: a bug")

    monkeypatch.setattr(tvm.s_tir.Schedule, "compute_inline", broken)
    with pytest.raises(TypeError, match="a bug"):
        FloatCPU().apply(te.create_prim_func([x, z]), tvm.target.Target(AVX2), False)


def test_float_model_with_a_softmax_builds_and_equals_pytorch():
    """Softmax's ``exp`` feeds both its sum and the division: FloatCPU runs it whole instead
    of computing it inside the sum (which TVM refuses), and the model builds."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(20, 12), torch.nn.Softmax(dim=-1)).eval()
    x = torch.randn(3, 20)
    ex = tvm_ternary.build(tvm_ternary.from_torch(net, x), AVX2)
    got = tvm.relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy())).numpy()
    with torch.no_grad():
        np.testing.assert_allclose(got, net(x).numpy(), rtol=1e-5, atol=1e-6)
