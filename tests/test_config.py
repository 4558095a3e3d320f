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


def test_callers_table_from_file_and_from_apcv_callers_json(trust_files: Path) -> None:
    from apcv_verify.config import DEFAULT_DISCLOSURE

    with (trust_files / "apcv.toml").open("a") as toml:
        toml.write(
            '[[callers]]\nid = "his-1"\nuses = ["care", "dmp"]\n'
            'disclose = { care = ["amo"] }\n'
            '[[callers]]\nid = "edge"\nmay_send_scanned_at = true\nmax_scan_delay_seconds = 900\n'
        )
    config = load_config(trust_files / "apcv.toml", environ={})
    his = config.caller("his-1")
    assert his is not None and his.uses == ("care", "dmp")
    assert his.disclosed("care") == {"amo"}
    assert his.disclosed("dmp") == set(DEFAULT_DISCLOSURE["dmp"]) == {"ins", "identity"}
    edge = config.caller("edge")
    assert edge is not None and edge.may_send_scanned_at and edge.max_scan_delay_seconds == 900
    assert config.caller("stranger") is None  # no "*" entry: not allowed

    environ = {"APCV_CALLERS": '[{"id": "*", "uses": ["auth"]}]'}
    from_env = load_config(trust_files / "apcv.toml", environ=environ)
    anyone = from_env.caller("stranger")
    assert anyone is not None and anyone.uses == ("auth",) and not anyone.may_send_scanned_at


def test_without_a_callers_table_everyone_gets_the_defaults(trust_files: Path) -> None:
    caller = load_config(trust_files / "apcv.toml", environ={}).caller("anonymous")
    assert caller is not None
    assert caller.uses == ("care", "dmp", "dp", "auth")
    assert caller.disclosed("care") == {"ins", "identity", "amo", "amc"}
    assert caller.disclosed("auth") == {"ins"}
    assert not caller.may_send_scanned_at


