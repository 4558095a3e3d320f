"""The wheel carries the compiled core and the generated protobuf code.

Maturin drops git-ignored files unless ``[tool.maturin] include`` lists them; the
generated ``_proto`` package is git-ignored by design.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from apcv_verify import _native

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
    """What ``make <target>`` would run from a checkout without a venv (make -n runs nothing),
    one line per command (a recipe's continued lines joined)."""
    return subprocess.run(
        ["make", "-n", target, f"VENV={venv}"],
        cwd=REPO, capture_output=True, text=True, check=True, timeout=60,
    ).stdout.replace("\\\n", " ")  # fmt: skip


def test_make_demo_installs_the_runtime_package_without_the_dev_and_load_tools(
    tmp_path: Path,
) -> None:
    demo = make_recipe("demo", tmp_path / "venv").replace(str(tmp_path), "<tmp>")
    (build,) = [line for line in demo.splitlines() if "maturin develop" in line]
    assert "--release" in build and "--extras" not in build
    for tool in ("pytest", "mypy", "ruff", "locust"):
        assert tool not in demo
    # The tests and the linters still get them: in the release build, and in the
    # instrumented build before it when the core's profile is to be made again.
    for target in ("test-python", "lint"):
        developed = [
            line for line in make_recipe(target, tmp_path / "venv").splitlines()
            if "maturin develop" in line
        ]  # fmt: skip
        assert developed and all("--extras dev,load" in line for line in developed)


def test_make_test_runs_on_the_profile_guided_core() -> None:
    """`make dev`, which `make test` and `make bench` run, builds the core from a profile of
    the service's work (Makefile, "Profile-guided optimisation"), as the image's wheel stage
    does. A developer may build it otherwise (`make dev PROFILE=plain` or `debug`), so this
    binds in CI only, where the suite must run on the build that ships."""
    if not os.environ.get("CI"):
        pytest.skip("outside CI the core may be any build (make dev PROFILE=plain or debug)")
    assert _native.BUILD == "profile-guided"
