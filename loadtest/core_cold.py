"""What the core costs when other work has run between two of its calls.

``core1`` in the benchmark is the core in a tight loop: its code and data stay in the CPU's
caches from one presentation to the next. In the server they do not: between two unary calls
gRPC, the event loop, the interpreter and the kernel run, and the load generator runs on the
other CPU, sharing the last-level cache. This measures, in one process, the CPU time of one
presentation (thread CPU around the call only) for

* ``core``: ``Verifier.verify_batch`` of one ``Scan``, as ``core1``;
* ``unary``: the service's unary binding call (``WireBatch.unary`` of an encoded
  ``VerifyRequest``, then ``answer_unary`` with the answer store and the audit record), as
  ``Verify`` makes it, and the audit lines rendered as the audit buffer renders them, every
  :data:`AUDIT_LINES_PER_WRITE` calls;

each warm (nothing between calls) and after other work between calls: ``--touch`` MiB read
and written (a copy of a buffer that size), or ``pages`` (one byte read in each 4 KiB page of
64 MiB: the address translations evicted, little data). Rounds alternate in order; medians.
``--crypto ring`` (or ``all``: aws-lc-rs and RustCrypto too, which builds AWS-LC) adds one
ES256 verification alone in Rust after the same whole MiB (rust/core-bench ``crypto_floor
--touch-mib``): how much of the core's loss is the signature's.

    python loadtest/core_cold.py [--rounds 3] [--items 2000] [--touch 0,0.5,2,8,pages]
        [--what core,unary] [--crypto ring|all]

Which of the native module's code and data lines a call fetches again: one case at a time
under Valgrind's cache simulator, then loadtest/cachegrind_native.py on the two outputs:

    valgrind --tool=cachegrind --cache-sim=yes --LL=8388608,16,64 \
        --cachegrind-out-file=cold.8 python loadtest/core_cold.py --rounds 1 \
        --items 300 --what unary --touch 8      # and likewise --touch 0 into cold.0

Findings in docs/benchmarks.md "Unary: the floor under the ratio". Not part of ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from apcv_verify import _native  # noqa: E402
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2  # noqa: E402
from apcv_verify.config import FIELD_GROUPS, USES  # noqa: E402
from apcv_verify.issuer import DemoPKI  # noqa: E402
from apcv_verify.replay.answers import MemoryAnswers  # noqa: E402
from core_bench import CORE_BENCH, CORE_BENCH_TARGET  # noqa: E402
from corpus import READER_ID, make_pki, presentations  # noqa: E402
from service_bench import core_verifier, encode_unary  # noqa: E402

PAGE = 4096
PAGES_SPAN = 64 << 20


#: The audit records one write of the audit buffer takes at most (4,096 bytes of ≈ 390-byte
#: lines): the records ``answer_unary`` queues are rendered that many at a time.
AUDIT_LINES_PER_WRITE = 10


def toucher(touch: str) -> Callable[[], object] | None:
    """The work run between two calls: None, ``pages``, or a size in MiB."""
    if touch == "pages":
        span = bytearray(PAGES_SPAN)
        return lambda: span[::PAGE]  # one byte read per page, into a new 16 KiB bytearray
    size = int(float(touch) * (1 << 20))
    if not size:
        return None
    buffer = bytearray(size)
    return lambda: bytes(buffer)  # size read and size written


def measure(pki: DemoPKI, what: str, touch: str, items: int, round_: int) -> float:
    """µs of thread CPU per presentation, inside the calls only."""
    now = int(time.time())
    verifier = core_verifier(pki, now)
    between = toucher(touch)
    fresh = list(presentations(pki, items))
    clock = time.thread_time
    spent = 0.0
    accepted = 0
    if what == "core":
        for scan in [_native.Scan(p, READER_ID) for p in fresh]:
            if between is not None:
                between()
            started = clock()
            (result,) = verifier.verify_batch([scan], now)
            spent += clock() - started
            accepted += result.accepted
    else:
        view = _native.CallerView(list(USES), {use: list(FIELD_GROUPS) for use in ("", *USES)})
        queue = _native.AuditQueue()
        audit = (_native.HolderRefKey(b"core-cold"), None, queue)
        answers = MemoryAnswers(10 * items, "core-cold")
        for request in encode_unary(fresh, f"{touch}-{round_}-"):
            if between is not None:
                between()
            started = clock()
            call = _native.WireBatch.unary(request)
            assert call is not None
            reply = call.answer_unary(
                verifier, view, now, answers.store, answers.answer_keys, "bench", now + 600, audit
            )[3]
            if len(queue) >= AUDIT_LINES_PER_WRITE:
                queue.take(4096)
            spent += clock() - started
            assert reply is not None  # no FHIR JSON asked for, no request id reused
            decision = verifier_pb2.VerifyResponse.FromString(reply).verdict.decision
            accepted += decision == verifier_pb2.DECISION_ACCEPTED
    if accepted != items:
        raise SystemExit(f"{what}: {accepted} of {items} presentations accepted")
    return spent / items * 1e6


def summary(label: str, values: list[float], warm: list[float]) -> str:
    """``label``, the median of ``values`` with their range, and its difference from the
    median of ``warm`` (the same case with nothing between calls)."""
    middle = statistics.median(values)
    return (
        f"{label} {middle:7.1f} ({min(values):.1f}–{max(values):.1f})"
        f"  {middle - statistics.median(warm):+7.1f}"
    )


def crypto_after(touches: list[int], backends: str, rounds: int, items: int) -> list[str]:
    """ES256 verification alone in Rust after each size in ``touches`` (whole MiB) copied
    between verifications: rust/core-bench ``crypto_floor --touch-mib``, built as
    loadtest/core_bench.py builds it (ring alone unless ``backends`` is ``all``)."""
    env = {**os.environ, "CARGO_TARGET_DIR": str(CORE_BENCH_TARGET)}
    build = ["cargo", "build", "--release", "--quiet", "--manifest-path"]
    build += [str(CORE_BENCH / "Cargo.toml"), "--bin", "crypto_floor"]
    subprocess.run(
        build + ([] if backends == "all" else ["--no-default-features"]), env=env, check=True
    )
    command = [str(CORE_BENCH_TARGET / "release" / "crypto_floor")]
    command += ["--touch-mib", ",".join(map(str, touches))]
    command += ["--rounds", str(rounds), "--iterations", str(items)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    runs: dict[tuple[str, int], list[float]] = {}
    for line in output.splitlines():
        row = json.loads(line)
        runs.setdefault((row["backend"], row["touch_mib"]), []).append(row["cpu_us_per_verify"])
    return [
        summary(f"ES256 {backend:10} touch {touch:>3}", values, runs[backend, touches[0]])
        for (backend, touch), values in runs.items()
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--touch", default="0,0.5,2,8,pages", help="comma-separated")
    parser.add_argument("--what", default="core,unary", help="comma-separated: core, unary or both")
    parser.add_argument(
        "--crypto", choices=("ring", "all"), help="also ES256 alone in Rust (crypto_floor)"
    )
    args = parser.parse_args()
    touches = args.touch.split(",")
    whats = args.what.split(",")
    if not set(whats) <= {"core", "unary"}:
        parser.error("--what: core, unary or both, comma-separated")
    with tempfile.TemporaryDirectory(prefix="apcv-core-cold-") as temporary:
        pki = make_pki(Path(temporary) / "pki")
        cases = [(what, touch) for what in whats for touch in touches]
        results: dict[tuple[str, str], list[float]] = {case: [] for case in cases}
        for what in whats:  # warm-up: the process's first calls are not measured
            measure(pki, what, "0", min(args.items, 200), 0)
        for round_ in range(1, args.rounds + 1):
            for what, touch in cases if round_ % 2 else reversed(cases):
                value = measure(pki, what, touch, args.items, round_)
                results[what, touch].append(value)
                print(f"round {round_} {what:6} touch {touch:>6} {value:7.1f} µs", flush=True)
    print("\nmedian (min–max) µs of thread CPU per presentation, inside the calls")
    for (what, touch), values in results.items():
        print(summary(f"{what:6} touch {touch:>6}", values, results[what, touches[0]]))
    if args.crypto:
        whole = [int(float(t)) for t in touches if t != "pages" and float(t).is_integer()]
        print("\nES256 alone in Rust, µs of thread CPU per verification")
        print("\n".join(crypto_after(whole, args.crypto, args.rounds, args.items)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
