"""Target resolution and host-runnability checks."""

import platform

import pytest
import tvm

from tvm_ternary.targets import host_cannot_run, resolve_target, target_arch

from .conftest import AVX2, RASP4


def test_forms_resolve_to_targets():
    assert resolve_target("llvm").kind.name == "llvm"
    assert resolve_target(AVX2).attrs["mcpu"] == "haswell"
    t = tvm.target.Target(AVX2)
    assert resolve_target(t) is t
    assert resolve_target("host").kind.name == "llvm"


def test_old_string_form_and_wrong_types_are_rejected():
    with pytest.raises(ValueError, match="invalid target 'llvm -mcpu=haswell'"):
        resolve_target("llvm -mcpu=haswell")
    with pytest.raises(TypeError, match="target must be a str, dict or tvm.target.Target, got list"):
        resolve_target(["llvm"])


def test_arch_and_runnability():
    assert target_arch(resolve_target(RASP4)) == "aarch64"
    if platform.machine() == "x86_64":
        assert "the target is aarch64 and this host is x86_64" == host_cannot_run(resolve_target(RASP4))
        assert host_cannot_run(resolve_target(AVX2)) is None  # every supported x86 host has AVX2
    assert host_cannot_run(resolve_target("host")) is None


def _cpu_flags() -> set[str]:
    return {f for line in open("/proc/cpuinfo") if line.startswith("flags") for f in line.split(":")[1].split()}


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86 feature comparison; other hosts run the arch test")
def test_x86_runnability_follows_cpu_flags():
    flags = _cpu_flags()
    avx512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"} <= flags
    reason = host_cannot_run(resolve_target({"kind": "llvm", "mcpu": "skylake-avx512"}))
    assert (reason is None) == avx512, reason
    if not avx512:
        assert "lacks the target's instruction set features" in reason and "avx512" in reason
    if "amx_tile" not in flags:
        assert "amx" in host_cannot_run(resolve_target({"kind": "llvm", "mcpu": "sapphirerapids"}))
