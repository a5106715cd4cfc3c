"""Every precision side by side, per layer and end to end: table, CSV and PNG plot.

    python benchmarks/speedup.py                      # all precisions, layers and ResNet-18, 1 thread and all cores
    python benchmarks/speedup.py --scope layers --threads 1 \\
        --precisions torch_fp32,torch_int8,tvm_fp32,w1a1,w2a2,ternary,fatnn,fgq_w2a4,fgq_w2a8 --csv out.csv
    python benchmarks/speedup.py --scope model --models resnet18,resnet50   # ResNet-50 too (longer run)
    python benchmarks/speedup.py --scope model --schedules hand,tuned       # hand against the shipped records
    python benchmarks/speedup.py --scope layers --layers lm --threads 1     # language-model linears, cold weights

Layers: the four ResNet-18 3x3 convolutions at batch 1 and dense 512->1000, 4096->4096
(weights hot: they stay in cache between calls) and 4096->4096 cold (each call streams its
weights from memory); ``--layers lm`` (or ``all``) adds language-model linears at batch 1 with
cold weights (:data:`LAYER_SETS`); ``--scope model``: the networks of ``--models`` end to end at 224x224,
batch 1 (benchmarks/networks.py): ResNet-18 by default, ``--models resnet18,resnet50`` adds
ResNet-50 (1x1 bottleneck convolutions, 2.3x ResNet-18's MACs). Each kernel is checked
against its reference once, then timed by one harness for every contender
(benchmarks/harness.py: a Python loop around one call, median of --repeat batches, threads
pinned by nobody). fp32/int8 speedups are against PyTorch (oneDNN fp32, fbgemm int8)
measured in the same process, and built, checked and timed before any of our kernels runs:
once our AMX kernels have run in a process, PyTorch's AMX int8 ResNet-18 there runs slower
(+13-24% in one run of benchmarks/interference.py, 2026-11-26), so timing it afterwards would
flatter us. Timings on a shared machine are noisy; compare ratios from
one run. ``--schedules hand,tuned`` times our kernels and models with the hand schedules
and with tuning records (``--tuned``: a tuning directory, by default the records that
ship for the target's ISA) side by side, ``impl`` ``hand`` or ``tuned`` in the CSV.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import logging
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

harness.unpin_threads()                    # before TVM configures its pool

import numpy as np  # noqa: E402
import torch  # noqa: E402
import tvm  # noqa: E402
from bound import measure_bounds  # noqa: E402
from networks import LAYER_ONLY, NETWORKS, network_layer, network_runner  # noqa: E402
from precisions import DENSE_ONLY, OURS, Layer, ours, torch_fp32, torch_int8, torch_int8_dynamic, tvm_fp32  # noqa: E402
from tqdm import tqdm  # noqa: E402

import tvm_ternary  # noqa: E402

from tvm_ternary.schedules import isa_of  # noqa: E402
from tvm_ternary.schemes import FGQ_ROW  # noqa: E402
from tvm_ternary.targets import describe, host_cannot_run, resolve_target  # noqa: E402
from tvm_ternary.tuning import RECORDS_FILE, SHIPPED, records_dir  # noqa: E402

LAYERS = [
    Layer("conv3x3_64x56x56", "conv2d", (1, 64, 56, 56), (64, 64, 3, 3), 1, 1),
    Layer("conv3x3_128x28x28", "conv2d", (1, 128, 28, 28), (128, 128, 3, 3), 1, 1),
    Layer("conv3x3_256x14x14", "conv2d", (1, 256, 14, 14), (256, 256, 3, 3), 1, 1),
    Layer("conv3x3_512x7x7", "conv2d", (1, 512, 7, 7), (512, 512, 3, 3), 1, 1),
    Layer("dense_512x1000", "dense", (1, 512), (1000, 512)),
    Layer("dense_4096x4096", "dense", (1, 4096), (4096, 4096), model="llama-7b"),
    Layer("dense_4096x4096_cold", "dense", (1, 4096), (4096, 4096), cold=True, model="llama-7b"),
    Layer("dense_2560x6912_cold", "dense", (1, 2560), (6912, 2560), cold=True, model="bitnet-b1.58-3b"),
    Layer("dense_6912x2560_cold", "dense", (1, 6912), (2560, 6912), cold=True, model="bitnet-b1.58-3b"),
    Layer("dense_4096x11008_cold", "dense", (1, 4096), (11008, 4096), cold=True, model="llama-7b"),
]
"""The dense layers after ResNet-18's classifier are language-model linears at batch 1 (one
token): LLaMA-7B's attention projections 4096->4096 and its MLP's 4096->11008, BitNet b1.58
3B's 2560->6912 and 6912->2560 (the CSV's ``model`` column names them)."""
LAYER_SETS = {"default": [layer.name for layer in LAYERS[:7]],
              "lm": [layer.name for layer in LAYERS if layer.model != "resnet18"],
              "all": [layer.name for layer in LAYERS]}
"""``--layers`` shortcuts: ``default`` (ResNet-18's four 3x3 convolutions and classifier, dense
4096->4096 hot and cold), ``lm`` (the language-model linears, cold weights but 4096->4096 hot),
``all``. The language-model layers are not in the default run: their cold weights cycle
through ~1 GB of copies per contender, which tripled the default run's time."""
BASELINES = {"torch_fp32": torch_fp32, "torch_int8": torch_int8, "torch_int8_dynamic": torch_int8_dynamic,
             "tvm_fp32": tvm_fp32}
