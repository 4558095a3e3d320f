"""``apcv-verify config --print``: the effective configuration as TOML, secrets masked."""

from __future__ import annotations

import builtins
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import apcv_verify.cli.main as cli
import pytest
from apcv_verify.cli.main import main
from apcv_verify.config import load_config

from .conftest import REPO

SECRET = "holder-ref-secret-do-not-print-0123456789"
REDIS_PASSWORD = "redis-pass-do-not-print"
KEY_MARKER = "-----BEGIN PRIVATE KEY----- do-not-print"


@pytest.fixture(autouse=True)
def keep_logging_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() points structlog at the sys.stdout of the moment: here pytest's capture, closed
    after the test, which would break the logs of every later in-process server."""
    monkeypatch.setattr(cli, "configure_logging", lambda level: None)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A config file naming trust and TLS files that exist (validation checks they do)."""
    for name in ("anchor.pem", "trust-list.cose", "amo-1.cwt", "server.crt", "ca.crt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "server.key").write_text(KEY_MARKER)
    (tmp_path / "apcv.toml").write_text(
        '[server]\nlisten = "127.0.0.1:6000"\n'
        '[trust]\nanchors = ["anchor.pem"]\ntrust_list = "trust-list.cose"\n'
        'status_lists = ["amo-1.cwt"]\n'
        "[policy]\nclock_skew_seconds = 30\nstatus_grace_seconds = 5\n"
        f'[audit]\nholder_ref_secret = "{SECRET}"\n'
        '[replay]\nbackend = "redis"\n'
        f'redis_url = "redis://apcv:{REDIS_PASSWORD}@redis.internal:6379/2"\n'
        '[tls]\nserver_cert = "server.crt"\nserver_key = "server.key"\nclient_ca = "ca.crt"\n'
        '[[callers]]\nid = "his.example"\nuses = ["care", "dmp"]\n'
        "max_scan_delay_seconds = 600\nmay_send_scanned_at = true\n"
        '[callers.disclose]\ncare = ["ins", "amo"]\n'
        '[[callers]]\nid = "*"\nuses = ["auth"]\n'
    )
    return tmp_path


def printed(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["config", "--print", *argv]) == 0
    return capsys.readouterr().out


def test_precedence_defaults_file_environment_flags(
    config_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APCV_POLICY_CLOCK_SKEW_SECONDS", "90")
    monkeypatch.setenv("APCV_SERVER_LISTEN", "127.0.0.1:7000")
    shown = tomllib.loads(
        printed(capsys, "--config", str(config_dir / "apcv.toml"), "--listen", "127.0.0.1:8000")
    )
    assert shown["server"]["listen"] == "127.0.0.1:8000"  # flag over environment over file
    assert shown["policy"]["clock_skew_seconds"] == 90  # environment over file
    assert shown["policy"]["status_grace_seconds"] == 5  # file over default
    assert shown["server"]["max_batch"] == 1000  # default
    assert shown["policy"]["allow_test_identities"] is False
    # Paths as the server uses them: relative to the config file.
    assert shown["trust"]["anchors"] == [str(config_dir / "anchor.pem")]
    assert shown["callers"][0]["disclose"] == {"care": ["ins", "amo"]}
    assert shown["callers"][1] == {
        "id": "*",
        "uses": ["auth"],
        "may_send_scanned_at": False,
        "max_scan_delay_seconds": 0,
    }


def test_secrets_are_masked_and_key_files_never_read(
    config_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    real_open = builtins.open

    def watching_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", watching_open)
    output = printed(capsys, "--config", str(config_dir / "apcv.toml"))
    monkeypatch.undo()
    for secret in (SECRET, REDIS_PASSWORD, KEY_MARKER):
        assert secret not in output
    assert str(config_dir / "server.key") not in opened  # nor the certificate files
    assert str(config_dir / "apcv.toml") in opened  # the watch does see file reads
    shown = tomllib.loads(output)
    assert shown["audit"]["holder_ref_secret"] == "***"
    assert shown["replay"]["redis_url"] == "redis://apcv:***@redis.internal:6379/2"
    assert shown["tls"]["server_key"] == str(config_dir / "server.key")  # the path is fine


def test_a_secret_from_the_environment_is_masked_and_an_unset_one_shows_empty(
    config_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    anchor, trust_list = config_dir / "anchor.pem", config_dir / "trust-list.cose"
    flags = ("--anchor", str(anchor), "--trust-list", str(trust_list))
    assert tomllib.loads(printed(capsys, *flags))["audit"]["holder_ref_secret"] == ""
    monkeypatch.setenv("APCV_AUDIT_HOLDER_REF_SECRET", SECRET)
    output = printed(capsys, *flags)
    assert SECRET not in output
    assert tomllib.loads(output)["audit"]["holder_ref_secret"] == "***"
    assert '# No [[callers]]: every caller gets the defaults of id = "*".' in output


def test_the_output_loads_back_to_the_same_configuration(
    config_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = config_dir / "apcv.toml"
    text = source.read_text().replace(SECRET, "")  # no secret: nothing masked
    text = text.replace(f"apcv:{REDIS_PASSWORD}@", "")
    source.write_text(text)
    output = printed(capsys, "--config", str(source))
    again = tmp_path / "again.toml"
    again.write_text(output)
    assert load_config(again, environ={}) == load_config(source, environ={})


def test_a_bad_value_names_the_key_and_exits_2(config_dir: Path) -> None:
    reply = subprocess.run(
        [sys.executable, "-m", "apcv_verify.cli", "config", "--print",
         "--config", str(config_dir / "apcv.toml")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"APCV_POLICY_CLOCK_SKEW_SECONDS": "soon", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )  # fmt: skip
    assert reply.returncode == 2
    assert "policy.clock_skew_seconds: expected int" in reply.stderr
    assert reply.stdout == ""


def test_without_print_there_is_nothing_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config"]) == 2
    assert "use --print" in capsys.readouterr().err
