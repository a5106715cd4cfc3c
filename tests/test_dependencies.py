"""Every module of the package imports, and everything it imports is declared.

``.ci/run`` also imports every module in a virtual environment built from ``pip install -e .``
alone; this test catches an undeclared import in any environment (extras installed or not),
by reading each module's imports and mapping them to the distributions that provide them.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as metadata
import pkgutil
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import tvm_ternary
import tvm_ternary.schedules

MODULES = sorted(m.name for package in (tvm_ternary, tvm_ternary.schedules)
                 for m in pkgutil.walk_packages(package.__path__, package.__name__ + "."))
"""Every module of the package; ``tvm_ternary.schedules`` lives in ``schedules/`` (its own path)."""


def core_requirements() -> set[str]:
    """Normalized names of tvm-ternary's dependencies outside any extra."""
    names = set()
    for requirement in metadata.requires("tvm-ternary") or []:
        if "extra ==" in requirement:
            continue
        names.add(re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def imported_top_level(path: Path) -> set[str]:
    """Top-level names of the absolute imports in a source file, at any depth (lazy
    imports inside functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_package_has_its_modules():
    assert {"tvm_ternary.api", "tvm_ternary.emulator.rootfs", "tvm_ternary.schedules.popcount",
            "tvm_ternary.quant.layers"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_only_declared_dependencies(name):
    module = importlib.import_module(name)
    providers = metadata.packages_distributions()
    required = core_requirements()
    third_party = imported_top_level(Path(module.__file__)) - set(sys.stdlib_module_names) - {"tvm_ternary"}
    undeclared = {top: providers.get(top, ["<not installed>"]) for top in third_party
                  if not {d.lower().replace("_", "-") for d in providers.get(top, [])} & required}
    assert not undeclared, f"{name} imports {undeclared} (module: distributions), not core dependencies " \
                           f"of tvm-ternary ({sorted(required)}) in pyproject.toml"


def test_the_wheel_ships_the_tuning_records(tmp_path):
    """``build(..., tuned="shipped")`` reads records from the installed package: a wheel (not
    only this editable checkout) must hold them."""
    root = Path(__file__).resolve().parent.parent
    source = tmp_path / "source"               # a clean copy: a checkout's build/ may hold them from before
    shutil.copytree(root, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__",
                                                                ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path), str(source)], check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("tvm_ternary-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for isa in ("avx2", "avx512"):
        for name in ("database_workload.json", "database_tuning_record.json", "tuning.json"):
            assert f"tvm_ternary/schedules/records/{isa}/{name}" in names