DENSE_ONLY_PRECISIONS = {"torch_int8_dynamic", *DENSE_ONLY}
"""Precisions that give rows for dense layers only (no conv layers, no models)."""
PRECISIONS = [*BASELINES, *OURS]
TORCH_ISA_LIMITS = {"avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
                             "ATEN_CPU_CAPABILITY": "avx2"}}
"""``--torch-isa``: PyTorch's own switches (oneDNN fp32, fbgemm int8, ATen) that stand in for a
host without AVX-512; they are read when torch loads, so the script re-executes itself with them."""
SCHEDULES = ("hand", "tuned")
"""``--schedules``: our kernels with the hand-written schedules, or with tuning records (``--tuned``)."""
MAIN_IMPLS = ("torch", "torch-fx", "relax-default", "build", "hand", "tuned")
"""Implementations that stand for a precision in speedup columns and summaries."""
SPEEDUP_BASES = {"speedup_vs_fp32": "torch_fp32", "speedup_vs_int8": "torch_int8",
                 "speedup_vs_int8_dynamic": "torch_int8_dynamic", "speedup_vs_w2a2": "w2a2"}
"""Speedup column -> the precision it divides by (in the same run and thread count)."""
COLUMNS = ["target", "device", "threads", "model", "layer", "precision", "impl", "median_ms", "gops",
           *SPEEDUP_BASES, "tuned", "emulated", "timing"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scope", choices=["layers", "model", "all"], default=None,
                   help="the layers, the networks of --models end to end at 224x224 (model), or both "
                        "(default: all; with --rpc: layers)")
    p.add_argument("--models", default=None,
                   help=f"comma list of networks that --scope model/all times end to end, from {list(NETWORKS)} "
                        f"(default: resnet18; resnet50, with 1x1 bottleneck convolutions, makes the run longer)")
    p.add_argument("--threads", default="1,all",
                   help="comma list of thread counts; 'all' = every CPU this process may run on")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help=f"comma list from {PRECISIONS}")
    p.add_argument("--layers", default="default",
                   help=f"comma list of layer names, or a set: {', '.join(LAYER_SETS)} (see LAYER_SETS)")
    p.add_argument("--target", default="host", help="'host', 'llvm', a preset ('x86', 'avx512') or a JSON target dict")
    p.add_argument("--torch-isa", choices=["native", *TORCH_ISA_LIMITS], default="native",
                   help="limit PyTorch's kernels to this ISA (baseline of an AVX2-only host); "
                        "recorded in the device column")
    p.add_argument("--rpc", default=None,
                   help="time our kernels on a board over TVM RPC: 'host:port', or 'key@host:port' for a tracker "
                        "(with --target rasp4 for a Raspberry Pi 4)")
    p.add_argument("--emulated", action="store_true",
                   help="the --rpc board is emulated (python -m tvm_ternary.emulator serve): its timings are not "
                        "Pi timings; recorded in the emulated column")
    p.add_argument("--schedules", default=None,
                   help=f"comma list from {list(SCHEDULES)}: time our kernels and models with the hand schedules, "
                        f"with the tuning records of --tuned, or both side by side (impl hand / tuned; default: hand, "
                        f"or tuned when --tuned is given)")
    p.add_argument("--tuned", default=None,
                   help="the records for --schedules tuned: a tvm_ternary.tune / tune_model directory, or 'shipped' "
                        "(the default: the records that ship for the target's ISA, tuned for ResNet-18)")
    p.add_argument("--repeat", type=int, default=20, help="timed repetitions per measurement (median)")
    p.add_argument("--fgq-group", type=fgq_group, default=4,
                   help="FGQ group size: input channels per scale (an int), or 'row' (one scale per output channel)")
    p.add_argument("--csv", default="speedup.csv", help="CSV output path")
    p.add_argument("--plot", default="speedup.png", help="PNG plot path ('' to skip)")
    args = p.parse_args(argv)
    args.precisions = args.precisions.split(",")
    unknown = sorted(set(args.precisions) - set(PRECISIONS))
    if unknown:
        p.error(f"unknown precisions {unknown}; choose from {PRECISIONS}")
    args.scope = args.scope or ("layers" if args.rpc else "all")
    if args.models is not None and args.scope == "layers":
        p.error("--models chooses the networks of --scope model/all; --scope layers times no network")
    args.models = list(dict.fromkeys((args.models or "resnet18").split(",")))
    unknown = sorted(set(args.models) - set(NETWORKS))
    if unknown:
        p.error(f"unknown models {unknown}; choose from {list(NETWORKS)}")
    names = [layer.name for layer in LAYERS]
    if args.layers in LAYER_SETS:           # a set: without the cold layers on a board
        args.layers = [LAYERS[names.index(n)] for n in LAYER_SETS[args.layers]
                       if not (args.rpc and LAYERS[names.index(n)].cold)]
    else:
        args.layers = [LAYERS[names.index(n)] for n in args.layers.split(",")
                       if n in names or p.error(f"unknown layer {n}; choose from {names} or {list(LAYER_SETS)}")]
    if args.rpc and any(layer.cold for layer in args.layers):
        p.error("--rpc: cold-weight layers rotate weight copies between calls, which the board's time "
                "evaluator cannot; leave them out")
    args.threads = list(dict.fromkeys(harness.usable_cpus() if t == "all" else int(t)
                                      for t in args.threads.split(",")))
    if args.scope != "layers":
        if args.rpc:
            p.error("--scope model runs on this host (PyTorch baselines); use --scope layers with --rpc")
        args.layers = ([] if args.scope == "model" else args.layers) + [network_layer(n) for n in args.models]
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    if args.rpc and set(args.precisions) & set(BASELINES):
        p.error(f"--rpc times our kernels on the board; {sorted(set(args.precisions) & set(BASELINES))} run "
                f"only on this host, so leave them out")
    args.schedules = list(dict.fromkeys((args.schedules or ("tuned" if args.tuned else "hand")).split(",")))
    unknown = sorted(set(args.schedules) - set(SCHEDULES))
    if unknown:
        p.error(f"unknown --schedules {unknown}; choose from {list(SCHEDULES)}")
    if args.tuned and "tuned" not in args.schedules:
        p.error(f"--tuned {args.tuned}: its records are timed with --schedules tuned (or hand,tuned)")
    args.tuned = (args.tuned or SHIPPED) if "tuned" in args.schedules else None
    if args.tuned and args.tuned != SHIPPED and not (Path(args.tuned) / RECORDS_FILE).exists():
        p.error(f"--tuned {args.tuned}: no tuning records there (run tvm_ternary.tune or tune_model first)")
    if args.emulated and not args.rpc:
        p.error("--emulated describes an --rpc board")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        p.error("--plot needs matplotlib: pip install -e '.[bench]' (or --plot '' for no plot)")
    if args.rpc:
        args.threads = ["board"]            # the board's runtime uses its own pool (all its cores)
    return args


