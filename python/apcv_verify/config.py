"""Service configuration: one TOML file, every key overridable by an ``APCV_…`` variable.

Keys are ``section.key`` (``policy.clock_skew_seconds``); the matching environment
variable is ``APCV_`` + the upper-cased key with dots as underscores
(``APCV_POLICY_CLOCK_SKEW_SECONDS``). Precedence: defaults < file < environment < flags.
Everything is validated at start; a bad value raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "Config", "load_config"]

ENV_PREFIX = "APCV_"


class ConfigError(ValueError):
    """A configuration key is missing, unknown or has an unusable value."""


@dataclass(frozen=True)
class ServerSection:
    #: host:port the gRPC server listens on.
    listen: str = "127.0.0.1:50051"
    #: Largest request accepted, in bytes (a QR text is at most 4,296 characters).
    max_message_bytes: int = 64 * 1024
    #: Seconds given to in-flight calls on shutdown.
    grace_seconds: float = 10.0


@dataclass(frozen=True)
class TrustSection:
    #: Trust anchors: PEM public keys or COSE_Key files (PROFILE §5: configured out of band).
    anchors: tuple[str, ...] = ()
    #: The signed trust list (COSE_Sign1) file.
    trust_list: str = ""
    #: Signed status-list CWT files (PROFILE §6).
    status_lists: tuple[str, ...] = ()


@dataclass(frozen=True)
class PolicySection:
    #: Accept INS test / demonstration OIDs (1.2.250.1.213.1.4.10 / .11). Never in production.
    allow_test_identities: bool = False
    #: Tolerated clock difference between phones and this server (PROFILE §5 times).
    clock_skew_seconds: int = 60
    #: How long past its expiry a status list is still used (0 = fail closed at expiry).
    status_grace_seconds: int = 0


@dataclass(frozen=True)
class ReplaySection:
    #: "memory": in-process TTL set (one replica).
    backend: str = "memory"
    #: Bound of the in-process store; beyond it verifications fail closed (REPLAY_UNAVAILABLE).
    max_entries: int = 1_000_000


@dataclass(frozen=True)
class Config:
    server: ServerSection = field(default_factory=ServerSection)
    trust: TrustSection = field(default_factory=TrustSection)
    policy: PolicySection = field(default_factory=PolicySection)
    replay: ReplaySection = field(default_factory=ReplaySection)

    def validate(self) -> Config:
        host, sep, port = self.server.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError("server.listen: expected HOST:PORT, e.g. 127.0.0.1:50051")
        if self.server.max_message_bytes < 4096:
            raise ConfigError("server.max_message_bytes: must be at least 4096")
        if self.server.grace_seconds < 0:
            raise ConfigError("server.grace_seconds: must not be negative")
        if not self.trust.anchors:
            raise ConfigError("trust.anchors: at least one trust anchor is required")
        if not self.trust.trust_list:
            raise ConfigError("trust.trust_list: a trust list file is required")
        for key, paths in (
            ("trust.anchors", self.trust.anchors),
            ("trust.trust_list", (self.trust.trust_list,)),
            ("trust.status_lists", self.trust.status_lists),
        ):
            for path in paths:
                if not Path(path).is_file():
                    raise ConfigError(f"{key}: file not found: {path}")
        if not 0 <= self.policy.clock_skew_seconds <= 3600:
            raise ConfigError("policy.clock_skew_seconds: must be between 0 and 3600")
        if self.policy.status_grace_seconds < 0:
            raise ConfigError("policy.status_grace_seconds: must not be negative")
        if self.replay.backend != "memory":
            raise ConfigError(f"replay.backend: unknown backend {self.replay.backend!r} (memory)")
        if self.replay.max_entries < 1:
            raise ConfigError("replay.max_entries: must be at least 1")
        return self


def _convert(key: str, annotation: str, raw: Any, *, from_env: bool) -> Any:
    """Coerce one value to the field's type, naming the key on failure."""
    try:
        if annotation == "bool":
            if from_env:
                lowered = str(raw).strip().lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if not isinstance(raw, bool):
                raise ValueError
            return raw
        if annotation == "int":
            if isinstance(raw, bool):
                raise ValueError
            return int(raw)
        if annotation == "float":
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if annotation == "str":
            if not isinstance(raw, str):
                raise ValueError
            return raw
        if annotation == "tuple[str, ...]":
            if from_env and isinstance(raw, str):
                return tuple(part.strip() for part in raw.split(",") if part.strip())
            if not isinstance(raw, list | tuple) or not all(isinstance(p, str) for p in raw):
                raise ValueError
            return tuple(raw)
    except ValueError:
        pass
    raise ConfigError(f"{key}: expected {annotation.replace('tuple[str, ...]', 'list of strings')}")


def _relative_to(base: Path, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
    """Paths in a config file are relative to that file, as a user reading it expects."""
    if isinstance(value, str):
        return str(base / value) if value else value
    return tuple(str(base / item) for item in value)


def _sections() -> dict[str, type]:
    return {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the effective configuration and validate it.

    ``overrides`` maps ``section.key`` to a value (command-line flags); ``None`` values are
    skipped so unset flags do not mask the file or the environment.
    """
    environ = os.environ if environ is None else environ
    document: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as handle:
                document = tomllib.load(handle)
        except OSError as error:
            raise ConfigError(f"config file {path}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config file {path}: invalid TOML: {error}") from None

    sections: dict[str, Any] = {}
    for section_name, section_type in _sections().items():
        given = document.pop(section_name, {})
        if not isinstance(given, dict):
            raise ConfigError(f"{section_name}: expected a table")
        values: dict[str, Any] = {}
        for item in dataclasses.fields(section_type):
            key = f"{section_name}.{item.name}"
            annotation = str(item.type)
            if item.name in given:
                value = _convert(key, annotation, given.pop(item.name), from_env=False)
                if section_name == "trust" and path is not None:
                    value = _relative_to(Path(path).parent, value)
                values[item.name] = value
            env_name = ENV_PREFIX + key.replace(".", "_").upper()
            if env_name in environ:
                values[item.name] = _convert(key, annotation, environ[env_name], from_env=True)
            if overrides is not None and overrides.get(key) is not None:
                values[item.name] = _convert(key, annotation, overrides[key], from_env=False)
        for unknown in given:
            raise ConfigError(f"{section_name}.{unknown}: unknown key")
        sections[section_name] = section_type(**values)
    for unknown in document:
        raise ConfigError(f"{unknown}: unknown section")
    return Config(**sections).validate()
