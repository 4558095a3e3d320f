"""``apcv-verify issue``: demo PKIs, presentations (QR text, PNG, SVG), status and trust lists.

Thin argparse layer over :mod:`apcv_verify.issuer`. Like the toolkit it never needs the native
verifier. Errors go to stderr with exit code 2 and never echo personal data (holder identities,
credential contents): only file names, holder directory names and fixed phrases.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .. import issuer

__all__ = ["register"]

_PROG = "apcv-verify issue"
_EXIT_USAGE = 2

#: Profile §2: the presentation lifetime may not exceed 300 s.
_MAX_PRESENTATION_LIFETIME = 300


class IssueError(Exception):
    """A user-facing problem; the message must not contain personal data."""


def _epoch(text: str) -> int:
    """Seconds since the epoch, given as an integer or an ISO 8601 date-time with offset."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected seconds since the epoch or an ISO 8601 date-time"
        ) from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError("an ISO 8601 date-time needs an offset, e.g. Z or +01:00")
    return int(moment.timestamp())


def _hex_bytes(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected hexadecimal bytes") from None


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a non-negative integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError("expected a non-negative integer")
    return value


def _open_pki(directory: str) -> issuer.DemoPKI:
    from .. import issuer  # the toolkit is loaded by the issue commands only, never to serve

    if not (Path(directory) / "pki.json").is_file():
        raise IssueError(f"{directory}: no pki.json here (make one with `issue pki --out DIR`)")
    try:
        return issuer.DemoPKI.load(directory)
    except (OSError, ValueError, KeyError) as error:
        raise IssueError(
            f"{directory}: cannot load the demo PKI ({type(error).__name__})"
        ) from None


def _handle_errors(
    handler: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """Turn expected failures into one line on stderr and exit code 2 (no traceback, no data)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except IssueError as error:
            print(f"{_PROG}: error: {error}", file=sys.stderr)
        except OSError as error:
            # strerror and filename only: no contents of any file.
            print(f"{_PROG}: error: {error.filename or ''}: {error.strerror}", file=sys.stderr)
        return _EXIT_USAGE

    return run


# --- handlers ------------------------------------------------------------------------------------


def _issue_pki(args: argparse.Namespace) -> int:
    from .. import issuer  # the toolkit is loaded by the issue commands only, never to serve

    out = Path(args.out)
    if (out / "pki.json").exists() and not args.force:
        raise IssueError(f"{out}: a demo PKI already exists (use --force to replace it)")
    pki = issuer.DemoPKI.create(out, now=args.now, test_identities=not args.real_oid)
    print(f"demo PKI written to {out}")
    print(f"  trust anchor:  {out / 'anchor.pem'} (kid {pki.anchor.kid.hex()})")
    print(f"  trust list:    {pki.trust_list_path} (seq {pki.trust_list_seq})")
    for uri, path in pki.status_list_paths.items():
        print(f"  status list:   {path} ({uri})")
    print(f"  holders:       {', '.join(pki.holders)}")
    return 0


def _issue_presentation(args: argparse.Namespace) -> int:
    from .. import issuer  # the toolkit is loaded by the issue commands only, never to serve

    pki = _open_pki(args.pki)
    if args.holder not in pki.holders:
        raise IssueError(f"unknown holder name (known: {', '.join(sorted(pki.holders))})")
    lifetime = issuer.DEFAULT_PRESENTATION_LIFETIME if args.lifetime is None else args.lifetime
    if lifetime > _MAX_PRESENTATION_LIFETIME:
        print(f"{_PROG}: warning: lifetime over {_MAX_PRESENTATION_LIFETIME} s", file=sys.stderr)
    iat = args.iat if args.iat is not None else int(time.time())
    signer, delegation = None, None
    if args.delegate or args.who is not None:
        # A delegate's phone presents: a fresh key, a delegation scoped to this ben and use.
        signer, delegation = pki.delegate(
            args.holder, ben=[args.ben], use=[args.use], who=args.who, now=iat
        )
    attestations = [pki.amc_attestation(args.holder, now=iat)] if args.amc else None
    presentation = pki.present(
        args.holder,
        ben=args.ben,
        use=args.use,
        iat=iat,
        exp=iat + lifetime,
        aud=args.aud,
        nonce=args.nonce,
        amc=attestations,
        dlg=delegation,
        signer=signer,
    )
    if args.nfc is not None:
        Path(args.nfc).write_bytes(presentation)
    text = issuer.qr_text(presentation)
    if args.png or args.svg:
        import segno

        # Base45 and the "APCV1:" prefix are all in the QR alphanumeric set (RFC 9285 §4).
        code = segno.make(text, micro=False)
        if args.png:
            code.save(args.png, kind="png", scale=4)
        if args.svg:
            code.save(args.svg, kind="svg", scale=4)
    print(text)
    return 0


def _issue_status_list(args: argparse.Namespace) -> int:
    from .. import issuer  # the toolkit is loaded by the issue commands only, never to serve

    pki = _open_pki(args.pki)
    changes = [
        *((index, issuer.STATUS_INVALID) for index in args.revoke),
        *((index, issuer.STATUS_SUSPENDED) for index in args.suspend),
        *((index, issuer.STATUS_VALID) for index in args.reinstate),
    ]
    if not changes:
        raise IssueError("nothing to do: give --revoke, --suspend or --reinstate")
    uri = issuer.DEMO_STATUS_URI if args.uri is None else args.uri
    if uri not in pki.manifest["status_lists"]:
        raise IssueError(f"unknown status list URI (known: {', '.join(pki.status_list_paths)})")
    try:
        pki.set_statuses(dict(changes), uri=uri, now=args.now)
    except (IndexError, ValueError) as error:
        raise IssueError(str(error)) from None
    print(pki.status_list_paths[uri])
    return 0


def _issue_trust_list(args: argparse.Namespace) -> int:
    pki = _open_pki(args.pki)
    pki.new_trust_list(seq=args.seq, now=args.now)
    print(f"{pki.trust_list_path} (seq {pki.trust_list_seq})")
    return 0


# --- parser --------------------------------------------------------------------------------------


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``issue`` command to the ``apcv-verify`` sub-command parsers.

    Each leaf sets ``func``: a callable taking the parsed ``args`` and returning the exit code.
    """
    issue = subparsers.add_parser(
        "issue", help="issuer toolkit: demo PKI, presentations, status and trust lists"
    )

    def print_usage(_args: argparse.Namespace) -> int:
        issue.print_help(sys.stderr)
        return _EXIT_USAGE

    issue.set_defaults(func=print_usage)
    commands = issue.add_subparsers(
        dest="issue_command", metavar="{pki,presentation,status-list,trust-list}"
    )

    pki = commands.add_parser("pki", help="create a demonstration PKI in a directory")
    pki.add_argument("--out", required=True, help="directory to write (created if needed)")
    pki.add_argument("--now", type=_epoch, help="creation time (epoch seconds or ISO 8601)")
    pki.add_argument("--force", action="store_true", help="replace an existing demo PKI")
    pki.add_argument(
        "--real-oid",
        action="store_true",
        help="use the INS-NIR OID instead of the demonstration OID (fictional numbers!)",
    )
    pki.set_defaults(func=_handle_errors(_issue_pki))

    presentation = commands.add_parser(
        "presentation", help="print a holder's presentation as QR text (APCV1:...)"
    )
    presentation.add_argument("--pki", required=True, help="demo PKI directory")
    presentation.add_argument("--holder", default="alice", help="holder name (default alice)")
    presentation.add_argument(
        "--use", default="care", help="purpose: care, dmp, dp or auth (default care)"
    )
    presentation.add_argument(
        "--ben", type=_non_negative, default=0, help="beneficiary rank (0 = holder)"
    )
    presentation.add_argument("--aud", help="reader id the presentation is bound to")
    presentation.add_argument("--nonce", type=_hex_bytes, help="reader challenge, hex")
    presentation.add_argument("--iat", type=_epoch, help="issue time (default now)")
    presentation.add_argument(
        "--lifetime",
        type=_non_negative,
        help="seconds until exp (default 120)",
    )
    presentation.add_argument(
        "--delegate",
        action="store_true",
        help="present from a new delegate's phone with a delegation for this --ben and --use",
    )
    presentation.add_argument("--who", help="the delegation's display label (implies --delegate)")
    presentation.add_argument(
        "--amc",
        action="store_true",
        help="attach a demo AMC attestation covering everyone in the credential",
    )
    presentation.add_argument("--png", help="also write the QR code as PNG to this file")
    presentation.add_argument("--svg", help="also write the QR code as SVG to this file")
    presentation.add_argument("--nfc", help="also write the raw presentation bytes (NFC form)")
    presentation.set_defaults(func=_handle_errors(_issue_presentation))

    status_list = commands.add_parser(
        "status-list", help="change entries of a status list and re-sign it"
    )
    status_list.add_argument("--pki", required=True, help="demo PKI directory")
    status_list.add_argument("--uri", help="status list URI (default the AMO list)")
    for flag, meaning in (
        ("--revoke", "revoked (1)"),
        ("--suspend", "suspended (2)"),
        ("--reinstate", "valid (0)"),
    ):
        status_list.add_argument(
            flag,
            type=_non_negative,
            action="append",
            default=[],
            metavar="IDX",
            help=f"mark index IDX {meaning}; repeatable",
        )
    status_list.add_argument("--now", type=_epoch, help="issue time of the new list")
    status_list.set_defaults(func=_handle_errors(_issue_status_list))

    trust_list = commands.add_parser("trust-list", help="re-sign the trust list with a new seq")
    trust_list.add_argument("--pki", required=True, help="demo PKI directory")
    trust_list.add_argument(
        "--seq", type=_non_negative, help="sequence number (default: current + 1)"
    )
    trust_list.add_argument("--now", type=_epoch, help="issue time of the new list")
    trust_list.set_defaults(func=_handle_errors(_issue_trust_list))
    return issue
