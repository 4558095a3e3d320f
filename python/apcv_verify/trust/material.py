"""What the service trusts: the verified trust list and status lists (:class:`TrustMaterial`),
and the snapshot a call verifies with (:class:`Snapshot`), both swapped whole
(docs/architecture.md "Immutable snapshots")."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import _native
from ..config import Config
from .anchors import read_anchor

__all__ = ["TRUST_LIST_SOURCE", "Snapshot", "TrustMaterial", "load_trust_material"]

#: Source names used in logs and metric labels: config keys, never URLs (a URL may carry a
#: token in its query string). Status list sources are ``status_lists[i]``.
TRUST_LIST_SOURCE = "trust_list"


@dataclass(frozen=True)
class TrustMaterial:
    """All the service trusts, swapped whole (docs/architecture.md "Immutable snapshots")."""

    trust_list: _native.TrustList
    status_lists: tuple[_native.StatusList, ...]


@dataclass(frozen=True)
class Snapshot:
    """What one call verifies with: the material and the core verifiers built on it."""

    material: TrustMaterial
    #: One core verifier per ``max_scan_delay`` of the callers table
    #: (:func:`apcv_verify.service.startup.build_verifiers`).
    verifiers: Mapping[int, _native.Verifier]

    @property
    def trust_list(self) -> _native.TrustList:
        return self.material.trust_list

    @property
    def status_lists(self) -> tuple[_native.StatusList, ...]:
        return self.material.status_lists


def load_trust_material(config: Config, *, now: int | None = None) -> TrustMaterial:
    """Read and verify the anchors, the trust list and the status list files of ``config``
    (the service itself loads and refreshes them with
    :class:`~apcv_verify.trust.sources.TrustSource`, URLs included).

    Raises :class:`~apcv_verify._native.TrustListError` / ``StatusListError`` naming the
    problem; nothing partial is returned.
    """
    now = int(time.time()) if now is None else now
    anchors = [read_anchor(path) for path in config.trust.anchors]
    trust_list = _native.TrustList.verify(Path(config.trust.trust_list).read_bytes(), anchors, now)
    status_lists = tuple(
        _native.StatusList.verify(Path(path).read_bytes(), trust_list, now)
        for path in config.trust.status_lists
    )
    return TrustMaterial(trust_list, status_lists)
