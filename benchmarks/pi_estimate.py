"""Raspberry Pi speed without a Pi: LLVM's machine models of the Pi's cores (``llvm-mca``)
applied to our NEON kernels as a network runs them. These are model estimates, not
measurements.

    python benchmarks/pi_estimate.py                                  # Pi 4 and Pi 3, the four 3x3 layers
    python benchmarks/pi_estimate.py --boards rasp4 --layers all --csv pi.csv
    python benchmarks/pi_estimate.py --pessimistic                    # spilled registers' reloads wait too

For each board (Pi 4: Cortex-A72 at 1.5 GHz; Pi 3: Cortex-A53 at 1.2 GHz), ResNet-18
layer and precision, the conv2d kernel is built for the board's target as a network runs
it: ternary, fatnn, w2a2 and w1a1 with the requantize epilogue (the next layer's packed
input); ``fgq`` (a model's FGQ layers: the int8 kernel, 4-bit weights times group
multipliers, 8-bit activations) and ``int8`` (our 8-bit NEON kernel, the reference) with
the affine epilogue. Then:

1. **Counted.** The kernel runs once, on one thread, in the emulated board's qemu with
   tracing limited to the kernel's code (``-d in_asm,exec,nochain -dfilter``). Every
   translation block it runs is logged, and the instructions of each, so the script knows
   exactly how often each instruction ran. It checks that the executed ``cnt`` (or
   multiplies) did the layer's MACs, and that no hot loop beats its bound.
2. **Modelled.** Instructions that ran equally often and sit next to each other form a
   block: a loop body, an epilogue's straight code. ``llvm-mca -mcpu=cortex-a72`` (or
   ``cortex-a53``) gives each block's cycles per run, in steady state.
3. **Summed.** The layer's cycles are the sum over blocks of runs x cycles, and its time is
   that over the board's clock. So the epilogue and every loop count, not only the
   innermost one. The hot loop, the blocks run most often (the reduction's body, which
   LLVM may compile to several loops one after another, run equally often), gives
   ``cycles_per_iter`` (their cycles per run, summed); its MACs per iteration are the
   layer's MACs over its runs, and ``macs_per_cycle`` is one over the other.

**The bound** of a formulation is its instruction mix per 128 multiply-accumulates on
registers, over the cycles that mix keeps the core's pipes busy in the same ``llvm-mca``
model (the busiest pipe's cycles per mix: in LLVM's A72 model ``and``, ``eor`` and ``cnt`` issue on
either NEON pipe and ``uadalp`` on one only; its A53 model runs them all on one pipe), with no
instruction waiting on another. Loads and address arithmetic are left out, so no kernel of
that formulation can beat it. For the popcount schemes the mix comes from the scheme's own
popcount terms (:meth:`~tvm_ternary.schemes.PackedScheme.terms`): each term's logic
operations on one 128-bit word of every plane (shared subexpressions once), then per term
one ``cnt`` and one ``uadalp`` into 16-bit lanes. Ternary: ``and``, ``eor``, ``and``, 2
``cnt``, 2 ``uadalp``; w2a2: 4 x (``and``, ``cnt``, ``uadalp``); w1a1: ``eor``, ``and``,
``cnt``, ``uadalp``. For the byte kernels it is one by-element ``smlal`` (4 MACs) per 4 MACs.
The script also prints the bound of a faster 8-bit formulation our kernels do not use
(:data:`WIDENING_BYTE_MIX`), so ``x_int8``, a ratio to our 8-bit kernel, can be read against it.
``of bound`` is the hot loop's MAC/cycle over it. ``spills`` counts the hot loop's stores
and reloads of vector registers on the stack per iteration (llvm-mca lets such a reload pass
its store unless ``--pessimistic``).

Real numbers need a board: ``python benchmarks/speedup.py --rpc HOST:PORT --target rasp4``.

Needs ``llvm-mca`` and ``llvm-objdump`` (Debian package ``llvm``) and the emulated board
(``python -m tvm_ternary.emulator setup``, which installs all three).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm
from tvm import tirx

import tvm_ternary
from tvm_ternary import emulator
from tvm_ternary.emulator.board import guest_env, qemu_command
from tvm_ternary.emulator.rootfs import ESTIMATE_TOOLS, missing_host_tools, rootfs_dir
from tvm_ternary.remote import export
from tvm_ternary.schemes import PackedScheme

sys.path.insert(0, str(Path(__file__).resolve().parent))
from neon_instructions import DENSE_ONLY, PRECISIONS as NEON_PRECISIONS, terms_per_word  # noqa: E402

BOARDS = {"rasp4": ("cortex-a72", 1.5e9), "rasp3": ("cortex-a53", 1.2e9)}
"""Board (a target preset) -> (its core, for llvm-mca; its clock in Hz)."""

LAYERS = {  # name: (data shape, weight shape, stride, padding)
    "conv3x3_64x56x56": ((1, 64, 56, 56), (64, 64, 3, 3), 1, 1),
    "conv3x3_128x28x28": ((1, 128, 28, 28), (128, 128, 3, 3), 1, 1),
    "conv3x3_256x14x14": ((1, 256, 14, 14), (256, 256, 3, 3), 1, 1),
    "conv3x3_512x7x7": ((1, 512, 7, 7), (512, 512, 3, 3), 1, 1),
    "conv3x3_s2_64to128x56x56": ((1, 64, 56, 56), (128, 64, 3, 3), 2, 1),
    "conv3x3_s2_128to256x28x28": ((1, 128, 28, 28), (256, 128, 3, 3), 2, 1),
    "conv3x3_s2_256to512x14x14": ((1, 256, 14, 14), (512, 256, 3, 3), 2, 1),
    "conv1x1_s2_64to128x56x56": ((1, 64, 56, 56), (128, 64, 1, 1), 2, 0),
    "conv1x1_s2_128to256x28x28": ((1, 128, 28, 28), (256, 128, 1, 1), 2, 0),
    "conv1x1_s2_256to512x14x14": ((1, 256, 14, 14), (512, 256, 1, 1), 2, 0),
}
"""ResNet-18's quantized layers (its stem and classifier run in int8 or float in models)."""
DEFAULT_LAYERS = [name for name in LAYERS if name.startswith("conv3x3_") and "_s2_" not in name]

