"""``apcv-verify scan``: QR images rendered with the issuer toolkit (one made to look like a
photo of a phone: scaled, rotated, noisy, JPEG), text files and stdin, scanned back through a
real server; unreadable inputs reported without their content."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import segno
from apcv_verify.issuer import DemoPKI, qr_text

from .conftest import ServerProcess

PIL = pytest.importorskip("PIL", reason="the scan extra (Pillow, zxing-cpp) is not installed")
pytest.importorskip("zxingcpp", reason="the scan extra (Pillow, zxing-cpp) is not installed")
from PIL import Image, ImageChops, ImageFilter  # noqa: E402

pytestmark = pytest.mark.slow  # a server process and several CLI runs


def scan(
    server: ServerProcess, *args: str, reader: str = "desk-1", stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "apcv_verify.cli", "scan", "--target", server.address,
         "--reader-id", reader, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip


def answers(reply: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    lines = [json.loads(line) for line in reply.stdout.splitlines()]
    return {line["source"]: line for line in lines}


def render_png(text: str, path: Path) -> Path:
    segno.make(text, micro=False).save(str(path), kind="png", scale=4)
    return path


def photograph(png: Path, path: Path) -> Path:
    """``png`` as a phone camera might see it: scaled up, rotated 4 degrees on a grey
    background, blurred a little, with Gaussian noise, saved as a lossy JPEG."""
    code = Image.open(png).convert("L")
    code = code.resize((code.width * 17 // 10, code.height * 17 // 10), Image.Resampling.BILINEAR)
    scene = Image.new("L", (code.width + 160, code.height + 120), 225)
    scene.paste(code, (90, 50))
    scene = scene.rotate(4, resample=Image.Resampling.BICUBIC, fillcolor=225, expand=True)
    scene = scene.filter(ImageFilter.GaussianBlur(0.8))
    noise = Image.effect_noise(scene.size, 40)  # centred on 128
    scene = ImageChops.add(scene, noise, scale=1.0, offset=-128)
    scene.convert("RGB").save(path, "JPEG", quality=70)
    return path


def test_images_are_decoded_and_verified(
    pki: DemoPKI, server: ServerProcess, tmp_path: Path
) -> None:
    now = int(time.time())
    samples = pki.samples(now=now)
    images = [render_png(qr_text(samples[name]), tmp_path / f"{name}.png") for name in samples]
    photo_png = render_png(qr_text(pki.present("family", ben=1, iat=now)), tmp_path / "child.png")
    photo = photograph(photo_png, tmp_path / "photo.jpg")
    # The issuer CLI's own PNG output scans back too.
    made = subprocess.run(
        [sys.executable, "-m", "apcv_verify.cli", "issue", "presentation", "--pki",
         str(pki.directory), "--holder", "corsica", "--png", str(tmp_path / "issued.png")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert made.stdout.startswith("APCV1:")

    reply = scan(
        server, "--format", "jsonl", *map(str, images), str(photo), str(tmp_path / "issued.png")
    )
    assert reply.returncode == 0, reply.stderr
    got = {
        Path(source).stem: (line["decision"], line["reason"])
        for source, line in answers(reply).items()
    }
    assert got == {
        "accepted": ("ACCEPTED", "OK"),
        "expired": ("REJECTED", "CREDENTIAL_EXPIRED"),
        "revoked": ("REJECTED", "REVOKED"),
        "replayed": ("ACCEPTED", "OK"),
        "tampered": ("REJECTED", "BAD_DEVICE_SIGNATURE"),
        "wrong_issuer": ("REJECTED", "UNKNOWN_ISSUER"),
        "photo": ("ACCEPTED", "OK"),
        "issued": ("ACCEPTED", "OK"),
    }
    # The same code at another reader: replayed; again at the first reader: a duplicate.
    replayed = str(tmp_path / "replayed.png")
    again = answers(scan(server, "--format", "jsonl", replayed, reader="desk-2"))
    assert again[replayed]["reason"] == "REPLAYED"
    same = answers(scan(server, "--format", "jsonl", "--full", str(photo)))[str(photo)]
    assert (same["decision"], same["duplicate"]) == ("ACCEPTED", True)
    assert same["verdict"]["person"]["rank"] == 1  # --full: the whole verdict


def test_text_files_and_stdin_in_a_table(
    pki: DemoPKI, server: ServerProcess, tmp_path: Path
) -> None:
    now = int(time.time())
    codes = [qr_text(pki.present(holder, iat=now)) for holder in ("alice", "lunar", "revoked")]
    listing = tmp_path / "codes.txt"
    listing.write_text(f"{codes[0]}\n\n  {codes[1]}  \nnot a code\n")
    reply = scan(server, str(listing), "-", stdin=codes[2] + "\n")
    assert reply.returncode == 0, reply.stderr
    rows = reply.stdout.splitlines()
    assert rows[0].split() == ["source", "decision", "reason", "dup", "detail"]
    table = {row.split()[0]: row.split()[1:3] for row in rows[1:-1]}
    assert table == {
        f"{listing}:1": ["ACCEPTED", "OK"],
        f"{listing}:3": ["ACCEPTED", "OK"],
        f"{listing}:4": ["REJECTED", "MALFORMED"],
        "stdin:1": ["REJECTED", "REVOKED"],
    }
    assert rows[-1] == "4 scans: 2 accepted, 2 rejected"
    for code in codes:  # a table of decisions, not of scans
        assert code not in reply.stdout


def test_unreadable_inputs_are_named_without_their_content(
    pki: DemoPKI, server: ServerProcess, tmp_path: Path
) -> None:
    secret = "184127505612355"  # a NIR-shaped value that must never be echoed
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + secret.encode() * 20)
    cut = tmp_path / "cut.jpg"
    photograph(render_png(qr_text(pki.present("alice")), tmp_path / "a.png"), cut)
    cut.write_bytes(cut.read_bytes()[:200])  # a JPEG header, then nothing
    blank = tmp_path / "blank.png"
    Image.new("RGB", (120, 120), "white").save(blank)
    gif = tmp_path / "code.png"
    Image.new("RGB", (50, 50), "white").save(gif, "GIF")  # named .png, but a GIF
    binary = tmp_path / "scan.bin"
    binary.write_bytes(b"\xff\xfe" + secret.encode("utf-16-le"))
    good = render_png(qr_text(pki.present("alice")), tmp_path / "good.png")
    inputs = [broken, cut, blank, gif, binary, tmp_path / "missing.png", good]

    reply = scan(server, "--format", "jsonl", *map(str, inputs))
    assert reply.returncode == 1
    assert answers(reply)[str(good)]["reason"] == "OK"  # the rest is still verified
    messages = reply.stderr.splitlines()
    assert messages == [
        f"apcv-verify scan: {broken}: not a readable PNG or JPEG image (corrupt data)",
        f"apcv-verify scan: {cut}: not a readable PNG or JPEG image (corrupt data)",
        f"apcv-verify scan: {blank}: no QR code found in the image",
        f"apcv-verify scan: {gif}: not a PNG or JPEG image",
        f"apcv-verify scan: {binary}: neither a PNG or JPEG image nor UTF-8 text",
        f"apcv-verify scan: {tmp_path / 'missing.png'}: No such file or directory",
    ]
    assert secret not in reply.stderr


def test_spooled_scans_go_over_the_stream_and_stay_in_the_spool(
    pki: DemoPKI, server: ServerProcess, tmp_path: Path
) -> None:
    now = int(time.time())
    codes = [qr_text(pki.present("alice", iat=now)) for _ in range(60)]
    codes.append(codes[0])  # the same code twice from this reader: a duplicate
    spool = tmp_path / "reader.db"
    reply = scan(
        server, "--spool", str(spool), "--format", "jsonl", "--batch", "16", "--progress", "-",
        stdin="\n".join(codes) + "\n",
    )  # fmt: skip
    assert reply.returncode == 0, reply.stderr
    lines = [json.loads(line) for line in reply.stdout.splitlines()]
    assert [line["source"] for line in lines] == [f"stdin:{n}" for n in range(1, 62)]
    assert all(line["reason"] == "OK" for line in lines)
    assert [line["duplicate"] for line in lines].count(True) == 1 and lines[-1]["duplicate"]
    assert "verified: 100%" in reply.stderr  # the progress bar, asked for
    with sqlite3.connect(spool) as db:
        states = db.execute("SELECT state, count(*) FROM scans GROUP BY state").fetchall()
    assert states == [("delivered", 61)]


def test_an_unreachable_verifier_is_one_line_and_status_1(tmp_path: Path) -> None:
    code = "APCV1:NCF" + "0" * 40
    reply = subprocess.run(
        [sys.executable, "-m", "apcv_verify.cli", "scan", "--target", "127.0.0.1:1",
         "--reader-id", "desk-1", "--timeout", "2"],
        input=code + "\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert reply.returncode == 1
    assert reply.stderr.startswith("apcv-verify scan: the verifier did not answer: UNAVAILABLE")
    assert code not in reply.stderr and reply.stdout == ""
