"""Counting instructions in assembly text (tests only)."""

from __future__ import annotations

import re


def count(asm: str, mnemonic: str) -> int:
    """Occurrences of an instruction mnemonic (whole word, at the start of an instruction)."""
    return len(re.findall(rf"^\s+{re.escape(mnemonic)}\b", asm, re.M))
