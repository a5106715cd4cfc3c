"""Instruction-throughput bound of the popcount formulations on this core (AVX-512 VPOPCNTDQ).

Compiles and runs a tiny C program that issues each formulation's exact instruction mix
per 512 multiply-accumulates (one zmm of 16 words) on registers, with enough independent
chains to hide latency:

* ternary (2 popcounts): AND, XOR-AND (``vpternlogd``), 2 ``vpopcntd``, 2 ``vpaddd``;
* W2A2 (4 popcounts): 4 AND, 4 ``vpopcntd``, 4 ``vpaddd``.

Loads are left out, so this is an upper bound on what a kernel of that formulation can do
on one core: measured op throughput divided by ops per MAC. Run alone:
``python benchmarks/bound.py``. Needs gcc and a CPU with avx512f, avx512vl and
avx512_vpopcntdq; elsewhere :func:`measure_bounds` returns None.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

TERNARY_CHAINS = 4
W2A2_CHAINS = 3
"""Independent chains: enough to cover latency while every accumulator stays in a register
(more chains made gcc spill them to the stack, which measured a lower "bound")."""


def _ternary_body(chains: int) -> tuple[str, str, str]:
    """Per 512 MACs: AND, XOR-AND, 2 popcounts, 2 adds; one named variable per chain."""
    decl = "".join(f"__m512i xm{c} = _mm512_set1_epi32({c * 977 + 1}), xs{c} = _mm512_set1_epi32({c * 131}), "
                   f"a{c} = _mm512_setzero_si512(), b{c} = _mm512_setzero_si512();\n" for c in range(chains))
    step = "".join(f"KEEP(xm{c}); KEEP(xs{c}); {{ __m512i both = _mm512_and_si512(xm{c}, wm); "
                   f"__m512i neg = _mm512_ternarylogic_epi32(xs{c}, ws, both, 0x60); "
                   f"a{c} = _mm512_add_epi32(a{c}, _mm512_popcnt_epi32(both)); "
                   f"b{c} = _mm512_add_epi32(b{c}, _mm512_popcnt_epi32(neg)); }}\n" for c in range(chains))
    sink = " + ".join(f"_mm512_reduce_add_epi32(_mm512_sub_epi32(a{c}, b{c}))" for c in range(chains))
    return decl, step, sink


def _w2a2_body(chains: int) -> tuple[str, str, str]:
    """Per 512 MACs: 4 ANDs, 4 popcounts, 4 adds."""
    decl = "".join(f"__m512i x0{c} = _mm512_set1_epi32({c * 977 + 1}), x1{c} = _mm512_set1_epi32({c * 131});\n"
                   + "".join(f"__m512i a{c}{k} = _mm512_setzero_si512();\n" for k in range(4)) for c in range(chains))
    step = "".join(f"KEEP(x0{c}); KEEP(x1{c});\n" + "".join(
        f"a{c}{2 * i + j} = _mm512_add_epi32(a{c}{2 * i + j}, _mm512_popcnt_epi32(_mm512_and_si512(x{i}{c}, w{j})));\n"
        for i in range(2) for j in range(2)) for c in range(chains))
    sink = " + ".join(f"_mm512_reduce_add_epi32(a{c}{k})" for c in range(chains) for k in range(4))
    return decl, step, sink


def _kernel(name: str, weights: str, body, chains: int) -> str:
    decl, step, sink = body(chains)
    return f"""
static double {name}(long n) {{
    {weights}
    {decl}
    double t0 = now();
    for (long i = 0; i < n; i++) {{
        {step}
    }}
    double t = now() - t0;
    if (({sink}) == 42) puts("");
    return {chains}.0 * 512 * n / t;
}}
"""


SOURCE = r"""
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#define KEEP(v) __asm__ volatile("" : "+v"(v))
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
""" + _kernel("ternary", "__m512i wm = _mm512_set1_epi32(0x5555aaaa), ws = _mm512_set1_epi32(0x0f0f0f0f);",
              _ternary_body, TERNARY_CHAINS) \
    + _kernel("w2a2", "__m512i w0 = _mm512_set1_epi32(0x5555aaaa), w1 = _mm512_set1_epi32(0x0f0f0f0f);",
              _w2a2_body, W2A2_CHAINS) + r"""
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 20000000;
    ternary(n / 10); w2a2(n / 10);                      /* warm up */
    double best_t = 0, best_w = 0;
    for (int r = 0; r < 5; r++) {
        double t = ternary(n), w = w2a2(n);
        if (t > best_t) best_t = t;
        if (w > best_w) best_w = w;
    }
    printf("%.6e %.6e\n", best_t, best_w);
    return 0;
}
"""


def _cpu_flags() -> set[str]:
    try:
        return {f for line in open("/proc/cpuinfo") if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    except OSError:
        return set()


def measure_bounds() -> dict[str, float] | None:
    """``{"ternary": MAC/s, "w2a2": MAC/s}`` bounds on one core, or None where the CPU or
    gcc is missing."""
    if not {"avx512f", "avx512vl", "avx512_vpopcntdq"} <= _cpu_flags() or shutil.which("gcc") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "bound.c", Path(tmp) / "bound"
        src.write_text(SOURCE)
        subprocess.run(["gcc", "-O2", "-mavx512f", "-mavx512vl", "-mavx512vpopcntdq", "-o", str(exe), str(src)],
                       check=True, capture_output=True)
        out = subprocess.run(["taskset", "-c", "0", str(exe)] if shutil.which("taskset") else [str(exe)],
                             check=True, capture_output=True, text=True).stdout.split()
    return {"ternary": float(out[0]), "w2a2": float(out[1])}


if __name__ == "__main__":
    bounds = measure_bounds()
    if bounds is None:
        print("no bound: this CPU lacks AVX-512 VPOPCNTDQ (or gcc is missing)")
    else:
        for name, rate in bounds.items():
            print(f"{name}: {rate / 1e9:.0f} G MAC/s per core (register-only instruction mix)")
