"""The core's benchmark (``make bench``, before the service cases of loadtest/bench.py).

1. **Crypto floor** (rust/core-bench ``crypto_floor``): ES256 and Ed25519 verification with ring
   (the core's backend), aws-lc-rs and RustCrypto, 1 and 2 threads; and the QR decoding steps
   (``inflate``: base45, then inflate with the core's flate2/zlib-rs and with miniz_oxide).
2. **Core from Python**: ``_native.Verifier.verify_batch`` on a corpus of presentations, one item
   per call and batches of 100, 1 and 2 rayon threads, NFC bytes and QR text, with the cache of
   verified issuer signatures and without it; the service's path for ``VerifyBatch``
   (``_native.WireBatch``: an encoded request of 100 scans in, the encoded response out) on 1
   and 2 threads; one item per call against batches of 100 interleaved block by block (what a
   call costs apart from its items), from Python and in Rust alone; and the batches in Rust
   alone on rayon pools of 1 and 2 threads beside a perfectly parallel probe
   (``batch_threads``), which tells what the machine gave from what the core scales.
3. **Peer**: loadtest/peer.py, a plain-Python verifier of the same profile (cbor2 +
   cryptography), on the same corpus.
4. **Scale**: a 70-million-entry status population split into lists as an issuer would, the
   memory replay store up to 10 million live entries (rust/core-bench ``replay_scale``) and at
   a steady rate for half an hour of a simulated clock, its longest calls (``replay_steady``),
   trust lists of 4 to 1,000 keys: load time, memory and lookup cost as size grows, plotted to
   docs/benchmarks-scale.png (matplotlib).

The corpus: ``--holders`` distinct credentials (each its own device key, status index and id,
all from one ES256 AMO key), each presented ``--repeat`` times with a fresh ``cti`` (the replay
key), shuffled: the issuer's signature of a credential is new to the verifier once in
``--repeat`` presentations. Every case runs in its own process (rayon's thread count is fixed per
process) with a fresh verifier and replay store after a warm-up on a throwaway one, and must
accept every presentation. Cases run in interleaved rounds, each round in the opposite order of
the previous one; the figure kept is the median over rounds; the load average is read before each
case. CPU time is the process's own (all threads), per presentation.

    python loadtest/core_bench.py [--quick] [--rounds 3] [--write docs/benchmarks.md]

``--quick`` (run by tests/test_core_bench.py) makes a tiny corpus and scale, one round, and
writes nothing unless ``--write`` is given: it keeps the benchmark working, it measures nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CORE_BENCH = REPO / "rust" / "core-bench"
CORE_BENCH_TARGET = REPO / "target" / "core-bench"
READER_ID = "bench-reader"
BATCH = 100
BEGIN = "<!-- core-bench:begin -->"
END = "<!-- core-bench:end -->"


# --- the corpus -----------------------------------------------------------------------------------


def make_corpus(path: Path, holders: int, repeat: int, now: int, seed: int = 8) -> None:
    """Write a pickled corpus: trust list, status list, anchor and shuffled presentations."""
    from apcv_verify import issuer as iss

    rng = random.Random(seed)
    anchor = iss.SigningKey.generate(iss.Alg.ES256)
    amo = iss.SigningKey.generate(iss.Alg.ES256)
    status_key = iss.SigningKey.generate(iss.Alg.ES256)
    year = 365 * 86_400
    entries = [
        iss.TrustEntry(amo, iss.AMO_ROLE, iss.DEMO_AMO_ISS, now - year, now + year),
        iss.TrustEntry(status_key, iss.STATUS_ROLE, iss.DEMO_STATUS_ISS, now - year, now + year),
    ]
    trust_list = iss.make_trust_list(anchor, seq=1, iat=now, exp=now + year, entries=entries)
    uri = "https://status.apcv.example/bench/1"
    status = iss.StatusListBuilder(holders, bits=2)
    status_list = status.sign(status_key, uri=uri, iat=now, exp=now + 86_400)
    amo_rights = iss.AmoRights("01", "751", "1234", "2026-01-01", "2026-12-31")
    presentations: list[bytes] = []
    for h in range(holders):
        number13 = f"{rng.choice('12')}{rng.randrange(100):02d}{rng.randrange(1, 13):02d}75"
        number13 += f"{rng.randrange(1000):03d}{rng.randrange(1000):03d}"
        person = iss.Person(
            iss.matricule(number13),
            iss.INS_DEMO_OID,
            iss.Identity("MARTIN", "Alice Jeanne", "F", "1985-06-14", "75115"),
            amo_rights,
        )
        device = iss.SigningKey.generate(iss.Alg.ES256)
        credential = iss.issue_credential(
            amo,
            iss=iss.DEMO_AMO_ISS,
            sub=f"bench-{h:07d}",
            device_key=device,
            holder=person,
            status_uri=uri,
            status_index=h,
            iat=now - 86_400,
            nbf=now - 86_400,
            exp=now + year,
        )
        for _ in range(repeat):
            presentations.append(iss.make_presentation(device, credential, iat=now - 5))
    rng.shuffle(presentations)
    corpus = {
        "now": now,
        "anchor": anchor.public_key.cose_key_bytes(),
        "anchor_pem": anchor.public_pem(),
        "trust_list": trust_list,
        "status_lists": [status_list],
        "nfc": presentations,
        "qr": [iss.qr_text(p) for p in presentations],
        "holders": holders,
        "repeat": repeat,
    }
    path.write_bytes(pickle.dumps(corpus))


# --- one case, in its own process ---------------------------------------------------------------


def _native_verifier(corpus: dict[str, Any], cache: bool) -> Any:
    from apcv_verify import _native

    now = corpus["now"]
    trust = _native.TrustList.verify(corpus["trust_list"], [corpus["anchor"]], now)
    lists = [_native.StatusList.verify(s, trust, now) for s in corpus["status_lists"]]
    policy = _native.Policy(allow_test_identities=True)
    return _native.Verifier(
        trust,
        lists,
        policy,
        _native.MemoryReplayStore(),
        signature_cache_entries=262_144 if cache else 0,
    )


def _default_caller_disclosure() -> tuple[list[str], dict[str, list[str]]]:
    """The uses and the disclosure table the service gives ``WireBatch`` for a caller with the
    default policy (no ``[[callers]]`` configured)."""
    from apcv_verify.config import DEFAULT_CALLER, USES

    disclosure = {use: sorted(DEFAULT_CALLER.disclosed(use)) for use in ("", *USES)}
    return list(DEFAULT_CALLER.uses), disclosure


def run_case(corpus_path: Path, case: str, count: int) -> dict[str, Any]:
    """Measure one case on the first ``count`` presentations of the corpus."""
    corpus = pickle.loads(corpus_path.read_bytes())
    now = corpus["now"]
    kind, form, size, cache = case.split("-")  # e.g. core-nfc-100-cache, peer-qr-1-none
    tally: Callable[[Any], int] = int  # what go() returned -> presentations accepted
    items = corpus[form][:count]
    warm = corpus[form][-min(200, len(corpus[form])) :]
    if kind == "peer":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
        from peer import PeerVerifier

        anchor = load_pem_public_key(corpus["anchor_pem"])

        def peer() -> Any:
            return PeerVerifier(
                anchor,  # type: ignore[arg-type]
                corpus["trust_list"],
                corpus["status_lists"],
                now=now,
                allow_test_identities=True,
            )

        throwaway = peer()
        for item in warm:
            throwaway.verify(item, READER_ID, now)
        verifier = peer()

        def go() -> Any:
            accepted = 0
            for item in items:
                verifier.verify(item, READER_ID, now)
                accepted += 1
            return accepted

    elif kind == "wire":
        # The service's path for VerifyBatch: an encoded request in, an encoded response out
        # (_native.WireBatch, as the servicer calls it for the default caller's policy). The
        # requests are encoded before the clock starts (the client's work); the responses are
        # decoded after it stops, to count what they accepted.
        from apcv_verify import _native
        from apcv_verify._proto.apcv.verify.v1 import verifier_pb2 as pb

        n = int(size)
        uses, disclosure = _default_caller_disclosure()

        def requests(chunk: Sequence[Any], prefix: str) -> list[bytes]:
            out = []
            for start in range(0, len(chunk), n):
                scans = [
                    pb.Scan(
                        request_id=f"{prefix}{start + i}",
                        nfc_bytes=x,
                        reader=pb.ReaderContext(reader_id=READER_ID),
                    )
                    for i, x in enumerate(chunk[start : start + n])
                ]
                out.append(pb.VerifyBatchRequest(scans=scans).SerializeToString())
            return out

        def wire(cache_on: bool) -> Callable[[Sequence[bytes]], list[bytes]]:
            v = _native_verifier(corpus, cache_on)

            def answer(encoded: Sequence[bytes]) -> list[bytes]:
                replies = []
                for request in encoded:
                    batch = _native.WireBatch.batch(request)
                    assert batch is not None  # the requests are well-formed
                    v.verify_wire(batch, uses, now)
                    replies.append(batch.response(disclosure))
                return replies

            return answer

        wire(cache == "cache")(requests(warm, "warm-"))
        answer, encoded = wire(cache == "cache"), requests(items, "")

        def go() -> Any:
            return answer(encoded)

        def accepted_in(replies: list[bytes]) -> int:
            return sum(
                d.decision == pb.DECISION_ACCEPTED
                for r in replies
                for d in pb.VerifyBatchResponse.FromString(r).verdicts
            )

        tally = accepted_in

    else:
        from apcv_verify import _native

        def core(cache_on: bool) -> Callable[[Sequence[Any]], int]:
            v = _native_verifier(corpus, cache_on)

            def batch(chunk: Sequence[Any]) -> int:
                scans = [_native.Scan(x, READER_ID) for x in chunk]
                return sum(r.accepted for r in v.verify_batch(scans, now))

            return batch

        n = int(size)
        throwaway = core(cache == "cache")
        for i in range(0, len(warm), n):
            throwaway(warm[i : i + n])
        if n == 1:  # as a caller with one scan writes it (and as the peer's loop is written)
            v = _native_verifier(corpus, cache == "cache")

            def go() -> Any:
                accepted = 0
                for x in items:
                    accepted += v.verify_batch([_native.Scan(x, READER_ID)], now)[0].accepted
                return accepted

        else:
            batch = core(cache == "cache")

            def go() -> Any:
                return sum(batch(items[i : i + n]) for i in range(0, len(items), n))

    cpu0, wall0 = time.process_time(), time.perf_counter()
    done = go()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    accepted = tally(done)
    if accepted != len(items):
        raise SystemExit(f"{case}: {accepted} of {len(items)} accepted")
    return {
        "case": case,
        "threads": int(os.environ.get("RAYON_NUM_THREADS", "0")),
        "items": len(items),
        "cpu_us": cpu * 1e6 / len(items),
        "per_s": len(items) / wall,
    }


def run_per_call(corpus_path: Path, count: int) -> dict[str, Any]:
    """One item per call against batches of 100 (NFC, cache), interleaved block by block: two
    fresh verifiers fed the same presentations, each block of 100 verified by one then by the
    other (in turn first), so that both see the same moments of a shared machine and the same
    cache hits. CPU of this process per presentation for each."""
    from apcv_verify import _native

    corpus = pickle.loads(corpus_path.read_bytes())
    now, items = corpus["now"], corpus["nfc"][:count]
    warm = _native_verifier(corpus, True)
    warm.verify_batch([_native.Scan(x, READER_ID) for x in corpus["nfc"][-200:]], now)
    one, batch = _native_verifier(corpus, True), _native_verifier(corpus, True)
    spent = {"one": 0.0, "batch": 0.0}
    accepted = 0
    for k, start in enumerate(range(0, len(items), BATCH)):
        block = items[start : start + BATCH]
        for which in ("one", "batch") if k % 2 == 0 else ("batch", "one"):
            cpu0 = time.process_time()
            if which == "one":
                for x in block:
                    accepted += one.verify_batch([_native.Scan(x, READER_ID)], now)[0].accepted
            else:
                scans = [_native.Scan(x, READER_ID) for x in block]
                accepted += sum(r.accepted for r in batch.verify_batch(scans, now))
            spent[which] += time.process_time() - cpu0
    if accepted != 2 * len(items):
        raise SystemExit(f"per-call: {accepted} of {2 * len(items)} accepted")
    return {
        "one_cpu_us": spent["one"] * 1e6 / len(items),
        "batch_cpu_us": spent["batch"] * 1e6 / len(items),
    }


# --- scale ----------------------------------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_status_lists(directory: Path, sizes: Sequence[int], lists: int, per_list: int) -> None:
    """Signed status lists (2 bits per entry, 1 % revoked at random) and their trust list, as
    files: one list per size, then ``lists`` lists of ``per_list`` entries (a population split
    as an issuer would split it). Made in another process than the one that loads them, so that
    the memory the issuer side used is not counted, nor reused, by the loader."""
    from apcv_verify import issuer as iss

    rng = random.Random(70)
    now = int(time.time())
    anchor = iss.SigningKey.generate(iss.Alg.ES256)
    key = iss.SigningKey.generate(iss.Alg.ES256)
    entry = iss.TrustEntry(key, iss.STATUS_ROLE, iss.DEMO_STATUS_ISS, now - 10, now + 86_400)
    tl = iss.make_trust_list(anchor, seq=1, iat=now, exp=now + 86_400, entries=[entry])
    (directory / "trust.cose").write_bytes(tl)
    (directory / "anchor.key").write_bytes(anchor.public_key.cose_key_bytes())

    def signed(n: int, uri: str) -> bytes:
        b = iss.StatusListBuilder(n, bits=2)
        for i in rng.sample(range(n), int(n * 0.01)):
            b.set(i, 1)
        return b.sign(key, uri=uri, iat=now, exp=now + 86_400)

    for n in sizes:
        (directory / f"size-{n}.cwt").write_bytes(signed(n, f"https://status.apcv.example/s/{n}"))
    for k in range(lists):
        data = signed(per_list, f"https://status.apcv.example/pop/{k}")
        (directory / f"pop-{k:03d}.cwt").write_bytes(data)


def run_status_scale(directory: Path, sizes: Sequence[int], lists: int, per_list: int) -> Any:
    """Load the lists of :func:`make_status_lists`: load time, resident memory, lookup cost."""
    from apcv_verify import _native

    rng = random.Random(71)
    now = int(time.time())
    anchor = (directory / "anchor.key").read_bytes()
    trust = _native.TrustList.verify((directory / "trust.cose").read_bytes(), [anchor], now)
    rows = []
    for n in sizes:
        data = (directory / f"size-{n}.cwt").read_bytes()
        before = _rss()
        t0 = time.perf_counter()
        lst = _native.StatusList.verify(data, trust, now)
        load_s = time.perf_counter() - t0
        rss = _rss() - before
        probes = [rng.randrange(n) for _ in range(20_000)]
        t0 = time.perf_counter()
        for i in probes:
            lst.status(i)
        lookup_ns = (time.perf_counter() - t0) * 1e9 / len(probes)
        rows.append(
            {
                "entries": n,
                "bit_bytes": n * 2 // 8,
                "signed_bytes": len(data),
                "load_s": load_s,
                "rss_bytes": rss,
                "lookup_ns": lookup_ns,
            }
        )
    held = []
    loads = []
    files = [(directory / f"pop-{k:03d}.cwt").read_bytes() for k in range(lists)]
    before = _rss()
    for data in files:
        t0 = time.perf_counter()
        held.append(_native.StatusList.verify(data, trust, now))
        loads.append(time.perf_counter() - t0)
    population = {
        "lists": lists,
        "per_list": per_list,
        "entries": lists * per_list,
        "bit_bytes": lists * per_list * 2 // 8,
        "rss_bytes": _rss() - before,
        "max_load_s": max(loads),
        "median_load_s": statistics.median(loads),
    }
    return {"status_sizes": rows, "status_population": population}


def run_trust_scale(sizes: Sequence[int], count: int) -> Any:
    """Trust lists of ``sizes`` keys: load time and core CPU per presentation (no cache)."""
    from apcv_verify import _native
    from apcv_verify import issuer as iss

    now = int(time.time())
    anchor = iss.SigningKey.generate(iss.Alg.ES256)
    amo = iss.SigningKey.generate(iss.Alg.ES256)
    status_key = iss.SigningKey.generate(iss.Alg.ES256)
    year = 365 * 86_400
    extra = [
        iss.TrustEntry(
            iss.SigningKey.generate(iss.Alg.ES256 if i % 2 else iss.Alg.EDDSA),
            iss.AMO_ROLE,
            iss.DEMO_AMO_ISS,
            now - year,
            now + year,
        )
        for i in range(max(sizes))
    ]
    uri = "https://status.apcv.example/trust-scale"
    status = iss.StatusListBuilder(16, bits=2).sign(status_key, uri=uri, iat=now, exp=now + 3600)
    device = iss.SigningKey.generate(iss.Alg.ES256)
    person = iss.Person(
        iss.matricule("2850675115042"),
        iss.INS_DEMO_OID,
        iss.Identity("MARTIN", "Alice Jeanne", "F", "1985-06-14", "75115"),
        iss.AmoRights("01", "751", "1234", "2026-01-01", "2026-12-31"),
    )
    credential = iss.issue_credential(
        amo,
        iss=iss.DEMO_AMO_ISS,
        sub="trust-scale",
        device_key=device,
        holder=person,
        status_uri=uri,
        status_index=1,
        iat=now - 60,
        nbf=now - 60,
        exp=now + year,
    )
    presentations = [iss.make_presentation(device, credential, iat=now - 5) for _ in range(count)]
    anchor_key = anchor.public_key.cose_key_bytes()
    rows = []
    for n in sizes:
        entries = [
            *extra[: max(n - 2, 0)],
            iss.TrustEntry(amo, iss.AMO_ROLE, iss.DEMO_AMO_ISS, now - year, now + year),
            iss.TrustEntry(status_key, iss.STATUS_ROLE, iss.DEMO_STATUS_ISS, now - 10, now + 3600),
        ]
        data = iss.make_trust_list(anchor, seq=1, iat=now, exp=now + year, entries=entries)
        before = _rss()
        t0 = time.perf_counter()
        trust = _native.TrustList.verify(data, [anchor_key], now)
        load_s = time.perf_counter() - t0
        rss = _rss() - before
        lists = [_native.StatusList.verify(status, trust, now)]
        v = _native.Verifier(
            trust,
            lists,
            _native.Policy(allow_test_identities=True),
            _native.MemoryReplayStore(),
            signature_cache_entries=0,
        )
        scans = [_native.Scan(p, READER_ID) for p in presentations]
        cpu0 = time.process_time()
        results = v.verify_batch(scans, now)
        cpu = time.process_time() - cpu0
        if not all(r.accepted for r in results):
            raise SystemExit(f"trust list of {n} keys: not every presentation accepted")
        rows.append(
            {
                "keys": len(entries),
                "signed_bytes": len(data),
                "load_s": load_s,
                "rss_bytes": rss,
                "core_cpu_us": cpu * 1e6 / count,
            }
        )
    return {"trust_sizes": rows}


# --- the parent -----------------------------------------------------------------------------------


def _load_average() -> float:
    return os.getloadavg()[0]


def _cargo_bins(quick: bool) -> dict[str, list[dict[str, Any]]]:
    env = {**os.environ, "CARGO_TARGET_DIR": str(CORE_BENCH_TARGET)}
    build = ["cargo", "build", "--release", "--quiet", "--manifest-path"]
    build += [str(CORE_BENCH / "Cargo.toml")]
    # --quick times ring alone: building AWS-LC (C) takes minutes on a small machine.
    subprocess.run(build + (["--no-default-features"] if quick else []), check=True, env=env)
    out = {}
    for name in ("crypto_floor", "inflate", "replay_scale", "replay_steady"):
        args = [str(CORE_BENCH_TARGET / "release" / name)] + (["--quick"] if quick else [])
        text = subprocess.run(args, check=True, capture_output=True, text=True).stdout
        out[name] = [json.loads(line) for line in text.splitlines() if line.strip()]
    return out


def _batch_threads(directory: Path, corpus_path: Path, quick: bool) -> list[dict[str, Any]]:
    """rust/core-bench ``batch_threads`` on the corpus's NFC presentations."""
    corpus = pickle.loads(corpus_path.read_bytes())
    (directory / "trust.cose").write_bytes(corpus["trust_list"])
    (directory / "anchor.key").write_bytes(corpus["anchor"])
    (directory / "status.cwt").write_bytes(corpus["status_lists"][0])
    (directory / "now").write_text(str(corpus["now"]))
    blob = b"".join(len(p).to_bytes(4, "big") + p for p in corpus["nfc"])
    (directory / "nfc.bin").write_bytes(blob)
    args = [str(CORE_BENCH_TARGET / "release" / "batch_threads"), str(directory)]
    text = subprocess.run(args + (["--quick"] if quick else []), check=True, stdout=subprocess.PIPE)
    return [json.loads(line) for line in text.stdout.decode().splitlines() if line.strip()]