def parse_remote(text: str | None):
    """``--rpc``: ``host:port`` (a board) or ``key@host:port`` (a tracker), or None."""
    if not text:
        return None
    key, at, address = text.rpartition("@")
    return tvm_ternary.Remote.parse({"tracker": address, "key": key} if at else address)


def limit_torch_isa(isa: str, argv: list[str]) -> None:
    """Re-execute this script with arguments ``argv`` and PyTorch limited to ``isa`` unless it
    already is."""
    limits = TORCH_ISA_LIMITS.get(isa, {})
    if any(os.environ.get(k) != v for k, v in limits.items()):
        os.execve(sys.executable, [sys.executable, __file__, *argv], {**os.environ, **limits})


def parse_target(text: str):
    """``--target``: a name (``host``, ``llvm``, a preset such as ``x86``) or a JSON target dict."""
    return resolve_target(json.loads(text) if text.startswith("{") else text)


def print_header(args, target, device: str) -> None:
    """What this run compares and how: machine, ISA of our kernels, threads, versions, timing."""
    print(f"device: {device}")
    print(f"target: {describe(target)}, our kernels' ISA: {isa_of(target).name}"
          + ("" if args.rpc else f"; CPUs usable by this process: {harness.usable_cpus()}"))
    if args.rpc:
        print("threads: the board runtime's own pool (all its cores)")
    else:
        print(f"threads: {', '.join(map(str, args.threads))}; thread pinning: none (TVM_BIND_THREADS=0, PyTorch's "
              f"OpenMP unbound; checked at the end)")
    print(f"versions: tvm-ternary {metadata.version('tvm-ternary')}, TVM {tvm.__version__}, "
          f"PyTorch {torch.__version__}, Python {platform.python_version()}")
    print(f"timing: {harness.TIMING_BOARD if args.rpc else harness.TIMING_LOCAL}")
    networks = [layer for layer in args.layers if layer.op == "model"]
    if networks:
        print("models end to end (--models): " + ", ".join(f"{layer.network} ({layer.macs / 1e9:.2f} G MAC)"
                                                            for layer in networks)
              + f", {networks[0].data_shape[2]}x{networks[0].data_shape[3]}, batch 1, random weights")
    if any(layer.op == "dense" for layer in args.layers) and not args.rpc:
        print(f"weights: hot (they stay in the {harness.last_level_cache_bytes() >> 20} MiB last-level cache between "
              f"calls where they fit) except in *_cold layers, which cycle through copies adding up to twice that")


