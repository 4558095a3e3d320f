"""Trust list and status lists from files or HTTP(S) URLs, refreshed in the background.

:class:`TrustSource` holds the current :class:`Snapshot` — the verified trust list, the
verified status lists and the core verifiers built on them — and replaces it whole when a
refresh brings something new (docs/architecture.md "Immutable snapshots").
A call reads :attr:`TrustSource.current` once and verifies on that snapshot to the end, so a
swap in the middle of a call or a batch changes nothing for it.

Rules of a refresh (docs/operations.md "Trust list and status list refresh"):

* a document is used only once verified: the trust list against the configured anchors with
  the held sequence number (``held_seq``: a lower sequence is a rollback and is refused), a
  status list against the trust list in use, at the current time;
* a status list older (``iat``) than the one held for the same source is refused (rollback);
* on any failure — unreachable server, overrun deadline, oversize body, bad signature,
  rollback — the last good document is kept, the failure is logged and counted
  (``apcv_trust_refresh_failures_total``), and nothing crashes;
* when the trust list changes, every held status list is verified again against the new
  one; a list whose signer is no longer trusted is dropped (verifications that need it
  answer ``STATUS_UNAVAILABLE``, fail closed) and fetched again at each refresh;
* every source is fetched at the same time, each within ``trust.http_timeout_seconds`` in
  all (a server that drips its answer is cut off), and each verified list is taken into use
  as soon as it arrives, so one slow source never holds back another's revocations;
* HTTP sources are fetched through the proxy the environment names (``HTTPS_PROXY``,
  ``HTTP_PROXY``, ``NO_PROXY``), with ``If-None-Match`` (the ``ETag`` of the last accepted
  body); ``304 Not Modified`` means unchanged. ``https://`` ones check the server's
  certificate against ``trust.http_tls_ca`` (else the system's CAs) and present
  ``trust.http_tls_cert`` when set, files read again at a refresh once they changed, so that
  renewed certificates are taken up. They are fetched as published
  (``Accept-Encoding: identity``) and a body sent with a content coding anyway is refused
  unread: the signed documents are compact already, and an inflated body could be many
  times the bytes received. File sources are read again when their mtime or
  size changes. A validator is remembered only once its document is accepted, so a refused
  document is fetched and judged again at the next refresh.

A held status list past its expiry plus ``policy.status_grace_seconds`` is the core's
decision (``STATUS_UNAVAILABLE``) and shows as ``apcv_trust_source_expired``. A held trust list
past its expiry is kept for ``trust.expired_grace_seconds`` (refreshes may be failing only for
a while), then refused (:meth:`TrustSource.refuses`): the service fails closed until a valid
list arrives, so blocking the distribution of lists cannot keep a withdrawn key trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp
import structlog
from prometheus_client import CollectorRegistry

from .. import _native
from ..config import Config, ConfigError, TrustSection
from ..tls_files import RenewedFiles
from .anchors import read_anchor
from .material import TRUST_LIST_SOURCE, Snapshot, TrustMaterial
from .metrics import TrustMetrics

__all__ = [
    "INITIAL_RETRY_SECONDS",
    "MAX_SOURCE_BYTES",
    "FetchTimeout",
    "Snapshot",
    "Source",
    "SourceError",
    "TrustMaterial",
    "TrustSource",
    "fetch_session",
    "is_url",
]

log = structlog.get_logger("apcv_verify.trust.sources")

#: Largest body read from a source. The core refuses any trust list over 4 MiB and any
#: status list over 17 MiB (rust/apcv-core/src/limits.rs) before looking at it; 32 MiB is
#: above both, so no document the core would accept is cut off, while a misconfigured or
#: hostile server cannot make the service buffer an unbounded response in memory.
MAX_SOURCE_BYTES = 32 * 1024 * 1024
#: How often a source is tried while no trust list is loaded yet (at most, and never more
#: often than ``trust.refresh_seconds``).
INITIAL_RETRY_SECONDS = 5.0
#: Sent with every HTTP request, so that publishers can tell who fetches their lists.
USER_AGENT = "apcv-verify (trust list refresh)"
#: The ``Content-Encoding`` a list body is taken with: none. A gzip or br body is refused, not
#: inflated, so :data:`MAX_SOURCE_BYTES` bounds the memory a fetch can take whatever aiohttp's
#: decoders do (aiohttp before 3.13.3 inflated each received chunk whole: a bomb of 1 MiB took
#: hundreds of MiB before the cap was checked).
IDENTITY_CODINGS = frozenset({"", "identity"})


def is_url(location: str) -> bool:
    """True for an ``http://`` or ``https://`` location; anything else is a file path."""
    return location.lower().startswith(("http://", "https://"))