def _worker(args: list[str], threads: int | None = None) -> Any:
    env = dict(os.environ)
    if threads is not None:
        env["RAYON_NUM_THREADS"] = str(threads)
    text = subprocess.run(
        [sys.executable, __file__, "--worker", *args],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    ).stdout
    return json.loads(text.strip().splitlines()[-1])


@dataclass(frozen=True)
class Case:
    name: str  # kind-form-size-cache
    threads: int

    @property
    def label(self) -> str:
        return f"{self.name}-t{self.threads}"


CASES = [
    Case("core-nfc-1-cache", 1),
    Case("core-nfc-1-none", 1),
    Case("core-nfc-100-cache", 1),
    Case("core-nfc-100-cache", 2),
    Case("core-nfc-100-none", 1),
    Case("core-nfc-100-none", 2),
    Case("core-qr-1-cache", 1),
    Case("core-qr-100-none", 1),
    Case("core-qr-100-cache", 1),
    Case("core-qr-100-cache", 2),
    Case("wire-nfc-100-cache", 1),
    Case("wire-nfc-100-cache", 2),
    Case("peer-nfc-1-none", 1),
    Case("peer-qr-1-none", 1),
]


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--holders", type=int)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--write", type=Path, help="write the results into this markdown file")
    parser.add_argument("--plot", type=Path, help="PNG of the scale figures")
    parser.add_argument("--json", type=Path, help="write the raw results as JSON")
    parser.add_argument(
        "--cases",
        nargs="+",
        metavar="LABEL",
        choices=[c.label for c in CASES],
        help="run only these cases of section 2-3 (e.g. core-nfc-100-cache-t1 peer-nfc-1-none-t1)"
        " in interleaved rounds and print each one's median CPU per presentation and the load;"
        " no Rust binaries, no scale, nothing written",
    )
    parser.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_run_worker(args.worker)))
        return
    quick = args.quick
    rounds = args.rounds or (1 if quick else 3)
    holders = args.holders or (20 if quick else 1000)
    if args.cases:
        run_cases([c for c in CASES if c.label in args.cases], rounds, holders, args.repeat)
        return
    results: dict[str, Any] = {"rounds": rounds, "holders": holders, "repeat": args.repeat}
    print("core-bench: building and running rust/core-bench", flush=True)
    results["rust"] = _cargo_bins(quick)
    with tempfile.TemporaryDirectory(prefix="apcv-core-bench-") as tmp:
        corpus = Path(tmp) / "corpus.pickle"
        now = int(time.time())
        print(f"core-bench: corpus of {holders} holders x {args.repeat}", flush=True)
        make_corpus(corpus, holders, args.repeat, now)
        count = holders * args.repeat
        results["batch_threads"] = _batch_threads(Path(tmp), corpus, quick)
        rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        per_call: list[dict[str, Any]] = []
        for r in range(1, rounds + 1):
            order = CASES if r % 2 else list(reversed(CASES))
            for case in order:
                load = _load_average()
                row = _worker(["case", str(corpus), case.name, str(count)], case.threads)
                row.update(round=r, load_avg=load)
                rows[case.label].append(row)
                print(f"  round {r} {case.label}: {row['cpu_us']:.1f} us/presentation", flush=True)
            load = _load_average()
            row = _worker(["per-call", str(corpus), str(count)], 1)
            row.update(round=r, load_avg=load)
            per_call.append(row)
        results["cases"] = rows
        results["per_call"] = per_call
    sizes = [100_000, 1_000_000] if quick else [1_000_000, 4_000_000, 8_750_000, 16_000_000]
    lists, per_list = (2, 100_000) if quick else (8, 8_750_000)
    print("core-bench: scale (status lists, trust lists)", flush=True)
    with tempfile.TemporaryDirectory(prefix="apcv-core-bench-") as tmp:
        spec = json.dumps([tmp, sizes, lists, per_list])
        _worker(["status-make", spec])
        results["status"] = _worker(["status", spec])
    trust_sizes = [4, 100] if quick else [4, 100, 1000]
    results["trust"] = _worker(["trust", json.dumps([trust_sizes, 50 if quick else 2000])])
    results["load_avg_end"] = _load_average()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    text = report(results)
    print(text)
    if args.write:
        _write_section(args.write, text)
    if args.plot:
        plot(results, args.plot)


