"""Reading one function's assembly out of a compiled module (tests only)."""

from __future__ import annotations

import re


def function_asm(lib, symbol: str) -> str:
    """The assembly of the device function ``symbol``: its body ``<symbol>_compute_`` and
    the parallel-loop bodies TVM outlines after it (``.L__tvm_parallel_lambda*``), up to
    the next global function."""
    asm = lib.inspect_source("asm")
    start = re.search(rf"^{re.escape(symbol)}_compute_:", asm, re.M)
    if start is None:
        raise AssertionError(f"no function {symbol} in the module")
    following = re.search(r"^[A-Za-z_][\w.]*:", asm[start.end():], re.M)
    return asm[start.end(): start.end() + following.start() if following else None]


def count(asm: str, mnemonic: str) -> int:
    """Occurrences of an instruction mnemonic (whole word, at the start of an instruction)."""
    return len(re.findall(rf"^\s+{re.escape(mnemonic)}\b", asm, re.M))
