"""Instruction-level evidence for the NEON kernels: instructions in the innermost loop per
64 multiply-accumulates, read from the aarch64 assembly of the Raspberry Pi 4 build.

    python benchmarks/neon_instructions.py

Emulated timings mean nothing, so this counts instead. For each precision and ResNet-18
3x3 layer, the kernel is built for ``rasp4`` as it runs in a network (fused requantize
epilogue). The script finds the innermost loop that holds ``cnt`` and counts its
instructions. It divides them by the multiply-accumulates one iteration does:

    MACs per iteration = (cnt per iteration / popcount terms per word) x 128

Each ``cnt`` counts one 128-bit vector of one term, and a term covers a word of every
operand. FATNN's ternary needs 2 terms per word (mask, sign) and W2A2 needs 4 (2 x 2
planes); W1A1 (XNOR) needs 1.

The byte kernels have no ``cnt``: ``fgq`` (as FGQ conv layers run in a model, the int8
kernel with 4-bit weights times group multipliers and 8-bit activations, affine epilogue:
the same code as ``int8``), ``int8`` (our 8-bit NEON kernel, 7-bit activations x 8-bit
weights, the reference) and ``ternary_int8`` (dense layers only: FGQ dense layers with
groups of a multiple of 16 and BitNet's linears, 2-bit weight codes) are counted in the
innermost loop with vector multiplies and multiply-accumulates, whose MACs are their
destination lanes (``mla v.4s``: 4; ``smlal v.8h``: 8; ``smull v.4s``, a product the next
``add`` accumulates: 4). ``dense_4096x4096`` is a batch-1 dense layer.
"""

from __future__ import annotations

import argparse
import re

from tvm import tirx

import tvm_ternary

LAYERS = {  # name: (data shape, weight shape)
    "conv3x3_64x56x56": ((1, 64, 56, 56), (64, 64, 3, 3)),
    "conv3x3_128x28x28": ((1, 128, 28, 28), (128, 128, 3, 3)),
    "conv3x3_256x14x14": ((1, 256, 14, 14), (256, 256, 3, 3)),
    "conv3x3_512x7x7": ((1, 512, 7, 7), (512, 512, 3, 3)),
    "dense_4096x4096": ((1, 4096), (4096, 4096)),
}
PRECISIONS = {
    "ternary": ("ternary", {}),
    "fatnn": ("fatnn", {}),
    "w2a2": ("bitserial", {"abits": 2, "wbits": 2}),
    "w1a1": ("bitserial", {"abits": 1, "wbits": 1, "activation_encoding": "bipolar", "weight_encoding": "bipolar"}),
    "fgq": ("int8", {"abits": 8, "wbits": 4}),
    "int8": ("int8", {}),
    "ternary_int8": ("ternary_int8", {}),
}
BYTE_PRECISIONS = {"fgq", "int8", "ternary_int8"}
"""Precisions whose kernels multiply bytes (the epilogue of a model's FGQ layer: affine)."""
DENSE_ONLY = {"ternary_int8"}
"""Precisions with a dense kernel only: FGQ dense layers with groups of a multiple of 16 (or a
row) and BitNet's linears run on it (2-bit weight codes widened to bytes)."""
MULTIPLY_ACCUMULATE = re.compile(r"^\s+(?:mla|smlal2?|umlal2?|smull2?|umull2?)\s+v\d+\.(\d+)[bhs]")
LABEL = re.compile(r"^(\.?L\w+):")
BRANCH = re.compile(r"^\s+(?:b\.\w+|b|cbn?z|tbn?z)\s+(?:[^,]+,\s*)*(\.?L\w+)\s*$")
INSTRUCTION = re.compile(r"^\s+([a-z][\w.]*)")


def innermost_loop(lines: list[str], wanted) -> list[str]:
    """Lines of the innermost loop (a label and a later branch back to it) for which ``wanted(lines)``."""
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := LABEL.match(line))}
    loops = [(labels[m.group(1)], j) for j, line in enumerate(lines)
             if (m := BRANCH.match(line)) and labels.get(m.group(1), j + 1) < j]
    innermost = [(i, j) for i, j in loops if not any(i < a and b <= j and (a, b) != (i, j) for a, b in loops)]
    for i, j in innermost:
        body = [line for line in lines[i + 1: j + 1] if INSTRUCTION.match(line)]
        if wanted(body):
            return body
    raise SystemExit("neon_instructions.py: no such loop in the kernel")


def mnemonics(body: list[str]) -> list[str]:
    """The instruction names of assembly lines."""
    return [INSTRUCTION.match(line).group(1) for line in body]


def terms_per_word(scheme) -> int:
    word = lambda plane: tirx.const(0, "uint32")  # noqa: E731  (only the number of terms matters)
    return len(scheme.terms(word, word))


def measure(layer: str, precision: str) -> dict:
    scheme, params = PRECISIONS[precision]
    data, weight = LAYERS[layer]
    epilogue = "affine" if precision in BYTE_PRECISIONS else "requantize"
    conv = dict(padding=1) if len(data) == 4 else {}
    f = tvm_ternary.op("conv2d" if conv else "dense", scheme, data, weight, target="rasp4", epilogue=epilogue,
                       **conv, **params)
    lines = f.kernel_asm().splitlines()
    if precision in BYTE_PRECISIONS:
        body = innermost_loop(lines, lambda b: any(MULTIPLY_ACCUMULATE.match(line) for line in b))
        macs = sum(int(m.group(1)) for line in body if (m := MULTIPLY_ACCUMULATE.match(line)))
    else:
        body = innermost_loop(lines, lambda b: "cnt" in mnemonics(b))
        macs = mnemonics(body).count("cnt") / terms_per_word(f.spec.scheme) * 128
    ops = mnemonics(body)
    return {"layer": layer, "precision": precision, "instructions": len(ops), "macs": macs,
            "per64": len(ops) / macs * 64,
            "mix": {op: ops.count(op) for op in ("cnt", "uaddlp", "uadalp", "and", "eor", "ld1r", "ldr", "mla",
                                                 "umlal", "umlal2", "ushr", "ushll", "sshll", "dup")}}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", default=",".join(LAYERS))
    p.add_argument("--precisions", default=",".join(PRECISIONS))
    args = p.parse_args(argv)
    rows = [measure(layer, precision) for layer in args.layers.split(",") for precision in args.precisions.split(",")
            if precision not in DENSE_ONLY or len(LAYERS[layer][0]) == 2]
    print("target rasp4 (aarch64 cortex-a72 +neon), innermost popcount (or multiply-accumulate) loop of each kernel")
    print(f"{'layer':<20} {'precision':<12} {'instr/iter':>10} {'MACs/iter':>9} {'instr/64 MAC':>12} {'vs w2a2':>8} "
          f"{'vs int8':>8}  mix")
    for r in rows:
        ratios = []
        for reference in ("w2a2", "int8"):
            base = next((b["per64"] for b in rows if b["layer"] == r["layer"] and b["precision"] == reference), None)
            ratios.append(f"{r['per64'] / base:.2f}" if base else "-")
        mix = " ".join(f"{k}={v}" for k, v in r["mix"].items() if v)
        print(f"{r['layer']:<20} {r['precision']:<12} {r['instructions']:>10} {r['macs']:>9.0f} {r['per64']:>12.2f} "
              f"{ratios[0]:>8} {ratios[1]:>8}  {mix}")


if __name__ == "__main__":
    main()
