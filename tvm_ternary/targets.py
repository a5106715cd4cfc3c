"""Target resolution and whether this host can run code built for a target.

TVM 0.27 accepts targets as ``tvm.target.Target`` objects, JSON-like dicts
(``{"kind": "llvm", "mcpu": "haswell"}``) or a plain kind string (``"llvm"``); the old
``"llvm -mcpu=..."`` string form is gone. On top of those, :data:`PRESETS` names the
targets we schedule for (``"x86"``/``"avx2"``, ``"avx512"``, ``"rasp4"``/``"rpi4"``,
``"rasp3"``), and ``"host"`` means the CPU this process runs on
(``Target.from_device(tvm.cpu())``). Pin ``mcpu`` for reproducible artifacts.
"""

from __future__ import annotations

import platform
import re
from functools import lru_cache
from typing import Any, Union

import tvm
from tvm.target import Target, codegen

TargetLike = Union[str, dict, Target]

_ISA_FEATURE = re.compile(r"^(avx|sse|ssse|fma|f16c|popcnt|bmi|gfni|vaes|vpclmul|amx|neon|sve|dotprod|i8mm)")
_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


_RASP4 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "mcpu": "cortex-a72"}
PRESETS: dict[str, dict] = {
    "x86": {"kind": "llvm", "mcpu": "haswell"},
    "avx2": {"kind": "llvm", "mcpu": "haswell"},
    "avx512": {"kind": "llvm", "mcpu": "znver4"},
    "amx": {"kind": "llvm", "mcpu": "sapphirerapids"},
    "rasp4": _RASP4,
    "rpi4": _RASP4,
    "rasp3": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "mcpu": "cortex-a53"},
}
"""Named targets: x86 with AVX2 (Haswell and later, AMD Zen), x86 with AVX-512 VPOPCNTDQ and
VNNI (Zen 4; Ice Lake servers have both too), x86 with AMX-INT8 as well (Sapphire Rapids and
later Xeons: int8 conv2d on tiles), Raspberry Pi 4 (Cortex-A72) and 3 (Cortex-A53)
running a 64-bit OS."""


def resolve_target(target: TargetLike) -> Target:
    """Return a ``tvm.target.Target`` for a Target, a dict, ``"host"``, a name in
    :data:`PRESETS` or a kind string (``"llvm"``)."""
    if isinstance(target, Target):
        return target
    if isinstance(target, str) and target == "host":
        return _host_target()
    if isinstance(target, str) and target in PRESETS:
        return Target(PRESETS[target])
    if isinstance(target, (str, dict)):
        try:
            return Target(target)
        except Exception as err:  # TVM raises ValueError or its own errors for bad targets
            raise ValueError(f"invalid target {target!r}: {err}") from None
    raise TypeError(f"target must be a str, dict or tvm.target.Target, got {type(target).__name__}")


@lru_cache(maxsize=None)
def _host_target() -> Target:
    """``Target.from_device(tvm.cpu())`` plus the instruction set features LLVM detects on this
    host (which checks that the OS enabled them) but the CPU name alone does not imply:
    ``from_device`` keeps only the name, and a virtualized Sapphire Rapids reads as Rocket
    Lake, without AMX."""
    host = Target.from_device(tvm.cpu())
    missing = sorted(f"+{f}" for f in _host_cpu_features() - set(codegen.llvm_get_cpu_features(host))
                     if _ISA_FEATURE.match(f))
    if not missing:
        return host
    config = {k: v for k, v in host.export().items() if k in ("kind", "mtriple", "mcpu", "mattr")}
    return Target({**config, "mattr": [*config.get("mattr", []), *missing]})


def _host_cpu_features() -> set[str]:
    """The CPU features LLVM detects on this host (those it reports as present)."""
    detected = tvm.get_global_func("tvm.codegen.llvm.GetHostCPUFeatures")()
    return {str(name) for name, present in detected.items() if present}


def target_key(target: Target) -> str:
    """A stable string identifying a target (its JSON), for caches."""
    return str(target)


def host_arch() -> str:
    """This machine's CPU architecture, named as in target triples (``x86_64``, ``aarch64``)."""
    return _ARCH_ALIASES.get(platform.machine(), platform.machine())


def target_arch(target: Target) -> str:
    """CPU architecture of a target, from its ``mtriple`` (the host's when unset)."""
    triple = str(target.attrs.get("mtriple", "") or codegen.llvm_get_system_triple())
    arch = triple.split("-")[0]
    return _ARCH_ALIASES.get(arch, arch)


def _isa_features(target: Target) -> set[str]:
    return {f for f in codegen.llvm_get_cpu_features(target) if _ISA_FEATURE.match(f)}


def host_cannot_run(target: Target) -> str | None:
    """Why this host cannot execute code built for ``target``, or None if it can."""
    return _host_cannot_run(target_key(target))


@lru_cache(maxsize=None)
def _host_cannot_run(key: str) -> str | None:
    """:func:`host_cannot_run` by target JSON: LLVM's feature queries cost ~0.3 ms a call."""
    target = Target(key)
    arch, host = target_arch(target), host_arch()
    if arch != host:
        return f"the target is {arch} and this host is {host}"
    if str(target.kind.name) != "llvm":
        return f"target kind {target.kind.name!r} is not a CPU target"
    missing = _isa_features(target) - _isa_features(_host_target())
    if missing:
        return f"this CPU lacks the target's instruction set features {sorted(missing)}"
    return None


def describe(target: Any) -> str:
    """Short description of a target for messages: kind, ``mcpu``, ``mattr``, architecture."""
    t = resolve_target(target)
    mcpu = t.attrs.get("mcpu", "")
    mattr = ",".join(str(a) for a in t.attrs.get("mattr", []) or [])
    return f"{t.kind.name}" + (f" mcpu={mcpu}" if mcpu else "") + (f" mattr={mattr}" if mattr else "") + \
        f" ({target_arch(t)})"
