"""Which cache lines of the native module a call fetches again after other work.

Reads two outputs of Valgrind's cache simulator (``valgrind --tool=cachegrind
--cache-sim=yes``) for the same calls, one with nothing run between two calls and one after
other work (loadtest/core_cold.py ``--touch``), and prints, per call, the last-level misses
the second run added: instruction fetches (``ILmr``) and data reads and writes (``DLmr``,
``DLmw``), for the native module's functions against everything else, then by crate and by
function. A miss is a 64-byte line fetched from memory; the simulator has no prefetcher, so
this counts lines, not time.

    python loadtest/cachegrind_native.py cold.0 cold.8 --calls 300 \\
        [--module python/apcv_verify/_native.abi3.so] [--top 25]

Findings in docs/benchmarks.md "Unary: the lines fetched again". Not part of ``make bench``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

#: The events compared: instructions run, then the last-level misses.
EVENTS = ("Ir", "ILmr", "DLmr", "DLmw")
DEFAULT_MODULE = Path(__file__).resolve().parent.parent / "python/apcv_verify/_native.abi3.so"


def read_counts(path: Path) -> dict[str, dict[str, int]]:
    """Each function's totals of ``EVENTS`` in one cachegrind output file (its ``fn=``
    blocks summed over files and lines)."""
    events: list[str] = []
    totals: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(EVENTS, 0))
    function = None
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
            missing = set(EVENTS) - set(events)
            if missing:
                raise SystemExit(
                    f"{path}: no {sorted(missing)}: run cachegrind with --cache-sim=yes"
                )
        elif line.startswith("fn="):
            function = line[3:]
        elif line[:1].isdigit() and function is not None:
            counts = line.split()[1:]
            row = totals[function]
            for event, count in zip(events, counts, strict=False):
                if event in row:
                    row[event] += int(count)
    if not events:
        raise SystemExit(f"{path}: not a cachegrind output file")
    return dict(totals)


def native_functions(module: Path) -> set[str]:
    """The names the module defines, demangled as cachegrind prints them."""
    listed = subprocess.run(
        ["nm", "--demangle", "--defined-only", str(module)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return {
        parts[2]
        for parts in (line.split(" ", 2) for line in listed.splitlines())
        if len(parts) == 3
    }


def crate_of(function: str) -> str:
    """The crate a Rust function comes from (its path's first part, `<impl …>` and
    references unwrapped); a name without a path is C or assembly (ring's)."""
    found = re.match(r"[<&\s]*(?:mut\s+|dyn\s+)?([A-Za-z_][A-Za-z0-9_]*)::", function)
    return found[1] if found else "(C and assembly)"


def added_per_call(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]], calls: int
) -> dict[str, dict[str, float]]:
    """Per function, ``after`` − ``before`` per call, for each of ``EVENTS``."""
    zero = dict.fromkeys(EVENTS, 0)
    return {
        function: {
            e: (after.get(function, zero)[e] - before.get(function, zero)[e]) / calls
            for e in EVENTS
        }
        for function in before.keys() | after.keys()
    }


def lines_missed(row: dict[str, float]) -> float:
    return row["ILmr"] + row["DLmr"] + row["DLmw"]


def report(added: dict[str, dict[str, float]], native: set[str], top: int) -> list[str]:
    def total(rows: list[dict[str, float]]) -> dict[str, float]:
        return {e: sum(row[e] for row in rows) for e in EVENTS}

    def columns(row: dict[str, float]) -> str:
        return "".join(f" {row[e]:>9.1f}" for e in EVENTS)

    header = f"{'':40}" + "".join(f" {e:>9}" for e in EVENTS)
    out = ["added per call, after − before", header]
    ours = [row for function, row in added.items() if function in native]
    rest = [row for function, row in added.items() if function not in native]
    out.append(f"{'the native module':40}{columns(total(ours))}")
    out.append(f"{'everything else':40}{columns(total(rest))}")
    by_crate: dict[str, list[dict[str, float]]] = defaultdict(list)
    for function, row in added.items():
        if function in native:
            by_crate[crate_of(function)].append(row)
    out += ["", "the native module by crate", header]
    crates = sorted(by_crate.items(), key=lambda item: -lines_missed(total(item[1])))
    crates = [(crate, rows) for crate, rows in crates if lines_missed(total(rows)) >= 0.05]
    out += [f"{crate[:40]:40}{columns(total(rows))}" for crate, rows in crates]
    out += ["", f"the native module's {top} functions with the most lines fetched again"]
    out.append("".join(f" {e:>9}" for e in EVENTS) + "  function")
    functions = sorted((f for f in added if f in native), key=lambda f: -lines_missed(added[f]))
    out += [f"{columns(added[f])}  {f}" for f in functions[:top]]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="cachegrind output, nothing between calls")
    parser.add_argument("after", type=Path, help="cachegrind output, other work between calls")
    parser.add_argument("--calls", type=int, required=True, help="measured calls in each run")
    parser.add_argument("--module", type=Path, default=DEFAULT_MODULE)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    added = added_per_call(read_counts(args.before), read_counts(args.after), args.calls)
    print("\n".join(report(added, native_functions(args.module), args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
