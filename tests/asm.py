"""Counting instructions in assembly text (tests only)."""

from __future__ import annotations

import re


def count(asm: str, mnemonic: str) -> int:
    """Occurrences of an instruction mnemonic (whole word, at the start of an instruction)."""
    return len(re.findall(rf"^\s+{re.escape(mnemonic)}\b", asm, re.M))


def vector_spills(lines: list[str]) -> int:
    """Loads and stores of 128-bit vector registers (``q``) addressed by the stack pointer:
    spilled registers and their reloads."""
    return sum(bool(re.match(r"^\s+(?:ldr|str|ldp|stp|ldur|stur)\s+q\d+,.*\[sp\b", line)) for line in lines)
