"""Where a built model's time goes: each function the Relax VM calls, timed alone.

    python benchmarks/model_profile.py                                  # ternary ResNet-18, default quantize, 1 thread
    python benchmarks/model_profile.py --precisions ternary,w1a1 --first-last same --threads 2 --csv profile.csv
    python benchmarks/model_profile.py --model resnet50                 # the bottleneck network instead

For each precision, ResNet-18 (or ``--model``, a network of benchmarks/networks.py) at
224x224 (batch 1, random weights) is quantized, built as ``tvm_ternary.build`` builds it
and run once under a VM instrument that, after each call of a compiled function, times
that function alone on the same (still live) arguments with the benchmarks' harness (a
Python loop around the call, median of ``--repeat`` batches). The table lists the
functions by total time: calls, ms per call, total ms, share of the sum, and G MAC/s for
the conv2d/dense kernels (their ``tvm_ternary.macs`` attribute). The whole model's time
(its VM ``main``, same harness) is printed beside the sum of the parts.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

harness.unpin_threads()

import numpy as np  # noqa: E402
import tvm  # noqa: E402
from networks import NETWORKS, network  # noqa: E402
from tvm import relax  # noqa: E402

import tvm_ternary  # noqa: E402
from tvm_ternary.build import schedule_float_ops  # noqa: E402
from tvm_ternary.rewrite import MACS_ATTR, rewrite_quantized  # noqa: E402
from tvm_ternary.targets import describe  # noqa: E402

# Named model_profile, not profile: this folder is on sys.path, and a profile.py would hide
# the standard library's (torch.export imports cProfile).

COLUMNS = ["precision", "model", "threads", "function", "calls", "ms_per_call", "total_ms", "share", "gmacs"]


@dataclass
class Entry:
    """One compiled function: its per-call times (one per call in the run) and MACs per call."""

    name: str
    macs: int | None
    times_ms: list[float] = field(default_factory=list)

    @property
    def total_ms(self) -> float:
        return sum(self.times_ms)


def built_functions(mod: tvm.IRModule, target) -> tuple[tvm.IRModule, dict[str, int | None]]:
    """The module ``tvm_ternary.build`` compiles (before ``tvm.compile``) and each PrimFunc's
    MACs per call (None for functions that are not conv2d/dense kernels)."""
    lowered = schedule_float_ops(rewrite_quantized(mod, target), target)
    macs = {gv.name_hint: (int(f.attrs[MACS_ATTR]) if f.attrs is not None and MACS_ATTR in f.attrs else None)
            for gv, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    return lowered, macs


def profile(mod: tvm.IRModule, x: np.ndarray, target, repeat: int) -> tuple[list[Entry], float]:
    """Each PrimFunc the VM calls for input ``x``, timed alone, by total time; and the whole
    model's median ms."""
    lowered, macs = built_functions(mod, target)
    vm = relax.VirtualMachine(tvm.compile(lowered, target=target), tvm.cpu())
    entries: dict[str, Entry] = {}

    def instrument(func, name, before_run, ret, *args):
        if not before_run and name in macs:
            entry = entries.setdefault(name, Entry(name, macs[name]))
            entry.times_ms.append(harness.time_calls([lambda: func(*args)], repeat))
        return 0                                          # VMInstrumentReturnKind.NO_OP: go on

    data = tvm.runtime.tensor(x)
    vm.set_instrument(instrument)
    vm["main"](data)
    vm.set_instrument(lambda *_: 0)
    main = vm["main"]
    whole = harness.time_calls([lambda: main(data)], repeat)
    return sorted(entries.values(), key=lambda e: -e.total_ms), whole


def rows(precision: str, model: str, threads: int, entries: list[Entry]) -> list[dict]:
    total = sum(e.total_ms for e in entries)
    return [dict(precision=precision, model=model, threads=threads, function=e.name, calls=len(e.times_ms),
                 ms_per_call=e.total_ms / len(e.times_ms), total_ms=e.total_ms, share=e.total_ms / total,
                 gmacs=(e.macs * len(e.times_ms) / e.total_ms / 1e6) if e.macs else "") for e in entries]


def print_table(title: str, table: list[dict], whole_ms: float) -> None:
    print(f"\n{title}: sum of the functions {sum(r['total_ms'] for r in table):.3f} ms, "
          f"whole model (VM main) {whole_ms:.3f} ms")
    fmt = "{:<44} {:>5} {:>10} {:>10} {:>7} {:>8}"
    print(fmt.format("function", "calls", "ms/call", "total ms", "share", "G MAC/s"))
    for r in table:
        print(fmt.format(r["function"][:44], r["calls"], f"{r['ms_per_call']:.4f}", f"{r['total_ms']:.3f}",
                         f"{r['share']:.1%}", f"{r['gmacs']:.0f}" if r["gmacs"] != "" else "-"))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--precisions", default="ternary",
                   help=f"comma list of tvm_ternary.quantize schemes, or 'float' ({', '.join(tvm_ternary.QUANTIZE_SCHEMES)})")
    p.add_argument("--first-last", choices=tvm_ternary.quant.FIRST_LAST, default="int8",
                   help="the stem and classifier: int8 (quantize's default), float, or the same scheme as the rest")
    p.add_argument("--model", choices=list(NETWORKS), default="resnet18", help="the network (random weights)")
    p.add_argument("--size", type=int, default=224, help="input height and width")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=10, help="timed batches per function (median)")
    p.add_argument("--target", default="host")
    p.add_argument("--csv", default="profile.csv")
    args = p.parse_args(argv)
    precisions = args.precisions.split(",")
    unknown = sorted(set(precisions) - set(tvm_ternary.QUANTIZE_SCHEMES) - {"float"})
    if unknown:
        p.error(f"unknown precisions {unknown}")
    harness.set_threads(args.threads)
    target = tvm_ternary.resolve_target(args.target)
    model, x = network(args.model, args.size)
    print(f"target: {describe(target)}; threads: {args.threads}; each function timed alone by the harness: "
          f"a Python loop around its call, median of {args.repeat} batches >= 20 ms")
    out = []
    for precision in precisions:
        quantized = model if precision == "float" else tvm_ternary.quantize(
            model, precision, x, first_last=args.first_last)
        name = f"{args.model}_{args.size}" + (f"_first_last_{args.first_last}" if precision != "float" else "")
        entries, whole = profile(tvm_ternary.from_torch(quantized, x), x.numpy(), target, args.repeat)
        table = rows(precision, name, args.threads, entries)
        print_table(f"{precision} {name}", table, whole)
        out += table
    with open(args.csv, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in out)
    print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