def _display(location: str) -> str:
    """A location fit for logs: a URL without user info, query or fragment."""
    if not is_url(location):
        return location
    parts = urllib.parse.urlsplit(location)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


class SourceError(Exception):
    """A source could not be read (unreachable, HTTP error, oversize or content-coded
    body, missing file)."""

    reason = "fetch"


class FetchTimeout(SourceError):
    """A fetch did not complete within ``trust.http_timeout_seconds``, from the connection to
    the last byte: a server that drips its answer is cut off like one that never answers."""

    reason = "timeout"


def list_tls_context(trust: TrustSection) -> ssl.SSLContext | None:
    """The TLS context of ``https://`` list fetches from ``trust.http_tls_*``, or None when
    none is set (aiohttp's default: the system's CAs, or ``SSL_CERT_FILE``'s). Raises
    :class:`ConfigError` naming the key whose file cannot be loaded."""
    if not (trust.http_tls_ca or trust.http_tls_cert):
        return None
    try:
        context = ssl.create_default_context(cafile=trust.http_tls_ca or None)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"trust.http_tls_ca: cannot load: {error}") from None
    if trust.http_tls_cert:
        try:
            context.load_cert_chain(trust.http_tls_cert, trust.http_tls_key)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(f"trust.http_tls_cert: cannot load with its key: {error}") from None
    return context


def fetch_session(tls: ssl.SSLContext | None = None) -> aiohttp.ClientSession:
    """The HTTP session of one round of fetches (:meth:`Source.fetch`); ``tls``: the context
    of https:// fetches (None: the system's CAs, or ``SSL_CERT_FILE``'s)."""
    # auto_decompress=False: a coded body is refused in _fetch_url, never inflated.
    # trust_env: the proxy of HTTP_PROXY / HTTPS_PROXY / NO_PROXY, as curl would take it
    # (hospital and cluster networks often reach the Internet only through one).
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=True if tls is None else tls),
        auto_decompress=False,
        trust_env=True,
    )


