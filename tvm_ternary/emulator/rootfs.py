"""``setup``: the host tools and the board's root file system, built once and cached.

An emulated Raspberry Pi 4 is Debian's aarch64 Python 3.11 with the aarch64 TVM runtime
wheel, run by ``qemu-aarch64-static -cpu cortex-a72`` on this host. Nothing is installed
in the guest: the Debian arm64 packages are unpacked (``dpkg -x``) into a directory and
the aarch64 wheels are put there with ``pip --platform``. The host needs the qemu user
emulator and the aarch64 cross compiler (``apt-get``, as root), and gets LLVM's tools too
(``llvm-mca``, ``llvm-objdump``: ``benchmarks/pi_estimate.py``'s cycle estimates).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

HOST_TOOLS = {"qemu-aarch64-static": "qemu-user-static", "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu"}
"""Host command a board needs -> the Debian package that provides it."""

ESTIMATE_TOOLS = {"llvm-mca": "llvm", "llvm-objdump": "llvm"}
"""LLVM's tools that ``benchmarks/pi_estimate.py`` runs (the Pi cores' machine models): setup
installs them too, boards do not need them."""

GUEST_PACKAGES = (
    "libc6 libstdc++6 libgcc-s1 gcc-12-base zlib1g libffi8 libexpat1 libssl3 libbz2-1.0 liblzma5 "
    "libsqlite3-0 libncursesw6 libtinfo6 libreadline8 libuuid1 libcrypt1 libdb5.3 libgdbm6 libnsl2 "
    "libtirpc3 libzstd1 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libcom-err2 libkeyutils1 "
    "libgomp1 python3.11-minimal libpython3.11-minimal libpython3.11-stdlib python3.11").split()
"""Debian 12 arm64 packages of the guest's Python 3.11 (downloaded as ``<name>:arm64``)."""

GUEST_ARCH_ALL = ("media-types", "libtirpc-common")
"""Architecture-independent packages the guest needs too (no ``:arm64`` suffix)."""

GUEST_WHEELS = ("apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post0", "numpy", "ml_dtypes",
                "typing_extensions", "psutil", "cloudpickle", "tornado")
"""aarch64 wheels of the board's TVM runtime (the same TVM pins as the host)."""

STAMP = "tvm-ternary-rootfs-1 " + " ".join(GUEST_WHEELS)
"""Written to ``<rootfs>/.ready`` when a build completes; a different stamp rebuilds."""


def default_dir() -> Path:
    """Cache directory: ``$TVM_TERNARY_EMULATOR_DIR`` or ``~/.cache/tvm-ternary/emulator``."""
    return Path(os.environ.get("TVM_TERNARY_EMULATOR_DIR", Path.home() / ".cache" / "tvm-ternary" / "emulator"))


def rootfs_dir(cache_dir: Path | str | None = None) -> Path:
    return Path(cache_dir or default_dir()) / "rootfs"


def guest_python(rootfs: Path) -> Path:
    return rootfs / "usr" / "bin" / "python3.11"


def missing_host_tools(tools: dict[str, str] = HOST_TOOLS) -> dict[str, str]:
    """Host commands of ``tools`` (by default what a board needs) not on PATH, with their Debian packages."""
    return {cmd: pkg for cmd, pkg in tools.items() if shutil.which(cmd) is None}


def is_ready(cache_dir: Path | str | None = None) -> bool:
    """True when the host tools exist and the rootfs was built with the current pins."""
    stamp = rootfs_dir(cache_dir) / ".ready"
    return not missing_host_tools() and stamp.exists() and stamp.read_text() == STAMP


def _run(cmd: list[str], what: str, **kwargs) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"emulator setup: {what} failed ({' '.join(cmd[:4])} ...):\n"
                           f"{(result.stderr or result.stdout)[-2000:]}")


