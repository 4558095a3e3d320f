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
