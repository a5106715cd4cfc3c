"""benchmarks/pi_estimate.py: Raspberry Pi cycle estimates from counted runs and llvm-mca."""

from __future__ import annotations

from collections import Counter

import pytest

import tvm_ternary

import pi_estimate  # conftest puts benchmarks/ on sys.path


def test_formulation_mixes_come_from_the_schemes_terms():
    """Ternary: mask and sign terms sharing the mask's ``and``; w2a2: four plane products;
    w1a1: one XNOR-style term under the validity plane. Each term then one cnt and one uadalp."""
    def ops(scheme, **params):
        return [op for op, _, _ in pi_estimate.popcount_mix(tvm_ternary.make_scheme("conv2d", scheme, **params))]
    assert ops("ternary") == ["and", "cnt", "uadalp", "eor", "and", "cnt", "uadalp"]
    assert ops("bitserial", abits=2, wbits=2) == ["and", "cnt", "uadalp"] * 4
    assert ops("bitserial", abits=1, wbits=1, activation_encoding="bipolar", weight_encoding="bipolar") == \
        ["eor", "and", "cnt", "uadalp"]


def test_bounds_follow_the_pipes_of_each_core():
    """The A53 model issues every NEON op on one pipe, so bounds go as 128 MACs over the ops
    of the mix (ternary 7, w2a2 12); the A72 has two pipes but runs uadalp on one only."""
    a53 = {p: pi_estimate.bound(p, "cortex-a53") for p in ("ternary", "w2a2", "int8")}
    assert a53["ternary"] == pytest.approx(128 / 7, rel=1e-3) and a53["w2a2"] == pytest.approx(128 / 12, rel=1e-3)
    a72 = {p: pi_estimate.bound(p, "cortex-a72") for p in ("ternary", "w2a2", "w1a1")}
    assert 128 / 4 < a72["ternary"] < 128 / 3          # 7 ops on 2 pipes, 2 uadalp on one: 3.5 cycles
    assert a72["w1a1"] > a72["ternary"] > a72["w2a2"]
    assert a53["int8"] == pytest.approx(4.0, rel=1e-3)     # one by-element smlal (4 MACs) per cycle
    # smull + smlal2 (16 MACs) on the A72's one multiply pipe, sadalp on the other; 3 ops on the A53's one
    assert pi_estimate.widening_byte_bound("cortex-a72") == pytest.approx(8.0, rel=1e-3)
    assert pi_estimate.widening_byte_bound("cortex-a53") == pytest.approx(16 / 3, rel=1e-3)


def test_translation_blocks_become_instruction_runs_and_equal_count_blocks():
    """Each translation block's runs go to the instructions qemu listed for it (here a loop
    entered through a longer block, and a block cut at a page's end); instructions that ran
    equally often and sit next to each other form one block."""
    code = {0xff0: "add x0, x0, #1", 0xff4: "mov x1, x2", 0xff8: "add x3, x3, #1", 0xffc: "cnt v0.16b, v1.16b",
            0x1000: "subs x4, x4, #1", 0x1004: "b.ne 0xff8 <f+0x8>", 0x1008: "ret"}
    listings = {0xff0: [0xff0, 0xff4, 0xff8, 0xffc], 0xff8: [0xff8, 0xffc], 0x1000: [0x1000, 0x1004], 0x1008: [0x1008]}
    blocks = Counter({0xff0: 1, 0xff8: 9, 0x1000: 10, 0x1008: 1})   # a 10-iteration loop entered at 0xff0
    runs = pi_estimate.instruction_runs(code, blocks, listings)
    assert runs == {0xff0: 1, 0xff4: 1, 0xff8: 10, 0xffc: 10, 0x1000: 10, 0x1004: 10, 0x1008: 1}
    cut = pi_estimate.blocks_of(code, runs)
    assert [(b.start, b.runs, len(b.instructions)) for b in cut] == [(0xff0, 1, 2), (0xff8, 10, 4), (0x1008, 1, 1)]
    loop = pi_estimate.mca_cycles({"loop": cut[1].instructions}, "cortex-a72")["loop"]
    assert 1 <= loop < 10
    with pytest.raises(RuntimeError, match="qemu ran a block at 0xff8 that its log or the library lacks"):
        pi_estimate.instruction_runs(code, blocks, {k: v for k, v in listings.items() if k != 0xff8})


def test_missing_llvm_names_the_debian_package(monkeypatch):
    monkeypatch.setattr(pi_estimate, "missing_host_tools", lambda tools: {"llvm-mca": "llvm"})
    with pytest.raises(SystemExit, match=r"install the Debian package\(s\) llvm \(apt-get install llvm\)"):
        pi_estimate.check_tools()


def test_spills_are_vector_loads_and_stores_on_the_stack():
    """objdump's text of a spill and its reloads (a pair; an unscaled offset), and what is not
    one: vector loads from data (x29 is a general register in our kernels), a saved general
    register, a broadcast."""
    spills = ["str\tq2, [sp, #224]", "ldp\tq30, q5, [sp, #176]", "ldur\tq1, [sp, #8]"]
    others = ["ldr\tq23, [x14, x15]", "ldr\tq29, [x29]", "stp\tx29, x30, [sp, #-16]!", "ld1r\t{ v10.8h }, [x14]"]
    assert pi_estimate.stack_vector_accesses(spills + others) == 3


def test_estimate_counts_every_multiply_accumulate_once(tmp_path, monkeypatch):
    """One kernel built for the Pi 4, counted on the emulated board and modelled: its executed
    ``cnt`` do the layer's MACs (the estimate checks it), the hot loop holds most of its
    cycles and stays under the bound. Counting each translation block's first instruction
    only (what a wrong reading of qemu's log would do) is caught, not reported."""
    pi_estimate.check_tools()
    monkeypatch.setitem(pi_estimate.LAYERS, "small", ((1, 128, 7, 14), (16, 128, 3, 3), 1, 1))
    est = pi_estimate.estimate("rasp4", "small", "ternary", tmp_path, {})
    assert est.hot_macs % 128 == 0 and 16 * 7 * 14 * 128 * 9 % est.hot_macs == 0
    assert 0.5 < est.hot_share < 1 and 0.5 < est.macs_per_cycle / est.bound <= 1.01
    assert est.bound == pytest.approx(pi_estimate.bound("ternary", "cortex-a72")) and est.hot_spills == 0
    waiting = pi_estimate.estimate("rasp4", "small", "ternary", tmp_path, {}, pessimistic=True)
    assert waiting.hot_macs == est.hot_macs and waiting.layer_cycles > est.layer_cycles   # stores, then loads
    counts = pi_estimate.instruction_counts
    monkeypatch.setattr(pi_estimate, "instruction_counts", lambda *a: (lambda runs, listings: (
        runs, {start: listing[:1] for start, listing in listings.items()}))(*counts(*a)))
    with pytest.raises(RuntimeError, match=r"the traced run did \d+ MACs, the layer 1806336 .*: the counts are wrong"):
        pi_estimate.estimate("rasp4", "small", "ternary", tmp_path, {})
