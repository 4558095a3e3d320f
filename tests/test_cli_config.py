"""``apcv-verify config --print``: the effective configuration as TOML, secrets masked."""

from __future__ import annotations

import builtins
import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import apcv_verify.cli.main as cli
import pytest
from apcv_verify.cli.main import main
from apcv_verify.config import (
    DEFAULT_CALLER,
    USES,
    Config,
    ConfigError,
    TrustSection,
    load_config,
)

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
        'readers = ["desk-1", "ward-7-*"]\n'
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
    assert shown["callers"][0]["readers"] == ["desk-1", "ward-7-*"]
    assert shown["callers"][1] == {
        "id": "*",
        "uses": ["auth"],
        "may_send_scanned_at": False,
        "max_scan_delay_seconds": 0,
        "readers": [],
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


def test_without_print_or_template_there_is_nothing_to_do(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["config"]) == 2
    error = capsys.readouterr().err
    assert "--template prints a commented configuration file" in error
    assert "--print the effective configuration" in error


def test_version_is_the_package_version() -> None:
    reply = subprocess.run(
        [sys.executable, "-m", "apcv_verify.cli", "--version"],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=True,
    )  # fmt: skip
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert reply.stdout == f"apcv-verify {project['version']}\n"


def template(capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["config", "--template"]) == 0
    return capsys.readouterr().out


def test_the_template_has_every_key_with_its_default_and_a_comment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = template(capsys)
    shown = tomllib.loads(text)
    defaults = Config()
    for section in dataclasses.fields(Config):
        if section.name == "callers":
            assert "callers" not in shown  # the example is commented out: no callers by default
            continue
        values = getattr(defaults, section.name)
        expected = {
            item.name: list(value) if isinstance(value, tuple) else value
            for item in dataclasses.fields(values)
            for value in [getattr(values, item.name)]
        }
        assert shown[section.name] == expected, section.name
    assert "\n#" in text and "REQUIRED" in text
    for line in text.splitlines():
        if line.startswith(("max_batch", "stream_window", "on_store_error")):
            assert "# " in line  # the keys carry their comment


def test_the_template_loads_back_as_the_defaults_once_the_required_keys_are_filled(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "apcv.toml"
    path.write_text(template(capsys))
    # As it is, the loader names what is missing, as it would for any file.
    with pytest.raises(ConfigError, match=r"^trust\.anchors: at least one trust anchor"):
        load_config(path, environ={})
    for name in ("anchor.pem", "trust-list.cose"):
        (tmp_path / name).write_bytes(b"x")
    text = path.read_text()
    assert text.count("\nanchors = []\n") == 1 and text.count('\ntrust_list = ""\n') == 1
    text = text.replace("\nanchors = []\n", '\nanchors = ["anchor.pem"]\n')
    path.write_text(text.replace('\ntrust_list = ""\n', '\ntrust_list = "trust-list.cose"\n'))
    trust = TrustSection(
        anchors=(str(tmp_path / "anchor.pem"),), trust_list=str(tmp_path / "trust-list.cose")
    )
    assert load_config(path, environ={}) == Config(trust=trust)
    # The commented [[callers]] example, uncommented, is the policy of every caller by default.
    lines = path.read_text().splitlines()
    start = lines.index("# [[callers]]")
    example = [line[2:] for line in lines[start:] if line.startswith("# ")]
    path.write_text("\n".join([*lines[:start], *example]) + "\n")
    (caller,) = load_config(path, environ={}).callers
    assert caller.id == DEFAULT_CALLER.id and caller.uses == DEFAULT_CALLER.uses
    assert (caller.may_send_scanned_at, caller.max_scan_delay_seconds) == (False, 0)
    assert caller.readers == DEFAULT_CALLER.readers == ()
    for use in USES:
        assert caller.disclosed(use) == DEFAULT_CALLER.disclosed(use)


def test_template_and_print_do_not_go_together(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as usage:
        main(["config", "--template", "--print"])
    assert usage.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