PRECISIONS = {name: scheme for name, scheme in NEON_PRECISIONS.items() if name not in DENSE_ONLY}
"""neon_instructions.py's conv2d precisions: w1a1, w2a2, ternary, fatnn, fgq (the int8 kernel
with 4-bit weights, as a model's FGQ layers run) and int8 (our 8-bit NEON kernel)."""


MCA_ITERATIONS = 100


def check_tools() -> None:
    """Raise ``SystemExit`` naming the Debian packages of missing tools, or the missing board."""
    missing = sorted(set(missing_host_tools(ESTIMATE_TOOLS).values()))
    if missing:
        raise SystemExit(f"pi_estimate.py: needs llvm-mca and llvm-objdump; install the Debian package(s) "
                         f"{', '.join(missing)} (apt-get install {' '.join(missing)}), or run "
                         f"'python -m tvm_ternary.emulator setup' as root")
    if not emulator.is_ready():
        raise SystemExit("pi_estimate.py: the emulated board is not set up; run 'python -m tvm_ternary.emulator setup'")


# --- counting: the kernel once under qemu, every executed block logged ---------------------

GUEST_SCRIPT = """
import json, sys
import numpy as np
import tvm
job = json.load(open(sys.argv[1]))
kernel = tvm.runtime.load_module(job["lib"])[job["symbol"]]
args = [tvm.runtime.tensor(np.zeros(shape, dtype)) for shape, dtype in job["args"]]
for line in open("/proc/self/maps"):
    fields = line.split()
    if len(fields) > 5 and fields[5] == job["lib"] and fields[1] == "r-xp":
        print("TEXT", fields[0], fields[2], flush=True)
kernel(*args)
"""
TRACE_PC = re.compile(rb"\[[0-9a-f]+/([0-9a-f]+)/")
LISTED = re.compile(rb"^0x([0-9a-f]+):")


