"""Does the cost model help? Random against model-guided tuning, best latency per trial.

    python benchmarks/tuning.py                                   # 4 kernel tasks, 3 seeds, 64 trials each
    python benchmarks/tuning.py --trials 32 --seeds 2 --tasks conv3x3_256x14x14_avx2

For each task (a kernel as ``tvm_ternary.tune`` tunes it), each seed and each search
(``random``: MetaSchedule's replay-func; ``guided``: the XGBoost-ranked draws of
``tvm_ternary.tuning``; ``distinct``: guided's random draws without the model, which
separates what the model adds from what never measuring a schedule twice adds), tunes ``--trials`` candidates into a fresh directory and reads the
measured run times in the order they were measured (the hand schedule, measured first in
both, is left out of the curves). Prints, per task and search, the best time found after
8, 16, 32, ... trials (mean over seeds, relative to random's best after all trials) and
the trials each search needed to come within 3% of that (and of the same seed's random
best), and writes the curves (CSV, PNG).
Times are MetaSchedule's measurements (median of 3 runs of at least 50 ms each), 1 thread
per candidate's parallel loops as the target has them; the machine is shared, so compare
searches within one run only.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

import tvm_ternary
from tvm_ternary.tuning import RECORDS_FILE, SEARCHES

TASKS = {
    "conv3x3_128x28x28": dict(name="conv2d", scheme="ternary", data_shape=(1, 128, 28, 28),
                              weight_shape=(128, 128, 3, 3), padding=1, target="host"),
    "conv3x3_256x14x14_avx2": dict(name="conv2d", scheme="ternary", data_shape=(1, 256, 14, 14),
                                   weight_shape=(256, 256, 3, 3), padding=1, target="avx2"),
    "conv1x1_256x14x14_to_1024": dict(name="conv2d", scheme="ternary", data_shape=(1, 256, 14, 14),
                                      weight_shape=(1024, 256, 1, 1), target="host"),
    "conv3x3_64x56x56_s2": dict(name="conv2d", scheme="fatnn", data_shape=(1, 64, 56, 56),
                                weight_shape=(128, 64, 3, 3), stride=2, padding=1, target="host"),
}
"""The tasks: two ResNet-18-like 3x3 layers (one on the AVX2 target), a ResNet-50 1x1 expand
and a strided fatnn layer, none of them exactly one of ResNet-18's four 3x3 layers but the first."""

WITHIN = 0.03
"""The goal's margin: within 3% of random search's best after all trials."""


def curve(work_dir: Path) -> list[float]:
    """Best run time (s) after each measured candidate, the hand schedule left out."""
    times = []
    with open(work_dir / RECORDS_FILE) as fh:
        for line in fh:
            trace, run_secs = json.loads(line)[1][:2]
            if trace[1]:                                     # sampled decisions: a searched candidate
                times.append(float(np.median(run_secs)) if run_secs and min(run_secs) < 1e9 else np.inf)
    return list(np.minimum.accumulate(times)) if times else []


def trials_to_reach(best: list[float], target: float) -> int | None:
    """Trials after which ``best`` is within :data:`WITHIN` of ``target``, None if never."""
    hit = [i + 1 for i, b in enumerate(best) if b <= target * (1 + WITHIN)]
    return hit[0] if hit else None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma list of {', '.join(TASKS)}")
    p.add_argument("--trials", type=int, default=64)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--csv", default="tuning.csv")
    p.add_argument("--plot", default="tuning.png")
    args = p.parse_args(argv)
    names = args.tasks.split(",")
    unknown = sorted(set(names) - set(TASKS))
    if unknown:
        p.error(f"unknown tasks {unknown}; expected some of {list(TASKS)}")
    curves: dict[tuple[str, str, int], list[float]] = {}
    runs = [(n, s, seed) for n in names for seed in range(1, args.seeds + 1) for s in SEARCHES]
    for name, search, seed in tqdm(runs, desc="tuning runs", unit="run"):
        with tempfile.TemporaryDirectory() as work_dir:
            tvm_ternary.tune(**TASKS[name], trials=args.trials, work_dir=work_dir, seed=seed, search=search)
            curves[name, search, seed] = curve(Path(work_dir))
    rows, marks = [], [m for m in (8, 16, 32, 64, 128) if m <= args.trials]
    print(f"best time after N trials, mean over {args.seeds} seeds, relative to random search's best after "
          f"{args.trials} (mean over seeds; 1.00 = that best); trials to come within {WITHIN:.0%} of it, and of "
          f"the same seed's random best ('-': never)")
    print(f"{'task':<28} {'search':<8} " + " ".join(f"{m:>6}" for m in marks) + "  trials to 3%    same seed")
    needed: dict[tuple[str, str], list[int]] = {}
    for name in names:
        reference = np.mean([curves[name, "random", s][-1] for s in range(1, args.seeds + 1)])
        for search in SEARCHES:
            series = [curves[name, search, s] for s in range(1, args.seeds + 1)]
            at = [np.mean([c[min(m, len(c)) - 1] for c in series]) / reference for m in marks]
            reached = [trials_to_reach(c, reference) for c in series]
            own = [trials_to_reach(c, curves[name, "random", s][-1]) for s, c in zip(range(1, args.seeds + 1), series)]
            for kind, values in (("mean", reached), ("seed", own)):
                needed.setdefault((search, kind), []).extend(args.trials + 1 if r is None else r for r in values)
            shown = ", ".join("-" if r is None else str(r) for r in reached)
            shown_own = ", ".join("-" if r is None else str(r) for r in own)
            print(f"{name:<28} {search:<8} " + " ".join(f"{a:>6.3f}" for a in at) + f"  {shown:<15} {shown_own}")
            for seed, c in zip(range(1, args.seeds + 1), series):
                rows += [dict(task=name, search=search, seed=seed, trial=i + 1, best_ms=b * 1e3)
                         for i, b in enumerate(c)]
    print(f"mean trials to come within {WITHIN:.0%} over tasks and seeds ('never' counted as {args.trials + 1}): "
          + "; ".join(f"{search} {np.mean(needed[search, 'mean']):.1f} (same-seed reference "
                      f"{np.mean(needed[search, 'seed']):.1f})" for search in SEARCHES))
    with open(args.csv, "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["task", "search", "seed", "trial", "best_ms"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.csv}")
    plot(names, curves, args.seeds, args.plot)


def plot(names: list[str], curves: dict, seeds: int, path: str) -> None:
    """Best time (relative to random's final best, mean over seeds) against trials, one panel per task."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        reference = np.mean([curves[name, "random", s][-1] for s in range(1, seeds + 1)])
        for search in SEARCHES:
            length = min(len(curves[name, search, s]) for s in range(1, seeds + 1))
            mean = np.mean([curves[name, search, s][:length] for s in range(1, seeds + 1)], axis=0) / reference
            ax.plot(np.arange(1, length + 1), mean, label=search)
        ax.axhline(1 + WITHIN, color="grey", lw=0.8, ls="--")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("measured trials")
        ax.set_ylabel("best time / random's final best")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
