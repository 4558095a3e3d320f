"""The wheel carries the compiled core and the generated protobuf code.

Maturin drops git-ignored files unless ``[tool.maturin] include`` lists them; the
generated ``_proto`` package is git-ignored by design.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO


def test_wheel_contains_native_core_and_generated_protobuf(tmp_path: Path) -> None:
    maturin = shutil.which("maturin", path=str(Path(sys.executable).parent))
    if maturin is None:
        pytest.fail("maturin is missing from the venv: `make dev` installs it")
    subprocess.run(
        [maturin, "build", "--release", "--quiet", "--out", str(tmp_path)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("apcv_verify-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "apcv_verify/_native.abi3.so" in names
    assert "apcv_verify/_native.pyi" in names
    assert "apcv_verify/py.typed" in names
    for module in ("verifier_pb2.py", "verifier_pb2_grpc.py", "verifier_pb2.pyi"):
        assert f"apcv_verify/_proto/apcv/verify/v1/{module}" in names
    for module in ("__init__.py", "unary.py", "batcher.py", "spool.py", "errors.py"):
        assert f"apcv_verify/client/{module}" in names  # the client SDK ships in the wheel


def make_recipe(target: str, venv: Path) -> str:
    """What ``make <target>`` would run from a checkout without a venv (make -n runs nothing)."""
    return subprocess.run(
        ["make", "-n", target, f"VENV={venv}"],
        cwd=REPO, capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip


def test_make_demo_installs_the_runtime_package_without_the_dev_and_load_tools(
    tmp_path: Path,
) -> None:
    demo = make_recipe("demo", tmp_path / "venv").replace(str(tmp_path), "<tmp>")
    (build,) = [line for line in demo.splitlines() if "maturin develop" in line]
    assert "--release" in build and "--extras" not in build
    for tool in ("pytest", "mypy", "ruff", "locust"):
        assert tool not in demo
    # The tests and the linters still get them.
    for target in ("test-python", "lint"):
        (develop,) = [
            line for line in make_recipe(target, tmp_path / "venv").splitlines()
            if "maturin develop" in line
        ]  # fmt: skip
        assert "--extras dev,load" in develop