def _run_guest(job: Path, trace: tuple[int, int, Path] | None = None) -> tuple[int, int, int]:
    """Run the guest script on ``job``; returns the kernel library's text mapping ``(start,
    end, file offset)``. With ``trace`` ``(start, end, log)``, qemu logs every translation
    block executed in ``[start, end)`` to ``log``, and each block's instructions when it
    translates it."""
    script = job.with_suffix(".guest.py")
    script.write_text(GUEST_SCRIPT)
    command = qemu_command(rootfs_dir(), [str(script), str(job)])
    if trace is not None:
        start, end, log = trace
        command[1:1] = ["-d", "in_asm,exec,nochain", "-dfilter", f"0x{start:x}..0x{end - 1:x}", "-D", str(log)]
    result = subprocess.run(command, capture_output=True, text=True, env={**guest_env(), "TVM_NUM_THREADS": "1"},
                            timeout=1200)
    text = [line.split() for line in result.stdout.splitlines() if line.startswith("TEXT ")]
    if result.returncode or not text:
        raise RuntimeError(f"pi_estimate.py: the kernel failed on the emulated board:\n{result.stdout}{result.stderr}")
    lo, hi = (int(a, 16) for a in text[0][1].split("-"))
    return lo, hi, int(text[0][2], 16)


def instruction_counts(lib: Path, symbol: str, args: list, workdir: Path) -> tuple[Counter, dict[int, list[int]]]:
    """How often each translation block of ``lib`` ran in one call of ``symbol`` on zeros of
    the argument shapes ``args`` (start -> runs), single-threaded under qemu, and each
    block's instructions as qemu translated it (start -> addresses; qemu ends a block at a
    branch, a page's end, 512 instructions or when its host code grows too large, then
    translates it again shorter: the last listing of a start is the one that ran).
    Addresses are ``lib``'s virtual addresses (``llvm-objdump``'s)."""
    job = workdir / "job.json"
    job.write_text(json.dumps({"lib": str(lib), "symbol": symbol, "args": args}))
    start, end, offset = _run_guest(job)
    log = workdir / "exec.log"
    if _run_guest(job, (start, end, log))[0] != start:
        raise RuntimeError("pi_estimate.py: the guest mapped the kernel at another address when traced")
    base = text_address(lib, offset) - start           # guest address + base = the library's address
    runs, listings, listing = Counter(), {}, None
    with open(log, "rb") as f:
        for line in f:
            if line.startswith(b"IN:"):
                listing = []
            elif listing is not None and (m := LISTED.match(line)):
                listing.append(int(m.group(1), 16) + base)
            else:
                if listing:
                    listings[listing[0]] = listing
                listing = None
                if (m := TRACE_PC.search(line)) is not None:
                    runs[int(m.group(1), 16) + base] += 1
    if listing:
        listings[listing[0]] = listing
    log.unlink()
    return runs, listings


def text_address(lib: Path, offset: int) -> int:
    """The virtual address of file offset ``offset`` in ``lib``'s executable segment."""
    headers = subprocess.run(["llvm-objdump", "-p", str(lib)], capture_output=True, text=True, check=True).stdout
    for m in re.finditer(r"LOAD off\s+0x([0-9a-f]+) vaddr 0x([0-9a-f]+).*?flags (\S+)", headers, re.S):
        if "x" in m.group(3):
            return offset - int(m.group(1), 16) + int(m.group(2), 16)
    raise RuntimeError(f"pi_estimate.py: no executable segment in {lib}")


# --- the code: instructions by address, blocks of equal counts ----------------------------

OBJDUMP_LINE = re.compile(r"^\s*([0-9a-f]+):\s+(\S.*?)\s*(?://.*)?$")
BRANCHES = {"b", "bl", "br", "blr", "ret", "cbz", "cbnz", "tbz", "tbnz"}