def measure(args) -> list[dict]:
    target = parse_target(args.target)
    remote = parse_remote(args.rpc)
    reason = host_cannot_run(target)
    if reason and remote is None:
        raise SystemExit(f"speedup.py: cannot time target {describe(target)} here: {reason} (use --rpc with a board)")
    device = harness.cpu_model() + ("" if args.torch_isa == "native" else f" (PyTorch limited to {args.torch_isa})")
    if remote is not None:
        device = f"{'emulated ' if args.emulated else ''}{remote}"
    print_header(args, target, device)
    if args.emulated:
        print("note: emulated board: results are exact, timings are NOT Raspberry Pi timings")
    rng = np.random.default_rng(0)
    if args.tuned:
        try:
            print(f"tuned: records of {records_dir(args.tuned, target)}")
        except ValueError as err:
            raise SystemExit(f"speedup.py: --schedules tuned: {err}") from None
    tuned = [args.tuned if s == "tuned" else None for s in args.schedules]
    rows = []          # PyTorch's baselines first, before any of our kernels runs (module doc)
    for names in ([n for n in args.precisions if n in BASELINES], [n for n in args.precisions if n not in BASELINES]):
        runners = build_runners(args, names, target, remote, tuned, rng)
        rows += time_runners(args, runners, names, target, device, remote)
    layers = [layer.name for layer in args.layers]
    rows.sort(key=lambda r: (args.threads.index(r["threads"]), layers.index(r["layer"]),
                             args.precisions.index(r["precision"])))          # stable: impls keep their order
    pinned = harness.pinned_threads()
    if pinned:
        raise SystemExit(f"speedup.py: threads were pinned during the run, so the contenders did not run alike: "
                         f"{pinned}")
    add_speedups(rows)
    return rows


