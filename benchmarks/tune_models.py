"""Tune whole models with ``tvm_ternary.tune_model`` and, with ``--ship``, make the result
the records that ship in the package (``build(..., tuned="shipped")``).

    python benchmarks/tune_models.py --target avx512 --ship        # what ships for AVX-512 VPOPCNTDQ
    python benchmarks/tune_models.py --target avx2 --ship          # ... and for AVX2 (haswell)
    python benchmarks/tune_models.py --precisions ternary --trials 8 --work-dir my_tuning
    python benchmarks/tune_models.py --functions quantize,max_pool2d --work-dir my_tuning   # only those

For each precision, the network (benchmarks/networks.py: random weights, 224x224, batch 1)
is quantized with ``tvm_ternary.quantize``'s defaults (int8 stem and classifier), imported
and tuned into one tuning directory per target (``--work-dir``, default
``tuning/<isa>``; resumable: a second run adds trials). The tasks are every function
with knobs (kernels, quantize stages, float operators; ``--functions`` picks some by
name). Every function's hand schedule is measured first, so a tuned one is never slower
than hand beyond the noise of one measurement. Prints ``tune_model``'s table per
precision (calls per inference, hand and tuned ms, ratio; also written to ``--csv``), a
summary of per-inference time of the tuned functions hand against tuned, and with
``--ship`` writes the best record of every function in the directory to
``schedules/records/<isa>/`` in the source tree (commit it). Times are
MetaSchedule's measurements while tuning; ``benchmarks/speedup.py --schedules hand,tuned``
times the built models end to end.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

harness.unpin_threads()                    # before TVM configures its pool

from networks import NETWORKS, QUANTIZE_SCHEME, loaded  # noqa: E402

import tvm_ternary  # noqa: E402
from tvm_ternary import tuning  # noqa: E402
from tvm_ternary.schedules import isa_of  # noqa: E402
from tvm_ternary.targets import describe, host_cannot_run, resolve_target  # noqa: E402

PRECISIONS = ("ternary", "fatnn", "w2a2_bw", "w1a1")
"""The precisions whose ResNet-18 records ship."""

SHIPPED_ISAS = ("avx512", "avx2")
"""ISA classes whose records ship (the ones a development machine can measure)."""

RECORDS_SOURCE = Path(__file__).resolve().parent.parent / "schedules" / "records"
"""Where ``--ship`` writes: the records in the source tree (installed as
``tvm_ternary/schedules/records``)."""


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="avx512", help="'host', a preset ('avx512', 'avx2') or a target string")
    p.add_argument("--model", default="resnet18", choices=list(NETWORKS))
    p.add_argument("--precisions", default=",".join(PRECISIONS), help=f"comma list from {PRECISIONS}")
    p.add_argument("--trials", type=int, default=32, help="measured candidates per function (after its hand schedule)")
    p.add_argument("--functions", default=None,
                   help="comma list: tune only the functions whose names contain one of these (default: all)")
    p.add_argument("--search", default="guided", choices=tuning.SEARCHES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default=None, help="tuning directory (default: tuning/<isa>)")
    p.add_argument("--csv", default="tune_models.csv", help="per-function results (precision, function, calls, ms)")
    p.add_argument("--ship", action="store_true",
                   help="write the best records to schedules/records/<isa> of this source tree (resnet18, every precision)")
    args = p.parse_args(argv)
    precisions = args.precisions.split(",")
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        p.error(f"unknown precisions {unknown}; choose from {PRECISIONS}")
    target = resolve_target(args.target)
    isa = isa_of(target).name
    reason = host_cannot_run(target)
    if reason:
        p.error(f"cannot measure {describe(target)} here: {reason}")
    if args.ship and (args.model != "resnet18" or isa not in SHIPPED_ISAS or set(precisions) != set(PRECISIONS)):
        p.error(f"--ship: the shipped records are those of resnet18 at every precision of {PRECISIONS} on "
                f"{SHIPPED_ISAS} targets (got {args.model}, {precisions}, {isa})")
    work_dir = Path(args.work_dir or f"tuning/{isa}")
    device = harness.cpu_model()
    print(f"device: {device}; target: {describe(target)} ({isa}); {args.model}; {args.trials} trials per function, "
          f"{args.search} search; tuning directory: {work_dir}")
    totals, rows = {}, []
    model, x = loaded(args.model)
    for precision in precisions:
        quantized = tvm_ternary.quantize(model, QUANTIZE_SCHEME.get(precision, precision), x)
        mod = tvm_ternary.from_torch(quantized, x)
        print(f"\n{args.model} {precision}:")
        results = tvm_ternary.tune_model(mod, target, work_dir, trials=args.trials, seed=args.seed,
                                         search=args.search,
                                         functions=args.functions.split(",") if args.functions else None)
        totals[precision] = tuning.per_inference(results)
        rows += [dict(isa=isa, precision=precision, function=r.name, calls=r.calls, hand_ms=f"{r.hand * 1e3:.6g}",
                      tuned_ms=f"{r.tuned * 1e3:.6g}", ratio=f"{r.ratio:.4g}", trials=r.trials) for r in results]
    print(f"\nall tuned functions per inference (MetaSchedule's measurements while tuning, {device}):")
    for precision, (hand, tuned) in totals.items():
        print(f"  {precision:<8} hand {hand * 1e3:8.3f} ms  tuned {tuned * 1e3:8.3f} ms  ratio {hand / tuned:5.2f}")
    with open(args.csv, "w", newline="") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.csv}")
    if args.ship:
        dest = RECORDS_SOURCE / isa
        count = tuning.ship_records(work_dir, dest, device)
        print(f"shipped the best records of {count} functions to {dest}")


if __name__ == "__main__":
    main()
