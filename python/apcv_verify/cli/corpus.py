"""``apcv-verify corpus``: a load-test corpus with its PKI, lists and expected decisions.

Thin argparse layer over :mod:`apcv_verify.issuer.corpus` (what it writes and why is said
there). Like ``issue``, it loads the issuer toolkit only when it runs, never to serve.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from .progress import add_progress_flag, progress_bar

__all__ = ["register"]

_PROG = "apcv-verify corpus"
_EXIT_USAGE = 2


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a positive integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError("expected a positive integer")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number in [0, 1)") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError("expected a number in [0, 1)")
    return value


def serve_command(directory: Path, manifest: dict[str, Any]) -> str:
    """The ``apcv-verify serve`` command that trusts the corpus's PKI."""
    words = [
        "apcv-verify", "serve", "--listen", "127.0.0.1:50051",
        "--anchor", str(directory / manifest["anchor"]),
        "--trust-list", str(directory / manifest["trust_list"]),
        *[w for path in manifest["status_lists"] for w in ("--status-list", str(directory / path))],
        "--allow-test-identities",
    ]  # fmt: skip
    return shlex.join(words)


def _corpus(args: argparse.Namespace) -> int:
    from ..issuer import corpus  # the toolkit is loaded by this command only, never to serve

    out = Path(args.out)
    if (out / corpus.CORPUS_MANIFEST).exists() and not args.force:
        print(
            f"{_PROG}: error: {out}: a corpus already exists (use --force to replace it)",
            file=sys.stderr,
        )
        return _EXIT_USAGE
    try:
        mix = corpus.parse_mix(args.mix) if args.mix is not None else corpus.DEFAULT_MIX
        with progress_bar(args.count, "corpus", args.progress) as bar:
            summary = corpus.make_corpus(
                out,
                count=args.count,
                seed=args.seed,
                mix=mix,
                repeat_rate=args.repeat_rate,
                readers=args.readers,
                progress=bar.update,
            )
    except corpus.CorpusError as error:
        print(f"{_PROG}: error: {error}", file=sys.stderr)
        return _EXIT_USAGE
    except OSError as error:
        print(f"{_PROG}: error: {error.filename or ''}: {error.strerror}", file=sys.stderr)
        return _EXIT_USAGE
    manifest = summary.manifest
    valid_until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(manifest["valid_until"]))
    print(f"corpus of {manifest['count']} scans written to {out} (seed {manifest['seed']})")
    print(f"  scans:        {summary.scans_path}")
    print(f"  plan sha256:  {manifest['plan_sha256']}")
    achieved, asked = manifest["repeat_rate_achieved"], manifest["repeat_rate"]
    print(
        f"  credentials:  {manifest['credentials']} (repeat rate {achieved:.1%}, asked {asked:.0%})"
    )
    print(f"  send before:  {valid_until} (presentations live 300 s)")
    width = max(len(kind) for kind in manifest["kinds"])
    for kind, count in manifest["kinds"].items():
        expected = corpus.KINDS[kind]
        print(f"  {kind:<{width}}  {count:>8}  -> {expected.decision} {expected.reason}")
    print(f"serve it with:\n  {serve_command(out, manifest)}")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``corpus`` command to the ``apcv-verify`` sub-command parsers."""
    parser = subparsers.add_parser(
        "corpus",
        help="write a load-test corpus: scans, their expected decisions, the PKI and lists",
        description=(
            "A reproducible mix of scans (mostly valid; expired, revoked, suspended, replayed,"
            " tampered, unknown issuer, delegated, with AMC, beneficiaries, malformed noise),"
            " each with the decision the verifier must give, and the trust anchor, trust list"
            " and status lists to serve it with. loadtest/locustfile.py sends it."
        ),
    )
    parser.add_argument("--out", required=True, help="directory to write the corpus to")
    parser.add_argument("--count", type=_positive, required=True, help="number of scans")
    parser.add_argument(
        "--mix",
        help=(
            "relative weights, KIND=WEIGHT,… over valid, beneficiary, amc, delegated, replayed,"
            " expired, revoked, suspended, tampered, unknown_issuer, malformed (unnamed kinds:"
            " 0; default: 72%% valid and a few of each other kind)"
        ),
    )
    parser.add_argument("--seed", type=int, default=0, help="the plan's seed (default 0)")
    parser.add_argument(
        "--repeat-rate",
        type=_rate,
        default=0.3,
        help="share of scans presenting a credential already presented (default 0.3)",
    )
    parser.add_argument(
        "--readers", type=_positive, default=8, help="readers the scans come from (default 8)"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing corpus")
    add_progress_flag(parser)
    parser.set_defaults(func=_corpus)
    return parser