def build_runners(args, names: list[str], target, remote, tuned: list, rng) -> dict:
    """Compile and check precisions ``names`` for every layer of ``args``: ``(layer, precision) -> runner(s)``."""
    runners = {}
    for layer in tqdm(args.layers, desc="compile+check", unit="layer"):
        for name in names:
            if name in DENSE_ONLY_PRECISIONS and layer.op != "dense":
                continue
            if name in BASELINES:
                runners[layer.name, name] = (BASELINES[name](layer, target, rng) if layer.op != "model" else
                                             network_runner(name, args.fgq_group, target, layer.network))
            elif layer.op != "model":
                runners[layer.name, name] = sum((as_tuple(ours(name, args.fgq_group, remote, t)(layer, target, rng))
                                                 for t in tuned), ())
            elif name in LAYER_ONLY:
                tqdm.write(f"note: no {layer.name} row for {name}: a layer kernel only (no quantize scheme)")
            else:
                runners[layer.name, name] = sum((as_tuple(network_runner(name, args.fgq_group, target, layer.network,
                                                                         t)) for t in tuned), ())
    return runners


def time_runners(args, runners: dict, names: list[str], target, device: str, remote) -> list[dict]:
    """Time ``runners`` (:func:`build_runners`) at each thread count: one row per runner."""
    rows = []
    jobs = [(t, layer, name) for t in args.threads for layer in args.layers for name in names
            if (layer.name, name) in runners]
    timing = "board-time-evaluator" if remote else "python-call"
    for threads, layer, name in tqdm(jobs, desc="timing", unit="run"):
        if remote is None:
            harness.set_threads(threads)
        for runner in as_tuple(runners[layer.name, name]):
            median_ms = runner.time(args.repeat)
            model = layer.network if layer.op == "model" else layer.model
            rows.append(dict(target=describe(target), device=device, threads=threads, model=model,
                             layer=layer.name, precision=name, impl=runner.impl,
                             median_ms=median_ms,
                             gops=2 * layer.macs / median_ms / 1e6 if runner.impl != "pack" else "",
                             tuned=runner.impl.startswith("tuned"), emulated=args.emulated, timing=timing))
    return rows


def schedule_of(row: dict) -> str:
    """``tuned`` for a row timed with tuning records, else ``hand`` (baselines too)."""
    return "tuned" if row["impl"].startswith("tuned") else "hand"


def as_tuple(made) -> tuple:
    """A factory's runner or runners as a tuple."""
    return made if isinstance(made, tuple) else (made,)


def add_speedups(rows: list[dict]) -> None:
    """Fill speedup columns: baseline time / this time, for rows measured at the same threads."""
    main = {(r["threads"], r["layer"], r["precision"], schedule_of(r)): r["median_ms"]
            for r in rows if r["impl"] in MAIN_IMPLS}
    for r in rows:
        for column, base in SPEEDUP_BASES.items():
            schedule = schedule_of(r) if base == "w2a2" else "hand"      # ours: against the same schedules
            t = main.get((r["threads"], r["layer"], base, schedule))
            r[column] = t / r["median_ms"] if t and r["impl"] != "pack" else ""


def print_table(rows: list[dict]) -> None:
    fmt = "{:>7} {:<23} {:<18} {:<21} {:>10} {:>9} {:>8} {:>8} {:>8} {:>8}"
    print(fmt.format("threads", "layer", "precision", "impl", "median_ms", "GOP/s", "x fp32", "x int8", "x int8dyn",
                     "x w2a2"))
    for r in rows:
        ratio = lambda v: f"{v:.2f}" if v != "" else "-"  # noqa: E731  (empty: not applicable)
        print(fmt.format(r["threads"], r["layer"], r["precision"], r["impl"], f"{r['median_ms']:.3f}",
                         ratio(r["gops"]), *(ratio(r[column]) for column in SPEEDUP_BASES)))
    convs = [layer.name for layer in LAYERS if layer.op == "conv2d"]
    for threads in sorted({r["threads"] for r in rows}):
        for column in ("speedup_vs_fp32", "speedup_vs_int8", "speedup_vs_w2a2"):
            summary = []
            for precision in OURS:
                for impl in SCHEDULES:
                    values = [r[column] for r in rows if r["threads"] == threads and r["precision"] == precision
                              and r["layer"] in convs and r["impl"] == impl and r[column] != ""]
                    if len(values) == len(convs):
                        summary.append(f"{precision} {impl} {np.exp(np.mean(np.log(values))):.2f}")
            if summary:
                print(f"geomean {column} over the 3x3 convs, {threads} thread(s): " + ", ".join(summary))