def run_cases(cases: list[Case], rounds: int, holders: int, repeat: int) -> None:
    """Only ``cases`` (``--cases``), on a fresh corpus, in interleaved rounds as ``main`` runs
    them: a quick comparison of a few cases on a shared machine."""
    with tempfile.TemporaryDirectory(prefix="apcv-core-bench-") as tmp:
        corpus = Path(tmp) / "corpus.pickle"
        make_corpus(corpus, holders, repeat, int(time.time()))
        rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in range(1, rounds + 1):
            for case in cases if r % 2 else list(reversed(cases)):
                load = _load_average()
                row = _worker(["case", str(corpus), case.name, str(holders * repeat)], case.threads)
                row.update(round=r, load_avg=load)
                rows[case.label].append(row)
                print(
                    f"  round {r} {case.label}: {row['cpu_us']:.1f} us/presentation"
                    f" (load {load:.1f})",
                    flush=True,
                )
    for label, got in rows.items():
        cpus = sorted(row["cpu_us"] for row in got)
        loads = [row["load_avg"] for row in got]
        print(
            f"{label}: median {_median(got, 'cpu_us'):.1f} us/presentation"
            f" (range {cpus[0]:.1f}-{cpus[-1]:.1f}), load {min(loads):.1f}-{max(loads):.1f}"
        )