def _apt(*args: str, what: str, cwd: str | None = None) -> None:
    if shutil.which("apt-get") is None:
        raise RuntimeError(f"emulator setup: {what} needs apt-get (Debian/Ubuntu host)")
    if os.geteuid() != 0:
        raise RuntimeError(f"emulator setup: {what} needs root for apt-get; run as root or install "
                           f"{' '.join(sorted({*HOST_TOOLS.values(), *ESTIMATE_TOOLS.values()}))} yourself")
    _run(["apt-get", *args], what, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, cwd=cwd)


def install_host_tools() -> None:
    """``apt-get install`` qemu-user-static, the aarch64 cross compiler and LLVM's tools if missing."""
    missing = missing_host_tools({**HOST_TOOLS, **ESTIMATE_TOOLS})
    if missing:
        _apt("update", what="apt-get update")
        _apt("install", "-y", "--no-install-recommends", *sorted(set(missing.values())),
             what="installing " + " ".join(sorted(set(missing.values()))))


def build_rootfs(rootfs: Path) -> None:
    """Unpack the guest's Debian packages and install the aarch64 wheels into ``rootfs``."""
    steps = tqdm(total=5, desc="emulator rootfs", unit="step")
    _run(["dpkg", "--add-architecture", "arm64"], "dpkg --add-architecture arm64")
    _apt("update", what="apt-get update (arm64 lists)")
    steps.update()
    if rootfs.exists():
        shutil.rmtree(rootfs)
    rootfs.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as debs:
        _apt("download", *[f"{p}:arm64" for p in GUEST_PACKAGES], *GUEST_ARCH_ALL,
             what="downloading the guest's Debian packages", cwd=debs)
        steps.update()
        for deb in sorted(Path(debs).glob("*.deb")):
            _run(["dpkg", "-x", str(deb), str(rootfs)], f"unpacking {deb.name}")
    steps.update()
    (rootfs / "usr" / "bin" / "python3").unlink(missing_ok=True)
    (rootfs / "usr" / "bin" / "python3").symlink_to("python3.11")
    platforms = [a for p in ("manylinux_2_28_aarch64", "manylinux2014_aarch64", "manylinux_2_17_aarch64")
                 for a in ("--platform", p)]
    _run([sys.executable, "-m", "pip", "install", "--quiet", *platforms, "--implementation", "cp",
          "--python-version", "3.11", "--abi", "cp311", "--only-binary=:all:", "--no-deps",
          "--target", str(rootfs / "opt" / "site"), *GUEST_WHEELS], "installing the aarch64 wheels")
    steps.update()
    # the board runs TVM's runtime only (TVM_USE_RUNTIME_LIB=1): drop the 229 MB compiler
    (rootfs / "opt" / "site" / "tvm" / "lib" / "libtvm_compiler.so").unlink(missing_ok=True)
    steps.update()
    steps.close()


def smoke_test(rootfs: Path) -> str:
    """Import TVM in the guest under ``-cpu cortex-a72``; returns what the guest printed."""
    from .board import guest_env, qemu_command
    result = subprocess.run(
        qemu_command(rootfs, ["-c", "import platform, tvm; print(platform.machine(), tvm.__version__)"]),
        capture_output=True, text=True, env=guest_env(), timeout=300)
    if result.returncode != 0 or "aarch64" not in result.stdout:
        raise RuntimeError(f"emulator setup: the guest cannot import tvm:\n{result.stdout}{result.stderr[-2000:]}")
    return result.stdout.strip()


def setup(cache_dir: Path | str | None = None, force: bool = False) -> Path:
    """Make the emulated board ready (idempotent): host tools, then the rootfs under
    ``cache_dir`` (default :func:`default_dir`). Returns the rootfs path.

    Raises ``RuntimeError`` naming the step and the Debian package when something cannot
    be installed (no apt-get, not root, no network to the package registries)."""
    rootfs = rootfs_dir(cache_dir)
    install_host_tools()
    if force or not (rootfs / ".ready").exists() or (rootfs / ".ready").read_text() != STAMP:
        build_rootfs(rootfs)
        smoke_test(rootfs)
        (rootfs / ".ready").write_text(STAMP)
    return rootfs
