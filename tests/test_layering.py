"""The package's layers hold: no import cycle between its modules, no production module that
imports the issuer toolkit (a test tool), and no lower layer that imports a higher one
(docs/architecture.md "Components")."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "python" / "apcv_verify"

#: The library that serves: none of it may import the issuer toolkit, at any time.
PRODUCTION = ("config", "fhir", "service", "trust", "replay", "observe")
#: What each layer may not import (metrics never reach into the server, and so on).
FORBIDDEN = {
    "observe": ("apcv_verify.service", "apcv_verify.trust", "apcv_verify.cli"),
    "replay": ("apcv_verify.service", "apcv_verify.trust", "apcv_verify.cli"),
    "trust": ("apcv_verify.service", "apcv_verify.cli"),
    "service": ("apcv_verify.cli",),
    "issuer": ("apcv_verify.service", "apcv_verify.cli", "apcv_verify._native"),
    # The client SDK runs on readers and hospital systems: the contract only, no server part.
    "client": (
        "apcv_verify.service",
        "apcv_verify.trust",
        "apcv_verify.replay",
        "apcv_verify.observe",
        "apcv_verify.cli",
        "apcv_verify.issuer",
        "apcv_verify._native",
    ),
}


@dataclass(frozen=True)
class Import:
    module: str  # the module imported (a module, never a name inside one)
    top_level: bool  # run on import of the importer (not in a function or TYPE_CHECKING)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for path in sorted(PACKAGE.rglob("*.py"))
        if "_proto" not in path.relative_to(PACKAGE).parts
    }


def imports(name: str, path: Path, known: set[str]) -> list[Import]:
    """Every import of a package module by ``name``, TYPE_CHECKING ones included."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, top_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = top_level and not (
                isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
                or (isinstance(child, ast.If) and ast.unparse(child.test) == "TYPE_CHECKING")
            )
            if isinstance(child, ast.Import):
                found.extend(Import(alias.name, inner) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in child.names:
                    candidate = f"{base}.{alias.name}"
                    found.append(Import(candidate if candidate in known else base, inner))
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), True)
    return [item for item in found if item.module in known and item.module != name]


@pytest.fixture(scope="module")
def graph() -> dict[str, list[Import]]:
    found = modules()
    known = set(found) | {"apcv_verify._native", "apcv_verify._proto"}
    return {name: imports(name, path, known) for name, path in found.items()}


def test_the_module_graph_is_acyclic(graph: dict[str, list[Import]]) -> None:
    sorter = graphlib.TopologicalSorter(
        {name: {item.module for item in items} for name, items in graph.items()}
    )
    try:
        sorter.prepare()
    except graphlib.CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")


def test_the_checker_sees_every_layer(graph: dict[str, list[Import]]) -> None:
    """The check cannot pass by finding nothing: the layers exist and import each other."""
    layers = {name.split(".")[1] for name in graph if name.count(".") >= 1}
    assert {*PRODUCTION, "cli", "issuer"} <= layers
    startup = {item.module for item in graph["apcv_verify.service.startup"]}
    assert {"apcv_verify.trust.sources", "apcv_verify.observe.metrics"} <= startup
    assert "apcv_verify.issuer" in {item.module for item in graph["apcv_verify.cli.demo"]}


def reachable(graph: dict[str, list[Import]], start: str, *, top_level_only: bool) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        current = todo.pop()
        for item in graph.get(current, []):
            if (item.top_level or not top_level_only) and item.module not in seen:
                seen.add(item.module)
                todo.append(item.module)
    return seen


def is_issuer(module: str) -> bool:
    return module == "apcv_verify.issuer" or module.startswith("apcv_verify.issuer.")


def test_no_production_module_imports_the_issuer_toolkit(graph: dict[str, list[Import]]) -> None:
    production = [name for name in graph if name.count(".") and name.split(".")[1] in PRODUCTION]
    assert production
    for name in production:
        offending = sorted(filter(is_issuer, reachable(graph, name, top_level_only=False)))
        assert not offending, f"{name} imports {offending}"


def test_serving_does_not_load_the_issuer_toolkit(graph: dict[str, list[Import]]) -> None:
    """The command line loads the toolkit only for ``issue`` and ``demo``."""
    for entry in ("apcv_verify.cli.main", "apcv_verify.cli.workers", "apcv_verify.cli.__main__"):
        loaded = reachable(graph, entry, top_level_only=True)
        assert not sorted(filter(is_issuer, loaded)), entry


#: The commands that make test material, the only parts of the command line that load the
#: issuer toolkit (and only when they run: see the test above).
TOOLKIT_COMMANDS = {"apcv_verify.cli.issue", "apcv_verify.cli.demo", "apcv_verify.cli.corpus"}


def test_only_the_toolkit_commands_import_the_issuer(graph: dict[str, list[Import]]) -> None:
    """``scan`` verifies through the client SDK; only ``issue``, ``demo`` and ``corpus`` make
    keys, credentials and presentations."""
    importers = {
        name
        for name, items in graph.items()
        if name.startswith("apcv_verify.cli.") and any(is_issuer(i.module) for i in items)
    }
    assert importers == TOOLKIT_COMMANDS
    scan = reachable(graph, "apcv_verify.cli.scan", top_level_only=False)
    assert "apcv_verify.client" in scan
    assert not sorted(filter(is_issuer, scan)), "apcv_verify.cli.scan"


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_higher_ones(graph: dict[str, list[Import]], layer: str) -> None:
    for name, items in graph.items():
        if not name.count(".") or name.split(".")[1] != layer:
            continue
        for item in items:
            reached = [f for f in FORBIDDEN[layer] if f"{item.module}.".startswith(f"{f}.")]
            assert not reached, f"{name} imports {item.module}"


def test_the_command_line_loads_no_scan_or_progress_library_to_serve() -> None:
    """tqdm, Pillow and zxing-cpp are for ``scan`` and ``corpus``: imported when they run."""
    loaded = subprocess.run(
        [sys.executable, "-c",
         "import sys, apcv_verify.cli.main, apcv_verify.service.startup; print(*sys.modules)"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert "apcv_verify.cli.scan" in loaded  # the check sees the commands' modules…
    assert not {"tqdm", "PIL", "zxingcpp"} & set(loaded)  # …but not what they run with
