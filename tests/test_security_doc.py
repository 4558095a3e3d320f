"""docs/security.md and docs/reliability.md name only tests that exist: every
``tests/<module>.py::<name>[<param>]`` and ``rust/…/<file>.rs::<name>`` they cite."""

from __future__ import annotations

import importlib
import re

import pytest

from .conftest import REPO

DOCS = ["docs/security.md", "docs/reliability.md"]
PYTHON_TEST = re.compile(r"`tests/(\w+)\.py::(\w+)(?:\[(\w+)\])?`")
RUST_TEST = re.compile(r"`(rust/[\w/-]+\.rs)::(\w+)`")


@pytest.mark.parametrize("doc", DOCS)
def test_every_python_test_cited_exists(doc: str) -> None:
    text = (REPO / doc).read_text()
    cited = PYTHON_TEST.findall(text)
    assert cited or doc != "docs/security.md"
    for module, name, param in cited:
        assert hasattr(importlib.import_module(f"tests.{module}"), name), (module, name)
        if param:  # a parametrize id: a literal of the module
            source = (REPO / "tests" / f"{module}.py").read_text()
            assert f'"{param}"' in source, (module, name, param)


@pytest.mark.parametrize("doc", DOCS)
def test_every_rust_test_cited_exists(doc: str) -> None:
    for path, name in RUST_TEST.findall((REPO / doc).read_text()):
        source = (REPO / path).read_text()
        assert re.search(rf"\bfn {name}\b", source), (path, name)
