"""``apcv-verify scan``: verify scans from QR images, text files of QR strings or stdin.

Each input is read in turn: a PNG or JPEG file is an image whose QR codes are decoded with
zxing-cpp (every QR code in it is one scan; Pillow opens it; both come with the ``scan``
extra, ``pip install 'apcv-verify[scan]'``); any other file, or ``-`` for stdin, is text with
one QR string per line (blank lines skipped). No input at all reads stdin.

The scans go to the verifier through the client SDK (:mod:`apcv_verify.client`): with
``VerifyBatch`` in chunks of ``--batch``, in input order (so replay is judged in that order),
or, with ``--spool FILE``, through an :class:`~apcv_verify.client.EdgeBatcher` over
``VerifyStream`` that keeps every scan in that SQLite spool until its answer is stored: a run
cut short leaves its unanswered scans there, and the next run on the same spool sends them
first and prints their answers with the source ``(spool)``.

The answers are printed as a table, or as JSON lines with ``--format jsonl``: source,
``request_id``, decision, reason, ``duplicate`` and detail — no person (``--full`` adds the
whole verdict, as the protobuf JSON mapping). An input that cannot be read is reported on
stderr by its file name and line only, never with what it contains, and the others are
still verified. Exit status: 0 when every input was read and verified (whatever the
decisions), 1 when an input could not be read or the verifier could not be reached, 2 for a
usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

from .progress import add_progress_flag, progress_bar

__all__ = ["ImageError", "ScanInput", "decode_image", "read_inputs", "register"]

_PROG = "apcv-verify scan"
_EXIT_FAILED = 1
_EXIT_USAGE = 2

#: File signatures of the image formats read (PNG: RFC 2083 §3.1; JPEG: SOI marker).
_IMAGE_MAGIC: Final = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")
_IMAGE_SUFFIXES: Final = frozenset({".png", ".jpg", ".jpeg"})
_IMAGE_FORMATS: Final = frozenset({"PNG", "JPEG", "MPO"})  # MPO: a phone camera's JPEG
#: Pixels above which an image is refused (Pillow's decompression-bomb guard, made an error).
MAX_IMAGE_PIXELS: Final = 64_000_000


class ImageError(Exception):
    """An input that gives no scan; the message names the file, never its content."""


@dataclass(frozen=True)
class ScanInput:
    """One scan read from an input: where it comes from (file, line or QR code number) and
    the QR text."""

    source: str
    qr_text: str

    def __repr__(self) -> str:  # never the scan itself
        return f"ScanInput({self.source!r})"


def _is_image(path: Path) -> bool:
    if path.suffix.lower() in _IMAGE_SUFFIXES:
        return True
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError:
        return False
    return head.startswith(_IMAGE_MAGIC)


def decode_image(path: Path) -> list[str]:
    """The text of every QR code in the PNG or JPEG image at ``path``, in zxing-cpp's order.
    Raises :class:`ImageError` for a file that is not such an image or holds no QR code."""
    try:
        import zxingcpp
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ImageError(
            f"{path}: reading images needs the scan extra (pip install 'apcv-verify[scan]')"
        ) from None
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with Image.open(path) as opened:
            if opened.format not in _IMAGE_FORMATS:
                raise ImageError(f"{path}: not a PNG or JPEG image")
            opened.load()
            image = opened.convert("L")
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"{path}: image over {MAX_IMAGE_PIXELS} pixels") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a readable PNG or JPEG image") from None
    except OSError as error:
        if error.errno is not None:  # the file itself: missing, a directory, no permission
            raise
        raise ImageError(f"{path}: not a readable PNG or JPEG image (corrupt data)") from None
    except (ValueError, SyntaxError):  # what Pillow raises for some corrupt headers
        raise ImageError(f"{path}: not a readable PNG or JPEG image (corrupt data)") from None
    codes = zxingcpp.read_barcodes(
        image, formats=zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCode)
    )
    texts = [code.text for code in codes if code.text]
    if not texts:
        raise ImageError(f"{path}: no QR code found in the image")
    return texts


def _read_lines(name: str, stream: TextIO) -> list[ScanInput]:
    found = []
    for number, line in enumerate(stream, start=1):
        text = line.strip()
        if text:
            found.append(ScanInput(f"{name}:{number}", text))
    return found


def read_inputs(
    inputs: Sequence[str], stdin: TextIO | None = None
) -> tuple[list[ScanInput], list[str]]:
    """The scans of ``inputs`` (paths, or ``-`` for ``stdin``) in order, and one error
    message per input that gave none."""
    scans: list[ScanInput] = []
    errors: list[str] = []
    for name in inputs or ["-"]:
        if name == "-":
            scans += _read_lines("stdin", stdin or sys.stdin)
            continue
        path = Path(name)
        try:
            if _is_image(path):
                texts = decode_image(path)
                if len(texts) == 1:
                    scans.append(ScanInput(name, texts[0]))
                else:
                    scans += [ScanInput(f"{name}#{n}", t) for n, t in enumerate(texts, 1)]
                continue
            with path.open(encoding="utf-8") as handle:
                scans += _read_lines(name, handle)
        except ImageError as error:
            errors.append(str(error))
        except UnicodeDecodeError:
            errors.append(f"{name}: neither a PNG or JPEG image nor UTF-8 text")
        except OSError as error:
            errors.append(f"{name}: {error.strerror or type(error).__name__}")
    return scans, errors


# --- verification -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    source: str
    verdict: Any  # verifier_pb2.Verdict


async def _verify_direct(args: argparse.Namespace, scans: list[ScanInput], bar: Any) -> list[_Row]:
    from ..client import VerifierClient, make_scan

    rows: list[_Row] = []
    async with VerifierClient(args.target, tls=_tls(args), timeout=args.timeout) as client:
        for start in range(0, len(scans), args.batch):
            chunk = scans[start : start + args.batch]
            requests = [make_scan(s.qr_text, reader_id=args.reader_id) for s in chunk]
            verdicts = await client.verify_batch(requests, max_batch=args.batch)
            rows += [_Row(s.source, v) for s, v in zip(chunk, verdicts, strict=True)]
            bar.update(len(chunk))
    return rows


async def _verify_spooled(args: argparse.Namespace, scans: list[ScanInput], bar: Any) -> list[_Row]:
    from ..client import Answer, EdgeBatcher

    sources: dict[str, str] = {}
    answers: dict[str, Answer] = {}

    def on_answer(answer: Answer) -> None:
        answers[answer.request_id] = answer
        if answer.request_id in sources:
            bar.update(1)

    async with EdgeBatcher(
        args.target,
        spool=args.spool,
        reader_id=args.reader_id,
        tls=_tls(args),
        max_batch=args.batch,
        on_answer=on_answer,
    ) as batcher:
        for scan in scans:
            sources[await batcher.submit(scan.qr_text)] = scan.source
        await batcher.drain(timeout=args.timeout * max(1, len(scans) // args.batch + 1))
    # Answers to scans of an earlier run on this spool first, then this run's in input order.
    earlier = [_Row("(spool)", a.verdict) for rid, a in answers.items() if rid not in sources]
    return earlier + [_Row(source, answers[rid].verdict) for rid, source in sources.items()]


def _tls(args: argparse.Namespace) -> Any:
    if not (args.ca or args.cert or args.key):
        return None
    from ..client import TLSConfig

    return TLSConfig.from_files(
        ca=args.ca, cert=args.cert, key=args.key, server_name=args.server_name
    )


# --- output -----------------------------------------------------------------------------------


def _fields(row: _Row) -> dict[str, Any]:
    from .._proto.apcv.verify.v1 import verifier_pb2

    verdict = row.verdict
    return {
        "source": row.source,
        "request_id": verdict.request_id,
        # docs/profile.md §8 codes: the enum names less their prefix.
        "decision": verifier_pb2.Decision.Name(verdict.decision).removeprefix("DECISION_"),
        "reason": verifier_pb2.Reason.Name(verdict.reason).removeprefix("REASON_"),
        "duplicate": verdict.duplicate,
        "detail": verdict.detail,
    }


def _print_jsonl(rows: Iterable[_Row], full: bool, out: TextIO) -> None:
    from google.protobuf.json_format import MessageToDict

    for row in rows:
        line = _fields(row)
        if full:
            line["verdict"] = MessageToDict(row.verdict, preserving_proto_field_name=True)
        out.write(json.dumps(line, ensure_ascii=False) + "\n")


def _print_table(rows: Sequence[_Row], out: TextIO) -> None:
    lines = [_fields(row) for row in rows]
    width = max([len("source"), *(len(line["source"]) for line in lines)])
    out.write(f"{'source':<{width}}  {'decision':<9} {'reason':<31} dup  detail\n")
    for line in lines:
        duplicate = "yes" if line["duplicate"] else "-"
        out.write(
            f"{line['source']:<{width}}  {line['decision']:<9} {line['reason']:<31}"
            f" {duplicate:<4} {line['detail']}\n"
        )
    accepted = sum(1 for line in lines if line["decision"] == "ACCEPTED")
    out.write(f"{len(lines)} scans: {accepted} accepted, {len(lines) - accepted} rejected\n")


def _scan(args: argparse.Namespace) -> int:
    from ..client import VerifierError

    if args.batch < 1 or args.timeout <= 0:
        print(f"{_PROG}: error: --batch and --timeout must be positive", file=sys.stderr)
        return _EXIT_USAGE
    scans, errors = read_inputs(args.inputs)
    for message in errors:
        print(f"{_PROG}: {message}", file=sys.stderr)
    rows: list[_Row] = []
    if scans or args.spool:
        verify = _verify_spooled if args.spool else _verify_direct
        try:
            with progress_bar(len(scans), "verified", args.progress) as bar:
                rows = asyncio.run(verify(args, scans, bar))
        except VerifierError as error:
            print(f"{_PROG}: the verifier did not answer: {error}", file=sys.stderr)
            return _EXIT_FAILED
        except TimeoutError:
            print(
                f"{_PROG}: no answer in time: the unanswered scans stay in {args.spool}",
                file=sys.stderr,
            )
            return _EXIT_FAILED
    if args.format == "jsonl":
        _print_jsonl(rows, args.full, sys.stdout)
    elif rows:
        _print_table(rows, sys.stdout)
    if not scans and not errors and not rows:
        print(f"{_PROG}: no scan in the input", file=sys.stderr)
    return _EXIT_FAILED if errors else 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``scan`` command to the ``apcv-verify`` sub-command parsers."""
    parser = subparsers.add_parser(
        "scan",
        help="verify scans from QR images (PNG/JPEG), text files of QR strings or stdin",
        description=(
            "Verify scans through the client SDK. Each INPUT is a PNG or JPEG image (every QR"
            " code in it is a scan) or a text file with one QR string per line; '-' or no"
            " INPUT reads stdin."
        ),
    )
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="image or text file, or -")
    parser.add_argument(
        "--reader-id", required=True, help="this reader's id (replay is per reader)"
    )
    parser.add_argument(
        "--target", default="127.0.0.1:50051", help="the verifier, HOST:PORT (default %(default)s)"
    )
    parser.add_argument("--ca", help="TLS: PEM file of the CA of the verifier's certificate")
    parser.add_argument("--cert", help="mTLS: PEM client certificate (its CN is the caller id)")
    parser.add_argument("--key", help="mTLS: PEM private key of --cert")
    parser.add_argument("--server-name", help="TLS: name to check in the server's certificate")
    parser.add_argument(
        "--spool",
        help="SQLite spool file: scans kept until answered, over VerifyStream (EdgeBatcher)",
    )
    parser.add_argument(
        "--batch", type=int, default=50, help="scans per VerifyBatch call or stream group (50)"
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per call, retries included (30)"
    )
    parser.add_argument(
        "--format", choices=["table", "jsonl"], default="table", help="output (default: table)"
    )
    parser.add_argument(
        "--full", action="store_true", help="jsonl: add the whole verdict (with the person)"
    )
    add_progress_flag(parser)
    parser.set_defaults(func=_scan)
    return parser
