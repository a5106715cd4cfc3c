"""Does running our models in a process slow PyTorch's int8 ResNet-18 down in that process?

    python benchmarks/interference.py                       # fgq_w2a8 (AMX kernels on an AMX host)
    python benchmarks/interference.py --precision ternary   # popcount kernels, for comparison

Times PyTorch's int8 ResNet-18 (224x224, batch 1, 1 thread) alone, then builds, checks and
times our model of ``--precision`` in the same process, then times PyTorch again. On the
AMX development host (2026-11-26) PyTorch ran 13-24% slower after our AMX kernels (one run) and
unchanged after the ternary model; ``speedup.py`` therefore times its PyTorch baselines
before any of our kernels runs. Timings: benchmarks/harness.py (median of --repeat batches).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

harness.unpin_threads()

import networks  # noqa: E402
import tvm_ternary  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", default="fgq_w2a8", help="our model to run in between (default: fgq_w2a8)")
    parser.add_argument("--repeat", type=int, default=20, help="timed batches per measurement (default: 20)")
    args = parser.parse_args()
    harness.set_threads(1)
    torch_int8 = networks.network_runner("torch_int8", 4, None)
    before = torch_int8.time(args.repeat)
    ours = networks.network_runner(args.precision, 4, tvm_ternary.resolve_target("host"))[0]
    after_build = torch_int8.time(args.repeat)
    ours_ms = ours.time(args.repeat)
    after_timing = torch_int8.time(args.repeat)
    print(f"PyTorch int8 ResNet-18, 1 thread: {before:.3f} ms alone; {after_build:.3f} ms after building and checking "
          f"our {args.precision} model ({after_build / before - 1:+.0%}); {after_timing:.3f} ms after timing it "
          f"({after_timing / before - 1:+.0%}). Ours ({ours.impl}): {ours_ms:.3f} ms")


if __name__ == "__main__":
    main()