class Source:
    """One configured location: a file or an HTTP(S) URL, with its change validator;
    ``accept`` is the HTTP Accept header of its fetches (:attr:`media_types`)."""

    def __init__(
        self, name: str, location: str, timeout: float, *, accept: str = "application/cose, */*"
    ) -> None:
        self.name = name
        self.media_types = accept
        self.location = location
        self.display = _display(location)
        self.timeout = timeout
        self.is_url = is_url(location)
        #: Validator of the last accepted document: the ETag (HTTP) or (mtime_ns, size).
        self._accepted: object = None

    async def fetch(self, session: aiohttp.ClientSession | None) -> tuple[bytes, object] | None:
        """The document and its validator, or None when unchanged since the last accepted one;
        ``session`` (:func:`fetch_session`) is needed for a URL only.

        Raises :class:`SourceError`; :class:`FetchTimeout` past ``timeout`` seconds in all.
        """
        if not self.is_url:
            return await asyncio.to_thread(self._fetch_file)
        if session is None:
            raise ValueError(f"{self.name}: a URL is fetched with a session")
        try:
            async with asyncio.timeout(self.timeout):
                return await self._fetch_url(session)
        except TimeoutError:
            raise FetchTimeout(f"no complete answer within {self.timeout:g} s") from None

    def accept(self, validator: object) -> None:
        """Remember the validator of a document that was verified and taken into use."""
        self._accepted = validator

    def forget(self) -> None:
        """Fetch the whole document again next time (its held copy was dropped)."""
        self._accepted = None

    def _fetch_file(self) -> tuple[bytes, object] | None:
        try:
            stat = os.stat(self.location)
            validator = (stat.st_mtime_ns, stat.st_size)
            if validator == self._accepted:
                return None
            if stat.st_size > MAX_SOURCE_BYTES:
                raise SourceError(f"larger than {MAX_SOURCE_BYTES} bytes")
            with open(self.location, "rb") as handle:
                data = handle.read(MAX_SOURCE_BYTES + 1)
        except OSError as error:
            raise SourceError(error.strerror or str(error)) from None
        if len(data) > MAX_SOURCE_BYTES:
            raise SourceError(f"larger than {MAX_SOURCE_BYTES} bytes")
        return data, validator

    async def _fetch_url(self, session: aiohttp.ClientSession) -> tuple[bytes, object] | None:
        headers = {
            "User-Agent": USER_AGENT,
            "Accept": self.media_types,
            "Accept-Encoding": "identity",
        }
        if isinstance(self._accepted, str):
            headers["If-None-Match"] = self._accepted
        try:
            async with session.get(self.location, headers=headers) as response:
                if response.status == 304:
                    return None
                if response.status != 200:
                    raise SourceError(f"HTTP {response.status}")
                coding = response.headers.get("Content-Encoding", "").strip().lower()
                if coding not in IDENTITY_CODINGS:
                    raise SourceError(
                        f"sent with Content-Encoding {coding[:32]!r}, not as published "
                        "(asked for identity)"
                    )
                length = response.content_length
                if length is not None and length > MAX_SOURCE_BYTES:
                    raise SourceError(f"larger than {MAX_SOURCE_BYTES} bytes")
                body = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > MAX_SOURCE_BYTES:
                        raise SourceError(f"larger than {MAX_SOURCE_BYTES} bytes")
                etag = response.headers.get("ETag")
        except (aiohttp.ClientError, OSError, ValueError) as error:
            raise SourceError(str(error) or type(error).__name__) from None
        return bytes(body), etag


@dataclass
class _Held:
    """A status list in use, with the signed bytes it was verified from."""

    data: bytes
    status_list: _native.StatusList


