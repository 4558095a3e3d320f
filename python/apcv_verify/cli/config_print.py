"""``apcv-verify config --print``: the effective configuration as TOML, secrets masked.

The output is a valid configuration file: saved and loaded again it gives the same
configuration, except for the masked secrets (``audit.holder_ref_secret`` and the password
of ``replay.redis_url``). TLS settings are paths; the files they name are never opened here,
so no private key content can reach the output.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from ..config import Config

__all__ = ["MASK", "config_toml", "toml_value"]

#: What a secret that is set prints as (an unset secret prints as "", so a missing one shows).
MASK = "***"


def _shown(item: dataclasses.Field[Any], value: Any) -> Any:
    """The value as printed: a secret field (``metadata["secret"]``) is masked, or passed
    through its own ``metadata["redact"]`` (the Redis URL keeps everything but its password)."""
    if not item.metadata.get("secret") or not value:
        return value
    redact = item.metadata.get("redact")
    return redact(value) if redact is not None else MASK


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a TOML basic string (same escapes), except that TOML also wants
        # DEL escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def config_toml(config: Config) -> str:
    """``config`` as a TOML document, one table per section, ``[[callers]]`` last."""
    lines = [
        "# apcv-verify effective configuration: defaults < file < APCV_* environment < flags.",
        f'# Secrets are masked ("{MASK}"); TLS files are shown by path only.',
    ]
    for section_field in dataclasses.fields(config):
        if section_field.name == "callers":
            continue
        section = getattr(config, section_field.name)
        lines += ["", f"[{section_field.name}]"]
        for item in dataclasses.fields(section):
            value = _shown(item, getattr(section, item.name))
            lines.append(f"{item.name} = {toml_value(value)}")
    if not config.callers:
        lines += ["", '# No [[callers]]: every caller gets the defaults of id = "*".']
    for caller in config.callers:
        lines += [
            "",
            "[[callers]]",
            f"id = {toml_value(caller.id)}",
            f"uses = {toml_value(caller.uses)}",
            f"may_send_scanned_at = {toml_value(caller.may_send_scanned_at)}",
            f"max_scan_delay_seconds = {toml_value(caller.max_scan_delay_seconds)}",
            f"readers = {toml_value(caller.readers)}",
        ]
        if caller.disclose:
            lines.append("[callers.disclose]")
            lines += [f"{use} = {toml_value(groups)}" for use, groups in caller.disclose.items()]
    return "\n".join(lines) + "\n"