def _run_worker(argv: list[str]) -> Any:
    what = argv[0]
    if what == "case":
        return run_case(Path(argv[1]), argv[2], int(argv[3]))
    if what == "per-call":
        return run_per_call(Path(argv[1]), int(argv[2]))
    if what == "status-make":
        directory, sizes, lists, per_list = json.loads(argv[1])
        make_status_lists(Path(directory), sizes, lists, per_list)
        return {}
    if what == "status":
        directory, sizes, lists, per_list = json.loads(argv[1])
        return run_status_scale(Path(directory), sizes, lists, per_list)
    if what == "trust":
        sizes, count = json.loads(argv[1])
        return run_trust_scale(sizes, count)
    raise SystemExit(f"unknown worker {what}")


# --- the report -----------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> str:
    from apcv_verify import _native

    rust = results["rust"]
    floor: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rust["crypto_floor"]:
        floor[(row["alg"], row["backend"], row["threads"])].append(row)
    out = [
        BEGIN,
        "## Core (loadtest/core_bench.py)",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"Linux {platform.release()}, Python {platform.python_version()}, native core "
        f"{_native.BUILD} build. Command: "
        "`python loadtest/core_bench.py --write docs/benchmarks.md --plot "
        "docs/benchmarks-scale.png` (`make bench`). "
        f"{results['rounds']} interleaved rounds; medians; load average at the end "
        f"{results['load_avg_end']:.2f}.",
        "",
        "### 1. Crypto floor (rust/core-bench `crypto_floor`)",
        "",
        "| alg | threads | backend | CPU µs / verify | verifies/s | cores used | vs ring (CPU) "
        "| load avg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (alg, backend, threads), rows in sorted(floor.items()):
        ring = _median(floor[(alg, "Ring", threads)], "cpu_us_per_verify")
        cpu_us = _median(rows, "cpu_us_per_verify")
        loads = ", ".join(f"{r['load_avg']:.1f}" for r in rows)
        rate = _median(rows, "verifies_per_s")
        out.append(
            f"| {alg} | {threads} | {backend} | {cpu_us:.1f} | {rate:.0f} "
            f"| {cpu_us * rate / 1e6:.2f} | {cpu_us / ring:.2f} | {loads} |"
        )
    inflate: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rust["inflate"]:
        inflate[row["case"]].append(row)
    first = rust["inflate"][0]
    out += [
        "",
        f"QR decoding of a {first['payload_bytes']}-byte payload ({first['qr_chars']} chars):",
        "",
        "| step | CPU µs |",
        "|---|---|",
        *(f"| {name} | {_median(rows, 'cpu_us'):.2f} |" for name, rows in inflate.items()),
    ]
    es256 = _median(floor[("Es256", "Ring", 1)], "cpu_us_per_verify")
    floor2 = 2 * es256
    cases = results["cases"]

    def cpu(label: str) -> float:
        return _median(cases[label], "cpu_us")

    def ps(label: str) -> float:
        return _median(cases[label], "per_s")

    out += [
        "",
        "### 2–3. Core from Python and the plain-Python peer",
        "",
        f"Corpus: {results['holders']} credentials × {results['repeat']} presentations each, "
        f"shuffled (an issuer signature is new once in {results['repeat']} presentations), all "
        f"ES256, NFC bytes or QR text, one reader; fresh verifier and replay store per case. "
        f"Floor = 2 × ES256 verify with ring, 1 thread = {floor2:.1f} µs.",
        "",
        "Cores used = CPU time / wall time of the measured loop: what the machine gave the case "
        "(on a shared machine, less than its threads).",
        "",
        "| case | threads | CPU µs / presentation | × floor | presentations/s | cores used "
        "| load avg |",
        "|---|---|---|---|---|---|---|",
    ]

    def cores(label: str) -> float:
        return _median([{"c": r["cpu_us"] * r["per_s"] / 1e6} for r in cases[label]], "c")

    for label, rows in cases.items():
        loads = ", ".join(f"{r['load_avg']:.1f}" for r in rows)
        out.append(
            f"| {label.rsplit('-t', 1)[0]} | {rows[0]['threads']} | {cpu(label):.1f} | "
            f"{cpu(label) / floor2:.2f} | {ps(label):.0f} | {cores(label):.2f} | {loads} |"
        )
    ratios = [
        ("core NFC batch, no cache / floor", cpu("core-nfc-100-none-t1") / floor2),
        ("core QR batch, no cache / floor", cpu("core-qr-100-none-t1") / floor2),
        ("core QR batch, cache / floor", cpu("core-qr-100-cache-t1") / floor2),
        (
            "cache speed-up, NFC batch (CPU)",
            cpu("core-nfc-100-none-t1") / cpu("core-nfc-100-cache-t1"),
        ),
        (
            "cache speed-up, NFC 1 item (CPU)",
            cpu("core-nfc-1-none-t1") / cpu("core-nfc-1-cache-t1"),
        ),
        (
            "2 / 1 threads, NFC batch, no cache (throughput)",
            ps("core-nfc-100-none-t2") / ps("core-nfc-100-none-t1"),
        ),
        (
            "2 / 1 threads, NFC batch, cache (throughput)",
            ps("core-nfc-100-cache-t2") / ps("core-nfc-100-cache-t1"),
        ),
        (
            "2 / 1 threads, QR batch, cache (throughput)",
            ps("core-qr-100-cache-t2") / ps("core-qr-100-cache-t1"),
        ),
        (
            "2 / 1 threads, NFC wire batch (`WireBatch`), cache (throughput)",
            ps("wire-nfc-100-cache-t2") / ps("wire-nfc-100-cache-t1"),
        ),
        ("cores used at 2 threads, NFC wire batch, cache", cores("wire-nfc-100-cache-t2")),
        ("cores used at 2 threads, NFC batch (`Scan`s), cache", cores("core-nfc-100-cache-t2")),
        (
            "wire batch / `Scan` batch, NFC, cache, 1 thread (CPU)",
            cpu("wire-nfc-100-cache-t1") / cpu("core-nfc-100-cache-t1"),
        ),
        (
            "2 / 1 threads, NFC batch, no cache (CPU per presentation: contention)",
            cpu("core-nfc-100-none-t2") / cpu("core-nfc-100-none-t1"),
        ),
        (
            "2 / 1 threads, NFC batch, cache (CPU per presentation: contention)",
            cpu("core-nfc-100-cache-t2") / cpu("core-nfc-100-cache-t1"),
        ),
        (
            "peer / core, NFC 1 item, cache (CPU)",
            cpu("peer-nfc-1-none-t1") / cpu("core-nfc-1-cache-t1"),
        ),
        (
            "peer / core, NFC batch, cache (CPU)",
            cpu("peer-nfc-1-none-t1") / cpu("core-nfc-100-cache-t1"),
        ),
        (
            "peer / core, QR batch, cache (CPU)",
            cpu("peer-qr-1-none-t1") / cpu("core-qr-100-cache-t1"),
        ),
        (
            "peer / core, NFC batch, no cache (CPU)",
            cpu("peer-nfc-1-none-t1") / cpu("core-nfc-100-none-t1"),
        ),
    ]
    out += ["", "| ratio | value |", "|---|---|", *(f"| {n} | {v:.2f} |" for n, v in ratios)]
    bt: dict[tuple[str, int], dict[int, dict[str, Any]]] = defaultdict(dict)
    for row in results["batch_threads"]:
        bt[(row["case"], row["threads"])][row["round"]] = row
    in_rust = list(bt[("per_call", 1)].values())
    out += [
        "",
        "One item per call against batches of 100 (NFC, cache, 1 thread), interleaved block by "
        "block (two fresh verifiers fed the same presentations, each block of 100 verified by "
        "one then the other): what a call costs apart from its items, at the same moments of "
        "the machine.",
        "",
        "| from | CPU µs / presentation, 1 per call | in batches of 100 | per call, median "
        "of the rounds' differences | load avg |",
        "|---|---|---|---|---|",
    ]
    for name, rows in (
        ("Python (`verify_batch([Scan])`)", results["per_call"]),
        ("Rust alone (`batch_threads`)", in_rust),
    ):
        if rows:
            loads = ", ".join(f"{r['load_avg']:.1f}" for r in rows if "load_avg" in r) or "–"
            out.append(
                f"| {name} | {_median(rows, 'one_cpu_us'):.1f} "
                f"| {_median(rows, 'batch_cpu_us'):.1f} "
                f"| {statistics.median(r['one_cpu_us'] - r['batch_cpu_us'] for r in rows):+.1f} "
                f"| {loads} |"
            )
    out += [
        "",
        "The same NFC corpus in Rust alone (rust/core-bench `batch_threads`: `verify_batch` in "
        "batches of 100 with the cache, on rayon pools of 1 and 2 threads), beside a perfectly "
        "parallel probe (SHA-256) that shows the cores the machine gave at that moment:",
        "",
        "| case | 2 / 1 threads throughput, per round | median | cores used at 2 threads "
        "| CPU µs / item, 1 → 2 threads |",
        "|---|---|---|---|---|",
    ]
    for case in ("core", "probe"):
        one, two = bt[(case, 1)], bt[(case, 2)]
        per_round = [two[r]["per_s"] / one[r]["per_s"] for r in sorted(one) if r in two]
        out.append(
            f"| {case} | {', '.join(f'{x:.2f}' for x in per_round)} "
            f"| {statistics.median(per_round):.2f} "
            f"| {statistics.median(r['cores_used'] for r in two.values()):.2f} "
            f"| {statistics.median(r['cpu_us'] for r in one.values()):.1f} → "
            f"{statistics.median(r['cpu_us'] for r in two.values()):.1f} |"
        )
    status, pop = results["status"]["status_sizes"], results["status"]["status_population"]
    out += [
        "",
        "### 5. Scale",
        "",
        "Status lists (2 bits per entry, 1 % revoked at random): one list per size, then a "
        "population held at once.",
        "",
        "| entries | bit size MB | signed MB | load s | resident MB | resident / bit size "
        "| lookup ns (from Python) |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['entries']:,} | {r['bit_bytes'] / 1e6:.2f} | {r['signed_bytes'] / 1e6:.2f} "
            f"| {r['load_s']:.3f} | {r['rss_bytes'] / 1e6:.2f} "
            f"| {r['rss_bytes'] / r['bit_bytes']:.2f} | {r['lookup_ns']:.0f} |"
            for r in status
        ),
        "",
        f"Population: {pop['entries']:,} entries in {pop['lists']} lists of {pop['per_list']:,}: "
        f"resident {pop['rss_bytes'] / 1e6:.1f} MB for {pop['bit_bytes'] / 1e6:.1f} MB of bits "
        f"({pop['rss_bytes'] / pop['bit_bytes']:.2f}×); load per list median "
        f"{pop['median_load_s']:.3f} s, worst {pop['max_load_s']:.3f} s.",
        "",
        "Memory replay store (rust/core-bench `replay_scale`, 1,000 readers):",
        "",
        "| live entries | resident MB | bytes / entry | lookup ns | fill s |",
        "|---|---|---|---|---|",
        *(
            f"| {r['live_entries']:,} | {r['rss_bytes'] / 1e6:.1f} | {r['bytes_per_entry']:.1f} "
            f"| {r['lookup_ns']:.0f} | {r['fill_s']:.2f} |"
            for r in rust["replay_scale"]
        ),
        "",
        "The same store at a steady rate (rust/core-bench `replay_steady`: new entries each"
        " second of a simulated clock, each kept its life; entries held at most after two lives;"
        " the longest single call and its second: the start of a growth, which allocates the new"
        " table, or the purge of a full store):",
        "",
        "| bound | new / s | life s | live entries | entries held | mean ns | calls over 1 ms"
        " | longest ms (second) |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['max_entries']:,} | {r['rate']:,} | {r['life_s']} | {r['live_entries']:,}"
            f" | {r['held_most']:,} | {r['mean_ns']:.0f} | {r['over_1ms']}"
            f" | {r['longest_ms']:.1f} ({r['longest_at_s']}) |"
            for r in rust["replay_steady"]
        ),
        "",
        "Trust lists (the issuer's key among the others; core CPU without the signature cache):",
        "",
        "| keys | signed KB | load ms | resident MB | core CPU µs / presentation |",
        "|---|---|---|---|---|",
        *(
            f"| {r['keys']} | {r['signed_bytes'] / 1e3:.1f} | {r['load_s'] * 1e3:.2f} "
            f"| {r['rss_bytes'] / 1e6:.2f} | {r['core_cpu_us']:.1f} |"
            for r in results["trust"]["trust_sizes"]
        ),
        "",
        "![scale](benchmarks-scale.png)",
        END,
    ]
    return "\n".join(out) + "\n"


