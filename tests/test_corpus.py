"""``apcv-verify corpus`` and :mod:`apcv_verify.issuer.corpus`: the plan is reproducible, the
mix and repeat rate are as stated, replayed codes come in ordered pairs, and a real server
gives every item the decision the corpus expects."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from apcv_verify.client import Decision, Reason, VerifierClient, make_scan
from apcv_verify.issuer import CorpusError, make_corpus, parse_mix, read_scans
from apcv_verify.issuer.corpus import KINDS

from .conftest import start_server, stop_server


def plan(directory: Path) -> list[tuple[object, ...]]:
    items = list(read_scans(directory))
    position = {item["request_id"]: n for n, item in enumerate(items)}
    return [
        (i["kind"], i["reader_id"], i.get("credential"), position.get(i.get("after", "")))
        for i in items
    ]


def test_the_same_seed_gives_the_same_plan(tmp_path: Path) -> None:
    first = make_corpus(tmp_path / "a", count=120, seed=11)
    second = make_corpus(tmp_path / "b", count=120, seed=11)
    other = make_corpus(tmp_path / "c", count=120, seed=12)
    assert first.manifest["plan_sha256"] == second.manifest["plan_sha256"]
    assert plan(first.directory) == plan(second.directory)
    assert other.manifest["plan_sha256"] != first.manifest["plan_sha256"]
    assert plan(other.directory) != plan(first.directory)
    # Keys, signatures, cti values and request ids are new each time: never the same scans.
    for key in ("qr_text", "request_id"):
        values = {i[key] for i in read_scans(first.directory) if key in i}
        assert values and not values & {i[key] for i in read_scans(second.directory) if key in i}


def test_counts_follow_the_mix_and_replays_come_in_ordered_pairs(tmp_path: Path) -> None:
    corpus = make_corpus(
        tmp_path / "c",
        count=201,
        seed=3,
        mix=parse_mix("valid=50,replayed=20,malformed=10,revoked=20"),
        repeat_rate=0.5,
    )
    items = list(read_scans(corpus.directory))
    kinds = Counter(item["kind"] for item in items)
    assert len(items) == 201 == corpus.manifest["count"]
    assert kinds == {
        "valid": 101,
        "replay_first": 20,
        "replayed": 20,
        "malformed": 20,
        "revoked": 40,
    }
    assert kinds == corpus.manifest["kinds"]
    position = {item["request_id"]: n for n, item in enumerate(items)}
    for n, item in enumerate(items):
        assert item["expect"] == KINDS[item["kind"]].to_json()
        if item["kind"] != "replayed":
            assert "after" not in item
            continue
        first = items[position[item["after"]]]
        assert first["kind"] == "replay_first" and position[item["after"]] < n
        assert first["qr_text"] == item["qr_text"]  # the very same code…
        assert first["reader_id"] != item["reader_id"]  # …at another reader
    assert 0.4 <= corpus.manifest["repeat_rate_achieved"] <= 0.6
    with_credential = [item["credential"] for item in items if "credential" in item]
    assert len(set(with_credential)) == corpus.manifest["credentials"]


@pytest.mark.parametrize(
    ("mix", "message"),
    [
        ("valid=1,bogus=2", "KIND=WEIGHT with KIND one of valid, beneficiary"),
        ("valid=x", "the weight of valid is not a number"),
        ("valid=-1", "the weight of valid is negative"),
        ("valid=0", "every weight is 0"),
    ],
)
def test_a_bad_mix_is_named(mix: str, message: str) -> None:
    with pytest.raises(CorpusError, match=message):
        parse_mix(mix)


@pytest.mark.slow
def test_a_real_server_gives_every_item_its_expected_decision(tmp_path: Path) -> None:
    """In corpus order on one connection, with every kind present."""
    corpus = make_corpus(tmp_path / "corpus", count=400, seed=5, repeat_rate=0.4)
    assert set(corpus.manifest["kinds"]) == set(KINDS)
    server = start_server(corpus.pki_directory, tmp_path / "server.log", "--allow-test-identities")
    items = list(read_scans(corpus.directory))

    async def send() -> list[tuple[str, str, bool]]:
        scans = [
            make_scan(
                item["qr_text"] if "qr_text" in item else base64.b64decode(item["nfc"]),
                reader_id=item["reader_id"],
                request_id=item["request_id"],
            )
            for item in items
        ]
        async with VerifierClient(server.address) as client:
            verdicts = await client.verify_batch(scans, max_batch=50)
        return [
            (
                Decision.Name(v.decision).removeprefix("DECISION_"),
                Reason.Name(v.reason).removeprefix("REASON_"),
                v.duplicate,
            )
            for v in verdicts
        ]

    try:
        answers = asyncio.run(send())
    finally:
        stop_server(server)
    wrong = [
        (item["kind"], answer)
        for item, answer in zip(items, answers, strict=True)
        if answer != (item["expect"]["decision"], item["expect"]["reason"], False)
    ]
    assert not wrong


def test_the_command_writes_a_corpus_and_refuses_to_overwrite_it(tmp_path: Path) -> None:
    out = tmp_path / "corpus"

    def corpus(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "apcv_verify.cli", "corpus", "--out", str(out), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    made = corpus("--count", "60", "--seed", "9", "--mix", "valid=3,malformed=1", "--progress")
    assert made.returncode == 0, made.stderr
    manifest = json.loads((out / "corpus.json").read_text())
    assert manifest["kinds"] == {"valid": 45, "malformed": 15}
    assert f"plan sha256:  {manifest['plan_sha256']}" in made.stdout
    assert f"--status-list {out}/pki/status/corpus-1.cwt" in made.stdout
    assert "corpus: 100%" in made.stderr  # the progress bar, asked for
    again = corpus("--count", "10")
    assert again.returncode == 2
    assert again.stderr == (
        f"apcv-verify corpus: error: {out}: a corpus already exists (use --force to replace it)\n"
    )
    bad = corpus("--count", "10", "--force", "--mix", "valid=1,replayed=1", "--readers", "1")
    assert bad.returncode == 2
    assert bad.stderr == "apcv-verify corpus: error: a replayed code needs at least 2 readers\n"