def disassemble(lib: Path) -> dict[int, str]:
    """The library's instructions by virtual address (``llvm-objdump``; aarch64)."""
    out = subprocess.run(["llvm-objdump", "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True,
                         check=True).stdout
    return {int(m.group(1), 16): m.group(2) for line in out.splitlines() if (m := OBJDUMP_LINE.match(line))}


def is_branch(instruction: str) -> bool:
    mnemonic = instruction.split()[0]
    return mnemonic in BRANCHES or mnemonic.startswith("b.")


def instruction_runs(code: dict[int, str], blocks: Counter, listings: dict[int, list[int]]) -> dict[int, int]:
    """Runs of each instruction: each translation block's runs added to every instruction
    qemu listed for it (:func:`instruction_counts`)."""
    runs: Counter = Counter()
    for start, count in blocks.items():
        if start not in listings or any(a not in code for a in listings[start]):
            raise RuntimeError(f"pi_estimate.py: qemu ran a block at 0x{start:x} that its log or the library lacks")
        for address in listings[start]:
            runs[address] += count
    return dict(runs)


@dataclass
class Block:
    """Consecutive instructions that ran equally often."""

    start: int
    runs: int
    instructions: list[str]


def blocks_of(code: dict[int, str], runs: dict[int, int]) -> list[Block]:
    """The executed code cut where the run count changes or addresses jump."""
    out: list[Block] = []
    for address in sorted(runs):
        last = out[-1] if out else None
        if last and last.runs == runs[address] and address == last.start + 4 * len(last.instructions):
            last.instructions.append(code[address])
        else:
            out.append(Block(address, runs[address], [code[address]]))
    return out


def _mca_source(name: str, instructions: list[str]) -> str:
    """``instructions`` as an llvm-mca region; branch targets (objdump addresses) point to
    the region's own label, which llvm-mca ignores (it models the block as a loop)."""
    lines = [f"# LLVM-MCA-BEGIN {name}", f".L{name}:"]
    for ins in instructions:
        if is_branch(ins) and ins.split()[0] not in ("ret", "br", "blr"):
            ins = re.sub(r"(?:0x)?[0-9a-f]+(?:\s*<[^>]*>)?$", f".L{name}", ins)
        lines.append("\t" + ins)
    return "\n".join(lines + ["# LLVM-MCA-END", ""])


MCA_REGION = re.compile(r"\[\d+\] Code Region - (\S+).*?Iterations:\s+(\d+).*?Total Cycles:\s+(\d+)"
                        r".*?Resource pressure per iteration:\n[^\n]*\n([^\n]*)", re.S)


def mca_cycles(regions: dict[str, list[str]], cpu: str, throughput: bool = False,
               pessimistic: bool = False) -> dict[str, float]:
    """llvm-mca's steady-state cycles per run of each region (name -> instructions) on ``cpu``;
    with ``throughput``, the cycles its busiest pipe needs per run instead (the region's
    resource pressure, whatever the instructions' dependencies). ``pessimistic``: every load
    waits for the stores before it (``-noalias=false``; by default llvm-mca lets loads pass
    stores, so a spilled register's reload never waits for its store)."""
    if not regions:
        return {}
    source = "".join(_mca_source(name, body) for name, body in regions.items())
    result = subprocess.run(["llvm-mca", "-mtriple=aarch64", f"-mcpu={cpu}", f"-iterations={MCA_ITERATIONS}",
                             "-all-views=false", "-summary-view", "-resource-pressure",
                             f"-noalias={'false' if pessimistic else 'true'}"], input=source,
                            capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"pi_estimate.py: llvm-mca failed on the kernel's code: {result.stderr.strip()[:2000]}")
    found = {m.group(1): max(float(v) for v in m.group(4).split() if v != "-") if throughput
             else int(m.group(3)) / int(m.group(2)) for m in MCA_REGION.finditer(result.stdout)}
    if set(found) != set(regions):
        raise RuntimeError(f"pi_estimate.py: llvm-mca reported {sorted(found)} of the regions {sorted(regions)}")
    return found


# --- the formulation's bound -----------------------------------------------------------------

def popcount_mix(scheme: PackedScheme) -> list[tuple[str, str, tuple[str, ...]]]:
    """The scheme's instructions per 128-bit word of every plane: ``(op, result, operands)``
    in order (logic ops of the terms with shared subexpressions once, then per term ``cnt``
    and ``uadalp`` into an accumulator; operands ``x*``/``w*`` are the planes)."""
    ops: list[tuple[str, str, tuple[str, ...]]] = []
    names: dict[str, str] = {}
    kinds = {tirx.BitwiseAnd: "and", tirx.BitwiseXor: "eor", tirx.BitwiseOr: "orr"}

    def emit(expr) -> str:
        key = str(expr)
        if key not in names:
            if isinstance(expr, tirx.Var):
                names[key] = expr.name
            else:
                operands = (emit(expr.a), emit(expr.b))
                names[key] = f"t{len(ops)}"
                ops.append((kinds[type(expr)], names[key], operands))
        return names[key]

    plane = lambda prefix: lambda p: tirx.Var(f"{prefix}{p}", "uint32")  # noqa: E731
    for i, (_, term) in enumerate(scheme.terms(plane("x"), plane("w"))):
        value = emit(term)
        ops.append(("cnt", f"c{i}", (value,)))
        ops.append(("uadalp", f"a{i}", (f"c{i}",)))
    return ops


def _bound_source(ops) -> str:
    """Assembly of ``ops`` on one 128-bit word of every plane, each value in its own register."""
    names = sorted({a for _, _, args in ops for a in args} | {r for _, r, _ in ops})
    reg = {name: f"v{i}" for i, name in enumerate(names)}
    lines = []
    for op, result, args in ops:
        if op == "uadalp":
            lines.append(f"uadalp {reg[result]}.8h, {reg[args[0]]}.16b")
        else:
            lines.append(f"{op} {reg[result]}.16b, " + ", ".join(f"{reg[a]}.16b" for a in args))
    return "\n".join(lines)


def bound(precision: str, cpu: str) -> float:
    """The formulation's MACs per cycle on ``cpu`` (module doc): its mix per 128 MACs (a by-element
    ``smlal`` per 4 MACs for the byte kernels) over the cycles its busiest pipe needs for it
    in llvm-mca's model."""
    scheme_name, params = PRECISIONS[precision]
    if scheme_name == "int8":
        body, macs = "smlal v0.4s, v1.4h, v2.h[0]", 4
    else:
        body, macs = _bound_source(popcount_mix(tvm_ternary.make_scheme("conv2d", scheme_name, **params))), 128
    return macs / mca_cycles({"bound": body.splitlines()}, cpu, throughput=True)["bound"]


WIDENING_BYTE_MIX = "smull v0.8h, v1.8b, v2.8b\nsmlal2 v0.8h, v1.16b, v2.16b\nsadalp v3.4s, v0.8h"
"""A faster 8-bit formulation than ours on ARMv8.0 (no ``sdot``), for reference: 16 byte
products per ``smull`` (8 lanes) and ``smlal2`` (8 more into the same int16 lanes; exact for
7-bit activations times int8 weights), then one ``sadalp`` into int32 lanes. Its lanes run
along the reduction, so each (pixel, channel) pair needs its own accumulator and a final
horizontal sum; our byte kernels do not use it."""


def widening_byte_bound(cpu: str) -> float:
    """MACs per cycle of :data:`WIDENING_BYTE_MIX` (16 MACs) on ``cpu``, as :func:`bound`."""
    return 16 / mca_cycles({"bound": WIDENING_BYTE_MIX.splitlines()}, cpu, throughput=True)["bound"]


# --- one estimate ----------------------------------------------------------------------------

@dataclass
class Estimate:
    board: str
    layer: str
    precision: str
    hot_cycles: float          # llvm-mca cycles per run of the hot loop (its blocks summed)
    hot_macs: float            # MACs per run of the hot loop
    layer_cycles: float
    hot_share: float           # of the layer's cycles
    hot_spills: int            # vector spill stores and reloads per run of the hot loop
    bound: float               # the formulation's MACs per cycle

    @property
    def macs_per_cycle(self) -> float:
        return self.hot_macs / self.hot_cycles


STACK_VECTOR = re.compile(r"^(?:ldr|str|ldp|stp|ldur|stur)\s+q\d+,.*\[sp\b")
"""A load or store of 128-bit vector registers addressed by the stack pointer: a spill or its reload
(LLVM may use x29 as a general register, so frame-pointer slots are not told apart)."""


def stack_vector_accesses(instructions: list[str]) -> int:
    """The spill stores and reloads of vector registers among ``instructions`` (objdump's text)."""
    return sum(bool(STACK_VECTOR.match(instruction)) for instruction in instructions)


MULTIPLY = re.compile(r"^(?:mla|smlal2?|umlal2?|smull2?|umull2?)\s+v\d+\.(\d+)[bhs]")
"""A vector multiply(-accumulate): its destination lanes are its products."""


def counted_macs(code: dict[int, str], runs: dict[int, int], scheme) -> int:
    """Multiply-accumulates the executed instructions did: per ``cnt`` 128 bits of every
    plane, over the scheme's popcount terms; per multiply its destination lanes."""
    if isinstance(scheme, PackedScheme):
        cnt = sum(n for a, n in runs.items() if code[a].split()[0] == "cnt")
        return cnt * 128 // terms_per_word(scheme)
    return sum(n * int(m.group(1)) for a, n in runs.items() if (m := MULTIPLY.match(code[a])))


def estimate(board: str, layer: str, precision: str, workdir: Path, bounds: dict,
             pessimistic: bool = False) -> Estimate:
    """Build, count and model one kernel (module doc; ``pessimistic``: see :func:`mca_cycles`).
    Raises ``RuntimeError`` when the counts do not add up: the executed multiplies or
    popcounts must do the layer's MACs (up to channel padding), and the hot loop cannot
    beat the formulation's bound."""
    cpu, _ = BOARDS[board]
    data, weight, stride, padding = LAYERS[layer]
    scheme, params = PRECISIONS[precision]
    epilogue = "affine" if scheme == "int8" else "requantize"
    f = tvm_ternary.op("conv2d", scheme, data, weight, stride=stride, padding=padding, target=board,
                       epilogue=epilogue, **params)
    lib = workdir / f"{board}_{layer}_{precision}.so"
    export(f.lib, str(lib), f.target)
    func = f.spec.kernel_prim_func()
    args = [[[int(d) for d in p.shape], str(p.dtype)] for p in func.params]
    code = disassemble(lib)
    runs = instruction_runs(code, *instruction_counts(lib, f.spec.symbol, args, workdir))
    macs = int(np.prod(f.spec.out_shape)) * int(np.prod(weight[1:]))
    padded = -(-weight[0] // 16) * 16 * -(-weight[1] // 32) * 32 * int(np.prod(weight[2:])) * \
        int(np.prod(f.spec.out_shape[2:])) * data[0]
    done = counted_macs(code, runs, f.spec.scheme)
    if not macs <= done <= padded:
        raise RuntimeError(f"pi_estimate.py: {board} {layer} {precision}: the traced run did {done} MACs, the layer "
                           f"{macs} ({padded} with padded channels): the counts are wrong")
    blocks = blocks_of(code, runs)
    cycles = mca_cycles({f"b{b.start:x}": b.instructions for b in blocks}, cpu, pessimistic=pessimistic)
    hot_runs = max(b.runs for b in blocks)
    hot_cycles = sum(cycles[f"b{b.start:x}"] for b in blocks if b.runs == hot_runs)
    total = sum(b.runs * cycles[f"b{b.start:x}"] for b in blocks)
    if (board, precision) not in bounds:
        bounds[board, precision] = bound(precision, cpu)
    spills = stack_vector_accesses([i for b in blocks if b.runs == hot_runs for i in b.instructions])
    result = Estimate(board, layer, precision, hot_cycles, macs / hot_runs, total, hot_runs * hot_cycles / total,
                      spills, bounds[board, precision])
    if result.macs_per_cycle > 1.01 * result.bound:
        raise RuntimeError(f"pi_estimate.py: {board} {layer} {precision}: {result.macs_per_cycle:.1f} MAC/cycle "
                           f"above the formulation's bound {result.bound:.1f}: the counts are wrong")
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--boards", default=",".join(BOARDS), help=f"comma list from {list(BOARDS)}")
    p.add_argument("--layers", default=",".join(DEFAULT_LAYERS),
                   help=f"comma list from {list(LAYERS)}, or 'all' (default: the four stride-1 3x3 layers)")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help=f"comma list from {list(PRECISIONS)}")
    p.add_argument("--pessimistic", action="store_true",
                   help="llvm-mca -noalias=false: every load waits for the stores before it (a spilled register's "
                        "reload too); by default loads pass stores")
    p.add_argument("--csv", help="also write the rows to this CSV file")
    args = p.parse_args(argv)
    layers = list(LAYERS) if args.layers == "all" else args.layers.split(",")
    for what, names, known in (("board", args.boards.split(","), BOARDS), ("layer", layers, LAYERS),
                               ("precision", args.precisions.split(","), PRECISIONS)):
        unknown = [n for n in names if n not in known]
        if unknown:
            p.error(f"unknown {what}(s) {unknown}; choose from {list(known)}")
    check_tools()
    jobs = [(b, layer, prec) for b in args.boards.split(",") for layer in layers for prec in args.precisions.split(",")]
    bounds: dict = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for job in tqdm(jobs, desc="build+count+model", unit="kernel"):
            rows.append(estimate(*job, Path(tmp), bounds, args.pessimistic))
    print("MODEL ESTIMATES, not measurements: llvm-mca's Cortex-A72 (Pi 4, 1.5 GHz) and Cortex-A53 (Pi 3, 1.2 GHz) "
          "models, instruction counts from one run on the emulated board; real numbers: speedup.py --rpc on a board"
          + ("; pessimistic: every load waits for earlier stores" if args.pessimistic else ""))
    header = ["board", "layer", "precision", "cycles_per_iter", "macs_per_iter", "macs_per_cycle", "bound",
              "of_bound", "spills", "layer_mcycles", "hot_share", "est_ms", "x_w2a2", "x_int8"]
    table = []
    for r in rows:
        ratio = {}
        for base in ("w2a2", "int8"):
            other = next((o for o in rows if (o.board, o.layer, o.precision) == (r.board, r.layer, base)), None)
            ratio[base] = r.macs_per_cycle / other.macs_per_cycle if other else float("nan")
        table.append([r.board, r.layer, r.precision, round(r.hot_cycles, 2), round(r.hot_macs, 1),
                      round(r.macs_per_cycle, 2), round(r.bound, 2), round(r.macs_per_cycle / r.bound, 3),
                      r.hot_spills, round(r.layer_cycles / 1e6, 3), round(r.hot_share, 3),
                      round(r.layer_cycles / BOARDS[r.board][1] * 1e3, 3), round(ratio["w2a2"], 2),
                      round(ratio["int8"], 2)])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table)]
    for line in [header, *table]:
        print("  ".join(str(x).rjust(w) for x, w in zip(line, widths)))
    for board in args.boards.split(","):
        cpu = BOARDS[board][0]
        print(f"{board} ({cpu}): x_int8 is against our 8-bit kernel (bound {bound('int8', cpu):.2f} MAC/cycle); "
              f"a faster 8-bit formulation (smull/smlal2 on byte lanes + sadalp) bounds at "
              f"{widening_byte_bound(cpu):.2f} MAC/cycle")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            csv.writer(f).writerows([header, *table])
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    sys.exit(main())
