"""How tvm_ternary says that a request runs slower than it could.

Nothing here is silent: where the result is still right but the fast path is not taken (a
quantized layer left to plain Relax, a generic target on a CPU with wider vectors), a
:class:`SlowPathWarning` names the operator or layer and why. Filter it by category,
``warnings.filterwarnings("ignore", category=tvm_ternary.SlowPathWarning)``, where the slow
path is what you want.
"""

from __future__ import annotations

import warnings

from tvm.target import Target

from . import schedules
from .targets import PRESETS, describe, host_arch, host_cannot_run, resolve_target, target_arch, target_key


class SlowPathWarning(UserWarning):
    """The result is right, but not computed the fast way the user asked for."""


_GENERIC_MCPUS = ("", "generic", "x86-64")
"""``mcpu`` values that name no CPU: LLVM then targets baseline x86-64 (SSE2)."""

_WARNED_GENERIC: set[str] = set()
"""Keys of the generic targets :func:`warn_if_generic_target` has warned about in this process."""


def warn_if_generic_target(target: Target, where: str) -> None:
    """Warn once per target and process when ``target`` is generic x86-64 (no ``mcpu`` or a
    generic one, no ``mattr``: the baseline SSE2 schedules) on a host with AVX2 or better,
    naming the host's best target: ``"host"``, and the preset of its ISA if it can run it.
    ``where`` names the caller in the message (``dense[ternary]``, ``build``)."""
    key = target_key(target)
    if key in _WARNED_GENERIC or str(target.attrs.get("mcpu", "")) not in _GENERIC_MCPUS \
            or target.attrs.get("mattr") or target_arch(target) != "x86_64" or host_arch() != "x86_64":
        return
    host = schedules.isa_of(resolve_target("host"))
    if host.name not in ("avx2", "avx512") or schedules.isa_of(target) == host:
        return
    _WARNED_GENERIC.add(key)
    best = 'target="host"' + ("" if host_cannot_run(Target(PRESETS[host.name])) else f' or "{host.name}"')
    warnings.warn(f"{where}: target {describe(target)} is generic x86-64 and gets the baseline (SSE2) schedules, "
                  f"but this CPU has {host.name.upper()}: {best} uses it", SlowPathWarning, stacklevel=3)