def _write_section(path: Path, section: str) -> None:
    """Replace the core section of ``path`` (between the markers), or append it."""
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + section + tail
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    path.write_text(text)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    status = results["status"]["status_sizes"]
    ax = axes[0]
    xs = [r["entries"] / 1e6 for r in status]
    ax.plot(xs, [r["load_s"] * 1e3 for r in status], "o-", label="load ms")
    ax.plot(xs, [r["rss_bytes"] / 1e6 for r in status], "s-", label="resident MB")
    ax.plot(xs, [r["bit_bytes"] / 1e6 for r in status], "k--", label="bit size MB")
    ax.set(title="status list (2 bits/entry)", xlabel="million entries")
    ax.legend()
    replay = results["rust"]["replay_scale"]
    ax = axes[1]
    xs = [r["live_entries"] / 1e6 for r in replay]
    ax.plot(xs, [r["bytes_per_entry"] for r in replay], "o-", label="resident bytes / entry")
    ax.plot(xs, [r["lookup_ns"] / 10 for r in replay], "s-", label="lookup ns / 10")
    ax.axhline(64, color="k", linestyle="--", label="64 bytes")
    ax.set(title="memory replay store", xlabel="million live entries")
    ax.legend()
    trust = results["trust"]["trust_sizes"]
    ax = axes[2]
    xs = [r["keys"] for r in trust]
    ax.plot(xs, [r["load_s"] * 1e3 for r in trust], "o-", label="load ms")
    ax.plot(xs, [r["core_cpu_us"] for r in trust], "s-", label="core CPU µs / presentation")
    ax.set(title="trust list", xlabel="keys", xscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    main()
