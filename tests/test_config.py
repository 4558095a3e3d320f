"""Configuration: file, environment and flags, validated with errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from apcv_verify.config import ConfigError, load_config


@pytest.fixture
def trust_files(tmp_path: Path) -> Path:
    for name in ("anchor.pem", "trust-list.cose", "amo-1.cwt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "apcv.toml").write_text(
        '[server]\nlisten = "127.0.0.1:6000"\n'
        '[trust]\nanchors = ["anchor.pem"]\ntrust_list = "trust-list.cose"\n'
        'status_lists = ["amo-1.cwt"]\n'
        "[policy]\nclock_skew_seconds = 30\n"
    )
    return tmp_path


def test_file_values_and_paths_relative_to_the_file(trust_files: Path) -> None:
    config = load_config(trust_files / "apcv.toml", environ={})
    assert config.server.listen == "127.0.0.1:6000"
    assert config.trust.anchors == (str(trust_files / "anchor.pem"),)
    assert config.policy.clock_skew_seconds == 30
    assert config.policy.allow_test_identities is False  # production policy by default


def test_environment_overrides_file_and_flags_override_environment(trust_files: Path) -> None:
    environ = {
        "APCV_POLICY_CLOCK_SKEW_SECONDS": "90",
        "APCV_POLICY_ALLOW_TEST_IDENTITIES": "true",
        "APCV_SERVER_LISTEN": "127.0.0.1:7000",
    }
    config = load_config(
        trust_files / "apcv.toml", environ=environ, overrides={"server.listen": "127.0.0.1:8000"}
    )
    assert config.policy.clock_skew_seconds == 90
    assert config.policy.allow_test_identities is True
    assert config.server.listen == "127.0.0.1:8000"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"APCV_POLICY_CLOCK_SKEW_SECONDS": "soon"}, r"policy\.clock_skew_seconds: expected int"),
        ({"APCV_POLICY_CLOCK_SKEW_SECONDS": "7200"}, r"policy\.clock_skew_seconds: must be"),
        ({"APCV_POLICY_ALLOW_TEST_IDENTITIES": "maybe"}, r"policy\.allow_test_identities"),
        ({"APCV_SERVER_LISTEN": "localhost"}, r"server\.listen: expected HOST:PORT"),
        ({"APCV_REPLAY_BACKEND": "disk"}, r"replay\.backend: unknown backend"),
        ({"APCV_TRUST_TRUST_LIST": "/nonexistent/list"}, r"trust\.trust_list: file not found"),
    ],
)
def test_bad_values_name_the_key(trust_files: Path, environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(trust_files / "apcv.toml", environ=environ)


def test_unknown_keys_and_missing_trust_are_refused(tmp_path: Path) -> None:
    (tmp_path / "typo.toml").write_text("[policy]\nclock_skew = 3\n")
    with pytest.raises(ConfigError, match=r"policy\.clock_skew: unknown key"):
        load_config(tmp_path / "typo.toml", environ={})
    with pytest.raises(ConfigError, match=r"trust\.anchors: at least one trust anchor"):
        load_config(None, environ={})
    (tmp_path / "bad.toml").write_text("[server\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(tmp_path / "bad.toml", environ={})
