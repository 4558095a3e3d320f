"""loadtest/cachegrind_native.py reads Valgrind's cache simulator output and adds up, per
call, the lines the native module's functions fetched again (no valgrind run here: its files
are written by hand, in the format cachegrind writes)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .conftest import REPO

sys.path.insert(0, str(REPO / "loadtest"))
import cachegrind_native  # noqa: E402

HEADER = """desc: I1 cache:         65536 B, 64 B, 4-way associative
desc: LL cache:         8388608 B, 64 B, 16-way associative
cmd: python loadtest/core_cold.py --rounds 1 --items 2 --what unary --touch {touch}
events: Ir I1mr ILmr Dr D1mr DLmr Dw D1mw DLmw
"""


def cachegrind_file(path: Path, touch: str, body: str) -> Path:
    path.write_text(HEADER.format(touch=touch) + body + "summary: 0 0 0 0 0 0 0 0 0\n")
    return path


def test_lines_fetched_again_per_call_by_function_and_crate(tmp_path: Path) -> None:
    warm = cachegrind_file(
        tmp_path / "cold.0",
        "0",
        """fl=???
fn=apcv_core::pipeline::Snapshot::judge
0 100 1 0 40 2 0 10 0 0
fn=ring_core_0_17_14__sha256_block_data_order_avx
0 50 0 0 0 0 0 0 0 0
fl=./string/../sysdeps/x86_64/multiarch/memmove-vec-unaligned-erms.S
fn=__memcpy_avx_unaligned_erms
12 10 0 0 5 0 0 5 0 0
""",
    )
    cold = cachegrind_file(
        tmp_path / "cold.8",
        "8",
        """fl=???
fn=apcv_core::pipeline::Snapshot::judge
0 60 1 9 20 2 3 5 0 1
0 40 1 11 20 2 2 5 0 0
fn=<&mut ciborium::de::Deserializer<R> as serde_core::de::Deserializer>::deserialize_any
0 30 2 4 8 1 1 0 0 0
fn=ring_core_0_17_14__sha256_block_data_order_avx
0 50 0 6 0 0 0 0 0 0
fl=./string/../sysdeps/x86_64/multiarch/memmove-vec-unaligned-erms.S
fn=__memcpy_avx_unaligned_erms
12 900 0 0 500 0 400 500 0 300
""",
    )
    native = {
        "apcv_core::pipeline::Snapshot::judge",
        "<&mut ciborium::de::Deserializer<R> as serde_core::de::Deserializer>::deserialize_any",
        "ring_core_0_17_14__sha256_block_data_order_avx",
    }
    added = cachegrind_native.added_per_call(
        cachegrind_native.read_counts(warm), cachegrind_native.read_counts(cold), calls=2
    )
    # judge's two lines summed, less the warm run's, per call of 2.
    assert added["apcv_core::pipeline::Snapshot::judge"] == {
        "Ir": 0.0, "ILmr": 10.0, "DLmr": 2.5, "DLmw": 0.5,
    }  # fmt: skip
    lines = cachegrind_native.report(added, native, top=2)
    text = "\n".join(lines)
    assert lines[2].split() == ["the", "native", "module", "15.0", "15.0", "3.0", "0.5"]
    assert lines[3].split() == ["everything", "else", "445.0", "0.0", "200.0", "150.0"]
    # By crate, the most lines first: a path's first part, C and assembly apart.
    crates = [line.split()[0] for line in lines[7:10]]
    assert crates == ["apcv_core", "(C", "ciborium"], text
    # The two functions with most lines, the memcpy of the work between calls not among them.
    assert lines[-2].endswith("apcv_core::pipeline::Snapshot::judge"), text
    assert "sha256" in lines[-1] and "memcpy" not in text.split("functions with")[1], text


def test_a_run_without_the_cache_simulator_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("events: Ir\nfn=f\n0 10\n")
    with pytest.raises(SystemExit, match="--cache-sim=yes"):
        cachegrind_native.read_counts(plain)


def test_the_module_functions_are_its_own_names() -> None:
    """Read from the built module with nm, demangled as cachegrind prints them."""
    module = cachegrind_native.DEFAULT_MODULE
    if not module.exists():
        pytest.fail(f"{module} is missing: `make dev` builds it")
    names = cachegrind_native.native_functions(module)
    assert any(name.startswith("apcv_core::") for name in names)
    assert not any(name.startswith("_ZN") for name in names)  # demangled