def print_bounds(rows: list[dict], target) -> None:
    """The popcount-throughput bound per core and each 1-thread conv kernel's share of it
    (AVX-512 kernels only: the bound is measured with AVX-512 VPOPCNTDQ instructions)."""
    if isa_of(target).name != "avx512":
        print(f"bound: not applicable to the {isa_of(target).name} kernels timed here (it is the AVX-512 bound)")
        return
    bounds = measure_bounds()
    if bounds is None:
        print("bound: not measured (needs a CPU with AVX-512 VPOPCNTDQ and gcc)")
        return
    print("bound (register-only instruction mix, 1 core): " +
          ", ".join(f"{name} {rate / 1e9:.0f} G MAC/s" for name, rate in bounds.items()))
    for precision, bound in bounds.items():
        for impl in ("hand", "hand-int32", "tuned", "tuned-int32"):
            shares = [r["gops"] / 2 * 1e9 / bound for r in rows if r["precision"] == precision
                      and r["impl"] == impl and r["threads"] == 1 and r["layer"].startswith("conv")]
            if shares:
                print(f"  {precision} {impl}: {', '.join(f'{x:.0%}' for x in shares)} of the bound "
                      f"(conv layers in order, 1 thread)")


def write_csv(rows: list[dict], path: str) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def fgq_group(text: str) -> int | str:
    """``--fgq-group``: an int >= 1 or ``row``."""
    if text == FGQ_ROW:
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"an int >= 1 or {FGQ_ROW!r}, got {text!r}")
    return int(text)


def bar_label(row: dict) -> str:
    """A plot bar's label: the precision, and ``tuned`` for rows timed with tuning records."""
    return row["precision"] + (" tuned" if schedule_of(row) == "tuned" else "")


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    threads = sorted({r["threads"] for r in rows})
    fig, axes = plt.subplots(1, len(threads), figsize=(7 * len(threads), 4.5), squeeze=False)
    for ax, t in zip(axes[0], threads):
        main = [r for r in rows if r["threads"] == t and r["impl"] in MAIN_IMPLS and r["speedup_vs_fp32"] != ""]
        layers = list(dict.fromkeys(r["layer"] for r in main))
        bars = list(dict.fromkeys(bar_label(r) for r in main))
        width = 0.8 / max(len(bars), 1)
        colors = plt.get_cmap("tab20").colors           # one color per bar up to 20 (tab10 repeated after 10)
        for i, label in enumerate(bars):
            values = {r["layer"]: r["speedup_vs_fp32"] for r in main if bar_label(r) == label}
            ax.bar(np.arange(len(layers)) + i * width, [values.get(layer, 0) for layer in layers], width, label=label,
                   color=colors[i % len(colors)])
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")                         # 0.01x (untuned TVM fp32) to ~200x
        ax.set_xticks(np.arange(len(layers)) + 0.4 - width / 2, layers, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("speedup vs PyTorch fp32 (log)")
        ax.set_title(f"{t} thread(s)")
        ax.legend(fontsize=7, ncol=3, loc="lower left")
    fig.suptitle(f"tvm-ternary speedups per layer and end to end on {rows[0]['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(format="%(name)s: %(message)s")
    logging.getLogger("tvm_ternary.build").setLevel(logging.INFO)   # how many kernels use tuning records
    limit_torch_isa(args.torch_isa, sys.argv[1:] if argv is None else list(argv))
    if "torch_fp32" not in args.precisions:
        print("note: torch_fp32 not measured, so speedup_vs_fp32 stays empty")
    rows = measure(args)
    print_table(rows)
    if any(r["threads"] == 1 for r in rows) and not args.rpc:
        print_bounds(rows, parse_target(args.target))
    write_csv(rows, args.csv)
    print(f"wrote {args.csv}")
    if args.plot and any(r["speedup_vs_fp32"] != "" for r in rows):
        plot(rows, args.plot)
        print(f"wrote {args.plot}")
    elif args.plot:
        print("no plot: it shows speedups over PyTorch fp32, which this run did not measure")


if __name__ == "__main__":
    main()