class TrustSource:
    """The holder of the current :class:`Snapshot` and its background refresh.

    ``make_verifiers`` builds the core verifiers of the first snapshot
    (:func:`apcv_verify.service.startup.build_verifiers`); later snapshots derive from them
    with ``with_trust_list``/``with_status_lists`` so that the replay store and the policies
    carry over.
    """

    def __init__(
        self,
        config: Config,
        make_verifiers: Callable[[TrustMaterial], Mapping[int, _native.Verifier]],
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        trust = config.trust
        self._anchors = [read_anchor(path) for path in trust.anchors]
        self._make_verifiers = make_verifiers
        self.refresh_seconds = trust.refresh_seconds
        self.status_grace_seconds = config.policy.status_grace_seconds
        self.expired_grace_seconds = trust.expired_grace_seconds
        timeout = trust.http_timeout_seconds
        self._trust_source = Source(TRUST_LIST_SOURCE, trust.trust_list, timeout)
        self._status_sources = [
            Source(f"status_lists[{index}]", location, timeout)
            for index, location in enumerate(trust.status_lists)
        ]
        #: The TLS context of https:// fetches from trust.http_tls_* (None: aiohttp's default),
        #: loaded now (a bad file is a configuration error at start), then again at a refresh
        #: after its files changed, the last good one kept when they cannot be loaded.
        tls_paths = [
            path for path in (trust.http_tls_ca, trust.http_tls_cert, trust.http_tls_key) if path
        ]
        self._tls = (
            RenewedFiles(tls_paths, lambda: list_tls_context(trust), _tls_refused)
            if tls_paths
            else None
        )
        self._held: dict[str, _Held] = {}
        self._current: Snapshot | None = None
        self._task: asyncio.Task[None] | None = None
        #: Set by stop(): a refresh running in its thread fetches nothing more.
        self._stopping = False
        #: Every trust metric (counters, gauges of the material in use, expiry per source).
        self.metrics = TrustMetrics(self, CollectorRegistry() if registry is None else registry)

    # -- reading ---------------------------------------------------------------------------------

    @property
    def current(self) -> Snapshot | None:
        """The snapshot in use, or None while no trust list is loaded yet. Read it once per
        call: the reference stays valid (and unchanged) however many swaps follow."""
        return self._current

    def refuses(self, snapshot: Snapshot, now: float) -> bool:
        """True when ``snapshot``'s trust list is past its expiry plus
        ``trust.expired_grace_seconds`` (docs/profile.md §6.3): it must not be used any more."""
        return now > snapshot.trust_list.expires_at + self.expired_grace_seconds

    @property
    def status_sources(self) -> int:
        """How many status lists are configured (``trust.status_lists``)."""
        return len(self._status_sources)

    @property
    def material(self) -> TrustMaterial | None:
        """The material of the current snapshot (for the trust metrics)."""
        snapshot = self._current
        return None if snapshot is None else snapshot.material

    def held_status_lists(self) -> dict[str, _native.StatusList]:
        """The status lists in use, by source name."""
        return {name: held.status_list for name, held in dict(self._held).items()}

    # -- loading ---------------------------------------------------------------------------------

    def seed(self, material: TrustMaterial) -> None:
        """Start from material already loaded and verified from these sources, in order
        (trust.material.load_trust_material); the sources are read again at the first refresh."""
        if len(material.status_lists) != len(self._status_sources):
            raise ValueError("seed material does not match trust.status_lists")
        # Without the signed bytes a seeded list cannot be verified again: under a new trust
        # list it is dropped and fetched again (_reverify).
        self._held = {
            source.name: _Held(b"", status_list)
            for source, status_list in zip(self._status_sources, material.status_lists, strict=True)
        }
        self._install(material.trust_list, material.status_lists)

    async def load_initial(self, now: int | None = None) -> None:
        """The first load, at start. A file source that fails raises (a configuration error
        is reported at start, as before refresh existed); a URL source that fails is logged
        and retried by the refresh task, the server answering NOT_SERVING meanwhile."""
        await self.refresh(now, strict_files=True)

    async def refresh(self, now: int | None = None, *, strict_files: bool = False) -> bool:
        """Fetch every source once, all at the same time, and swap in a new snapshot as soon
        as a fetched list is verified; returns True when at least one swap happened.

        Each fetch has its own overall deadline (``trust.http_timeout_seconds``), so a slow or
        stuck source delays nobody else: the trust list is applied first (status lists are
        verified under it), then each status list as soon as it arrives. Never raises for a
        bad or unreachable source unless ``strict_files`` and the source is a file.
        """
        if self._stopping:
            return False
        at = int(time.time()) if now is None else now
        tls = None
        if self._tls is not None:
            # In a thread: loading a CA bundle takes milliseconds the calls' loop should not
            # wait.
            await asyncio.to_thread(self._tls.renew)
            tls = self._tls.current
        async with fetch_session(tls) as session:
            trust = asyncio.ensure_future(self._fetch(self._trust_source, session, strict_files))
            statuses = [
                asyncio.ensure_future(self._fetch_status(source, session, strict_files))
                for source in self._status_sources
            ]
            try:
                return await self._apply_as_fetched(trust, statuses, at, strict_files)
            finally:
                for task in (trust, *statuses):
                    task.cancel()
                await asyncio.gather(trust, *statuses, return_exceptions=True)

    async def _apply_as_fetched(
        self,
        trust: asyncio.Future[tuple[bytes, object] | None],
        statuses: Sequence[asyncio.Future[tuple[Source, tuple[bytes, object] | None]]],
        now: int,
        strict_files: bool,
    ) -> bool:
        """Take fetched lists into use: the trust list first, then each status list as it
        arrives. Until a first snapshot exists, everything fetched is installed together, so
        no call ever sees a trust list without the status lists that came with it."""
        current = self._current
        first_load = current is None
        trust_list = None if current is None else current.trust_list
        held = dict(self._held)
        changed = False
        fetched = await trust
        if fetched is not None:
            verified = await asyncio.to_thread(
                self._verify_trust_list, fetched, trust_list, held, now, strict_files
            )
            if verified is not None:
                trust_list = verified
                changed = True
                if not first_load:
                    self._take(trust_list, held, trust_list_changed=True)
        if trust_list is None:
            return False  # nothing can be verified without a trust list
        for arrival in asyncio.as_completed(statuses):
            source, fetched = await arrival
            if fetched is not None and await asyncio.to_thread(
                self._verify_status_list, source, fetched, held, trust_list, now, strict_files
            ):
                changed = True
                if not first_load:
                    self._take(trust_list, held, trust_list_changed=False)
        if first_load and changed:
            self._take(trust_list, held, trust_list_changed=True)
        return changed

    async def _fetch(
        self, source: Source, session: aiohttp.ClientSession, strict_files: bool
    ) -> tuple[bytes, object] | None:
        try:
            return await source.fetch(session)
        except SourceError as error:
            self._failed(source, error.reason, str(error))
            if strict_files and not source.is_url:
                raise
            return None

    async def _fetch_status(
        self, source: Source, session: aiohttp.ClientSession, strict_files: bool
    ) -> tuple[Source, tuple[bytes, object] | None]:
        return source, await self._fetch(source, session, strict_files)

    def _verify_trust_list(
        self,
        fetched: tuple[bytes, object],
        held_list: _native.TrustList | None,
        held: dict[str, _Held],
        now: int,
        strict: bool,
    ) -> _native.TrustList | None:
        """A fetched trust list, verified against the anchors and the held sequence; the held
        status lists are verified again under it (in ``held``). None when it is refused or
        is the list already held."""
        data, validator = fetched
        held_seq = None if held_list is None else held_list.seq
        try:
            trust_list = _native.TrustList.verify(data, self._anchors, now, held_seq)
        except _native.TrustListError as error:
            self._failed(self._trust_source, _refusal(error), str(error))
            if strict and not self._trust_source.is_url:
                raise
            return None
        self._trust_source.accept(validator)
        if held_list is not None and not _trust_list_differs(held_list, trust_list):
            return None
        self._reverify(held, trust_list, now)
        return trust_list

    def _take(
        self, trust_list: _native.TrustList, held: dict[str, _Held], *, trust_list_changed: bool
    ) -> None:
        """Install a snapshot of ``trust_list`` and the status lists in ``held``."""
        self._held = dict(held)
        self._install(
            trust_list,
            tuple(held[s.name].status_list for s in self._status_sources if s.name in held),
        )
        log.info(
            "trust_material_loaded",
            trust_list_seq=trust_list.seq,
            trust_list_changed=trust_list_changed,
            status_lists=len(held),
            status_lists_configured=len(self._status_sources),
        )

    def _reverify(self, held: dict[str, _Held], trust_list: _native.TrustList, now: int) -> None:
        """Verify every held status list again under a new trust list; drop the refused.

        Judged at ``min(now, exp)``: a list past its expiry but within the grace period is
        kept for the core's grace policy rather than dropped for its age.
        """
        for name, item in list(held.items()):
            source = next(s for s in self._status_sources if s.name == name)
            if not item.data:  # seeded: fetched again at the next refresh
                del held[name]
                source.forget()
                continue
            at = min(now, item.status_list.expires_at)
            try:
                held[name] = _Held(item.data, _native.StatusList.verify(item.data, trust_list, at))
            except _native.StatusListError as error:
                del held[name]
                source.forget()
                self._failed(source, "untrusted", str(error))

    def _verify_status_list(
        self,
        source: Source,
        fetched: tuple[bytes, object],
        held: dict[str, _Held],
        trust_list: _native.TrustList,
        now: int,
        strict_files: bool,
    ) -> bool:
        """Verify a fetched status list under ``trust_list`` and put it in ``held``; True when
        it is new (refused, rolled back or unchanged: False)."""
        data, validator = fetched
        try:
            status_list = _native.StatusList.verify(data, trust_list, now)
        except _native.StatusListError as error:
            self._failed(source, "refused", str(error))
            if strict_files and not source.is_url:
                raise
            return False
        old = held.get(source.name)
        if old is not None and status_list.issued_at < old.status_list.issued_at:
            self._failed(
                source,
                "rollback",
                f"issued at {status_list.issued_at}, before the list held "
                f"({old.status_list.issued_at})",
            )
            return False
        source.accept(validator)
        if old is not None and old.data == data:
            return False
        held[source.name] = _Held(data, status_list)
        return True

    def _install(
        self, trust_list: _native.TrustList, status_lists: Sequence[_native.StatusList]
    ) -> None:
        material = TrustMaterial(trust_list, tuple(status_lists))
        previous = self._current
        if previous is None:
            verifiers = dict(self._make_verifiers(material))
        else:
            verifiers = {
                delay: verifier.with_trust_list(trust_list).with_status_lists(list(status_lists))
                for delay, verifier in previous.verifiers.items()
            }
        # One reference assignment: a call sees the old snapshot or the new one, never a mix.
        self._current = Snapshot(material, verifiers)
        self.metrics.swapped()

    def _failed(self, source: Source, reason: str, detail: str) -> None:
        self.metrics.refresh_failures.labels(source=source.name, reason=reason).inc()
        log.warning(
            "trust_refresh_failed",
            source=source.name,
            location=source.display,
            reason=reason,
            detail=detail,
            kept_last_good=self._current is not None,
        )

    # -- background refresh ----------------------------------------------------------------------

    def start(self, on_loaded: Callable[[], Awaitable[None]] | None = None) -> None:
        """Start the refresh task on the running loop; ``on_loaded`` is awaited once, after
        the first snapshot is installed (at once if there is one already)."""
        self._task = asyncio.get_running_loop().create_task(self._run(on_loaded))

    async def stop(self) -> None:
        """Cancel the refresh task and wait for it: a fetch in progress is abandoned at once
        (shutdown never waits for a list server), and no refresh starts afterwards."""
        self._stopping = True
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self, on_loaded: Callable[[], Awaitable[None]] | None) -> None:
        announced = False
        while True:
            if self._current is not None and not announced:
                announced = True
                if on_loaded is not None:
                    await on_loaded()
            if self._current is not None and self.refresh_seconds <= 0:
                return  # refresh disabled: loaded once
            delay = self.refresh_seconds
            if self._current is None:
                delay = INITIAL_RETRY_SECONDS if delay <= 0 else min(delay, INITIAL_RETRY_SECONDS)
            await asyncio.sleep(delay)
            try:
                await self.refresh()
            except Exception:  # never let the refresh task die: the last good list stays
                log.exception("trust_refresh_error")


def _tls_refused(error: Exception) -> None:
    log.warning("trust_tls_reload_failed", detail=str(error), kept_last_good=True)


def _refusal(error: _native.TrustListError) -> str:
    return "rollback" if "rollback" in str(error).lower() else "refused"


def _trust_list_differs(old: _native.TrustList, new: _native.TrustList) -> bool:
    """Whether a verified trust list is another list than the one held (same seq and iat
    is the same publication fetched again, docs/profile.md §6.3)."""
    return (old.seq, old.issued_at, old.expires_at, len(old)) != (
        new.seq,
        new.issued_at,
        new.expires_at,
        len(new),
    )