@pytest.mark.parametrize(
    ("callers", "message"),
    [
        ('[{"id": "a", "uses": ["billing"]}]', r"callers\[0\]\.uses: unknown use 'billing'"),
        ('[{"id": "a", "disclose": {"care": ["nir"]}}]', r"callers\[0\]\.disclose\.care: unknown"),
        ('[{"id": "a", "disclose": {"x": ["ins"]}}]', r"callers\[0\]\.disclose: unknown use 'x'"),
        ('[{"id": "a"}, {"id": "a"}]', r"callers: caller 'a' is listed twice"),
        ('[{"id": "a", "max_scan_delay_seconds": -1}]', r"callers\[0\]\.max_scan_delay_seconds"),
        ('[{"id": "a", "may_send_scanned_at": "yes"}]', r"callers\[0\]\.may_send_scanned_at"),
        ('[{"uses": ["care"]}]', r"callers\[0\]\.id: a non-empty string is required"),
        ('[{"id": "a", "scope": 1}]', r"callers\[0\]\.scope: unknown key"),
        ('{"id": "a"}', r"callers: expected an array of tables"),
        ("[{", r"callers: APCV_CALLERS is not valid JSON"),
    ],
)
def test_bad_callers_name_the_entry(trust_files: Path, callers: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(trust_files / "apcv.toml", environ={"APCV_CALLERS": callers})


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ('server_cert = "anchor.pem"', r"tls\.server_cert: server_cert and server_key go together"),
        ('client_ca = "anchor.pem"', r"tls\.client_ca: needs tls\.server_cert"),
        ('server_cert = "anchor.pem"\nserver_key = "anchor.pem"', r"tls\.client_ca: required"),
        (
            'server_cert = "anchor.pem"\nserver_key = "anchor.pem"\nclient_ca = "anchor.pem"\n'
            "require_client_auth = false",
            r"tls\.client_ca: client certificates are always required",
        ),
        ('server_cert = "a.pem"\nserver_key = "anchor.pem"\nclient_ca = "anchor.pem"',
         r"tls\.server_cert: file not found"),
        ('server_cert = "anchor.pem"\nserver_key = "anchor.pem"\nrequire_client_auth = false\n'
         'client_crls = ["anchor.pem"]', r"tls\.client_crls: needs tls\.client_ca"),
        ('server_cert = "anchor.pem"\nserver_key = "anchor.pem"\nclient_ca = "anchor.pem"\n'
         'client_crls = ["anchor.pem", "ca.crl"]', r"tls\.client_crls: file not found: .*ca\.crl"),
        ('server_cert = "anchor.pem"\nserver_key = "anchor.pem"\nclient_ca = "anchor.pem"\n'
         'client_crls = ["ldap://pki.example/ca.crl"]', r"tls\.client_crls: .*only http\(s\) URLs"),
    ],
)  # fmt: skip
def test_bad_tls_settings_name_the_key(trust_files: Path, tls: str, message: str) -> None:
    with (trust_files / "apcv.toml").open("a") as toml:
        toml.write(f"[tls]\n{tls}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(trust_files / "apcv.toml", environ={})


def test_tls_paths_are_relative_to_the_file_and_batch_bound(trust_files: Path) -> None:
    with (trust_files / "apcv.toml").open("a") as toml:
        toml.write(
            '[tls]\nserver_cert = "anchor.pem"\nserver_key = "anchor.pem"\n'
            'client_ca = "anchor.pem"\n'
        )
    config = load_config(trust_files / "apcv.toml", environ={"APCV_SERVER_MAX_BATCH": "50"})
    assert config.tls.enabled and config.tls.client_ca == str(trust_files / "anchor.pem")
    assert config.server.max_batch == 50
    with pytest.raises(ConfigError, match=r"server\.max_batch: must be between 1 and 100000"):
        load_config(trust_files / "apcv.toml", environ={"APCV_SERVER_MAX_BATCH": "0"})


def test_replay_section_redis_from_file_and_environment(trust_files: Path) -> None:
    from apcv_verify.config import redact_url

    with (trust_files / "apcv.toml").open("a") as toml:
        toml.write(
            '[replay]\nbackend = "redis"\nredis_url = "redis://:s3cret-pw@10.0.0.7:6379/2"\n'
            'key_prefix = "prod:replay:"\ntimeout_seconds = 0.25\n'
        )
    loaded = load_config(trust_files / "apcv.toml", environ={})
    replay = loaded.replay
    assert (replay.backend, replay.key_prefix, replay.timeout_seconds) == (
        "redis",
        "prod:replay:",
        0.25,
    )
    assert replay.on_store_error == "reject"  # fail closed unless the operator says otherwise
    assert replay.redis_url == "redis://:s3cret-pw@10.0.0.7:6379/2"  # the path is not touched
    assert "s3cret-pw" not in repr(loaded)
    assert redact_url(replay.redis_url) == "redis://:***@10.0.0.7:6379/2"
    assert (
        redact_url("rediss://app:pw@cache.internal:6380") == "rediss://app:***@cache.internal:6380"
    )
    assert redact_url("redis://cache:6379/0") == "redis://cache:6379/0"
    environ = {"APCV_REPLAY_ON_STORE_ERROR": "accept", "APCV_REPLAY_REDIS_URL": "unix:///run/r.s"}
    replay = load_config(trust_files / "apcv.toml", environ=environ).replay
    assert (replay.on_store_error, replay.redis_url) == ("accept", "unix:///run/r.s")
    # Redis Sentinel and Redis Cluster (docs/operations.md "Redis topologies").
    for url in (
        "redis+sentinel://:pw@10.0.0.7:26379,10.0.0.8:26379/apcv/2",
        "rediss+sentinel://sentinel.internal:26379/apcv",
        "redis+cluster://:pw@10.0.0.7:6379,10.0.0.8:6379,[::1]:6379",
        "rediss+cluster://cache.internal:6379",
    ):
        environ = {"APCV_REPLAY_REDIS_URL": url}
        replay = load_config(trust_files / "apcv.toml", environ=environ).replay
        assert replay.redis_url == url
        assert ":pw@" not in redact_url(url)
    # The default: the in-process store.
    assert (
        load_config(
            trust_files / "apcv.toml", environ={"APCV_REPLAY_BACKEND": "memory"}
        ).replay.backend
        == "memory"
    )
    assert load_config(None, environ=_minimal(trust_files)).replay.backend == "memory"


@pytest.mark.parametrize(
    ("url", "files", "problem"),
    [
        ("redis://cache:6379/0", {"CA": "ca.pem"}, r"replay\.redis_tls_ca: needs a TLS"),
        ("rediss://cache:6380/0", {"CERT": "client.pem"}, "redis_tls_cert and redis_tls_key"),
        ("rediss://cache:6380/0", {"KEY": "no.key"}, r"replay\.redis_tls_key: file not found"),
    ],
)
def test_redis_tls_files_are_checked_at_start(
    trust_files: Path, url: str, files: dict[str, str], problem: str
) -> None:
    for name in ("ca.pem", "client.pem"):
        (trust_files / name).write_text("")
    environ = {
        **_minimal(trust_files),
        "APCV_REPLAY_BACKEND": "redis",
        "APCV_REPLAY_REDIS_URL": url,
        **{f"APCV_REPLAY_REDIS_TLS_{k}": str(trust_files / v) for k, v in files.items()},
    }
    with pytest.raises(ConfigError, match=problem):
        load_config(None, environ=environ)


@pytest.mark.parametrize(
    ("trust_list", "files", "problem"),
    [
        ("trust-list.cose", {"CA": "ca.pem"}, r"trust\.http_tls_ca: needs an https://"),
        ("http://lists/trust-list.cose", {"CA": "ca.pem"}, r"trust\.http_tls_ca: needs an https"),
        ("https://lists/trust-list.cose", {"CERT": "client.pem"}, "http_tls_cert and http_tls_key"),
        (
            "https://lists/trust-list.cose",
            {"KEY": "no.key"},
            r"trust\.http_tls_key: file not found",
        ),
    ],
)
def test_list_tls_files_are_checked_at_start(
    trust_files: Path, trust_list: str, files: dict[str, str], problem: str
) -> None:
    for name in ("ca.pem", "client.pem"):
        (trust_files / name).write_text("")
    if "://" not in trust_list:
        trust_list = str(trust_files / trust_list)
    environ = {
        **_minimal(trust_files),
        "APCV_TRUST_TRUST_LIST": trust_list,
        **{f"APCV_TRUST_HTTP_TLS_{k}": str(trust_files / v) for k, v in files.items()},
    }
    with pytest.raises(ConfigError, match=problem):
        load_config(None, environ=environ)


def test_list_tls_files_are_relative_to_the_config_file(trust_files: Path) -> None:
    for name in ("ca.pem", "client.pem", "client.key"):
        (trust_files / name).write_text("")
    (trust_files / "lists.toml").write_text(
        '[trust]\nanchors = ["anchor.pem"]\ntrust_list = "https://lists/trust-list.cose"\n'
        'http_tls_ca = "ca.pem"\nhttp_tls_cert = "client.pem"\nhttp_tls_key = "client.key"\n'
    )
    trust = load_config(trust_files / "lists.toml", environ={}).trust
    assert (trust.http_tls_ca, trust.http_tls_cert, trust.http_tls_key) == tuple(
        str(trust_files / name) for name in ("ca.pem", "client.pem", "client.key")
    )


def test_the_redis_name_check_is_turned_off_only_with_a_ca_of_its_own(trust_files: Path) -> None:
    (trust_files / "ca.pem").write_text("")
    environ = {
        **_minimal(trust_files),
        "APCV_REPLAY_BACKEND": "redis",
        "APCV_REPLAY_REDIS_URL": "rediss+cluster://c1:6379,c2:6379",
        "APCV_REPLAY_REDIS_TLS_CHECK_HOSTNAME": "false",
    }
    with pytest.raises(ConfigError, match=r"replay\.redis_tls_check_hostname: false needs"):
        load_config(None, environ=environ)
    environ["APCV_REPLAY_REDIS_TLS_CA"] = str(trust_files / "ca.pem")
    assert load_config(None, environ=environ).replay.redis_tls_check_hostname is False


def test_a_sentinel_password_needs_a_sentinel_url(trust_files: Path) -> None:
    environ = {
        **_minimal(trust_files),
        "APCV_REPLAY_BACKEND": "redis",
        "APCV_REPLAY_REDIS_SENTINEL_PASSWORD": "sentinel-pw",
    }
    url = "redis+sentinel://:pw@s1:26379,s2:26379/apcv"
    replay = load_config(None, environ={**environ, "APCV_REPLAY_REDIS_URL": url}).replay
    assert replay.redis_sentinel_password == "sentinel-pw"
    assert "sentinel-pw" not in repr(replay)
    with pytest.raises(ConfigError, match=r"replay\.redis_sentinel_password: needs a Redis"):
        load_config(None, environ={**environ, "APCV_REPLAY_REDIS_URL": "redis://cache:6379/0"})
    as_user = {**environ, "APCV_REPLAY_REDIS_URL": url, "APCV_REPLAY_REDIS_SENTINEL_USERNAME": "s"}
    assert load_config(None, environ=as_user).replay.redis_sentinel_username == "s"
    del as_user["APCV_REPLAY_REDIS_SENTINEL_PASSWORD"]
    with pytest.raises(ConfigError, match=r"replay\.redis_sentinel_username: needs replay\.redis"):
        load_config(None, environ=as_user)


def test_redis_tls_files_are_relative_to_the_config_file(trust_files: Path) -> None:
    for name in ("ca.pem", "client.pem", "client.key"):
        (trust_files / name).write_text("")
    with (trust_files / "apcv.toml").open("a") as toml:
        toml.write(
            '[replay]\nbackend = "redis"\nredis_url = "rediss+sentinel://s1:26379/apcv"\n'
            'redis_tls_ca = "ca.pem"\nredis_tls_cert = "client.pem"\n'
            'redis_tls_key = "client.key"\n'
        )
    replay = load_config(trust_files / "apcv.toml", environ={}).replay
    assert (replay.redis_tls_ca, replay.redis_tls_cert, replay.redis_tls_key) == tuple(
        str(trust_files / name) for name in ("ca.pem", "client.pem", "client.key")
    )


def _minimal(trust_files: Path) -> dict[str, str]:
    return {
        "APCV_TRUST_ANCHORS": str(trust_files / "anchor.pem"),
        "APCV_TRUST_TRUST_LIST": str(trust_files / "trust-list.cose"),
    }


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"APCV_REPLAY_BACKEND": "redis"}, r"replay\.redis_url: required when"),
        (
            {"APCV_REPLAY_BACKEND": "redis", "APCV_REPLAY_REDIS_URL": "http://:pw@cache:80"},
            r"replay\.redis_url: http://:\*\*\*@cache:80: expected redis://",
        ),
        (
            {"APCV_REPLAY_BACKEND": "redis", "APCV_REPLAY_REDIS_URL": "redis://:pw@c:port"},
            r"replay\.redis_url: \(unparsable URL\)",
        ),
        (
            {"APCV_REPLAY_BACKEND": "redis", "APCV_REPLAY_REDIS_URL": "redis://:pw@:6379"},
            r"replay\.redis_url: redis://:\*\*\*@:6379: no host",
        ),
        (
            {
                "APCV_REPLAY_BACKEND": "redis",
                "APCV_REPLAY_REDIS_URL": "redis+sentinel://:pw@s1:26379,s2:26379",
            },
            r"replay\.redis_url: redis\+sentinel://:\*\*\*@s1:26379,s2:26379: no master name",
        ),
        (
            {
                "APCV_REPLAY_BACKEND": "redis",
                "APCV_REPLAY_REDIS_URL": "redis+cluster://:pw@n1:6379,n2:port",
            },
            r"replay\.redis_url: \(unparsable URL\)",
        ),
        (
            {"APCV_REPLAY_BACKEND": "redis", "APCV_REPLAY_REDIS_URL": "redis+cluster://:pw@n1:1,"},
            r"replay\.redis_url: redis\+cluster://:\*\*\*@n1:1,: no host",
        ),
        ({"APCV_REPLAY_ON_STORE_ERROR": "retry"}, r"replay\.on_store_error: 'retry'"),
        ({"APCV_REPLAY_TIMEOUT_SECONDS": "0"}, r"replay\.timeout_seconds: must be"),
        ({"APCV_REPLAY_TIMEOUT_SECONDS": "soon"}, r"replay\.timeout_seconds: expected float"),
        ({"APCV_REPLAY_KEY_PREFIX": ""}, r"replay\.key_prefix: between 1 and 64"),
    ],
)
def test_bad_replay_settings_name_the_key_and_never_show_the_password(
    trust_files: Path, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(trust_files / "apcv.toml", environ=environ)
    assert ":pw@" not in str(raised.value)
