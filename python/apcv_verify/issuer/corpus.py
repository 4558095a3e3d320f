"""A load-test corpus: a realistic mix of scans, each with the decision the verifier must give.

:func:`make_corpus` writes, in one directory,

- ``pki/``: a fresh :class:`~.pki.DemoPKI` (anchor, issuers, trust list, its status list) and
  the corpus's own status list ``pki/status/corpus-1.cwt`` (the corpus's credentials,
  delegations and AMC attestations, with its revoked and suspended entries);
- ``scans.jsonl``: one scan per line, in the order to send them — ``request_id``,
  ``reader_id``, the scan (``qr_text``, or ``nfc`` in base64), its ``kind``, the
  ``expect``\\ ed ``decision`` and ``reason`` (docs/profile.md §8 codes, e.g. ``ACCEPTED`` /
  ``OK``), the pseudonymous ``credential`` it presents (``c000042``; none for noise) and, for
  the second presentation of a replayed code, ``after``: the ``request_id`` of the first;
- ``corpus.json``: how it was made (seed, mix, repeat rate), what it holds (items per kind,
  per expected decision), the plan's digest, until when it can be sent (``valid_until``) and
  the files a server needs (``anchor``, ``trust_list``, ``status_lists``).

The kinds and their expected answers are :data:`KINDS`. A replayed code is two items: its
first presentation at one reader (``replay_first``, accepted) and, a few items later, the
same QR text at another reader (``replayed``, ``REPLAYED``, docs/profile.md §7.4). Under load
the two may go out on different connections, so the second is expected ``REPLAYED`` only
once the first has been answered: a sender must hold an item with ``after`` back until the
item it names has its answer, and drop it when that item got no answer at all (loadtest/
does both). Every other item is independent of the rest: its presentation has its own
``cti``, so sending the items in any order, on any number of connections, gives the same
decisions.

The **repeat rate** is the share of items that present a credential already presented by an
earlier item (a patient seen again: a new presentation, a new ``cti``, never a replay). The
**mix** gives relative weights per kind; item counts are exact (largest remainder), a replayed
pair counting as two items.

Reproducible: the same seed, count, mix, repeat rate and readers give the same plan — the
same kinds, readers, credentials, persons presented, uses and expected decisions in the same
order, hence the same ``plan_sha256`` — while keys, signatures, ``cti`` values, times and the
``request_id`` prefix are new at each run (they come from the operating system's randomness
and clock: two corpora never share a presentation or a request id).

Presentations are made with ``iat`` = the generation time and the profile's longest lifetime
(300 s, §2.5): send the corpus before ``valid_until`` (that time plus 300 s), the verifier's
clock skew aside. Send it once per verifier (its replay store remembers every ``cti``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from .claims import (
    INS_DEMO_OID,
    QR_PREFIX,
    AmoRights,
    Beneficiary,
    Identity,
    Person,
    issue_credential,
    make_amc_attestation,
    make_delegation,
    make_presentation,
    matricule,
    qr_text,
)
from .cose import tamper_signature
from .keys import Alg, SigningKey
from .lists import STATUS_INVALID, STATUS_SUSPENDED, StatusListBuilder
from .pki import (
    DEMO_AMC_DOMAINS,
    DEMO_AMC_ISS,
    DEMO_AMC_NUMBER,
    DEMO_AMO_ISS,
    DEMO_LIST_VALIDITY,
    DEMO_STATUS_TTL,
    DemoPKI,
)

__all__ = [
    "CORPUS_MANIFEST",
    "CORPUS_SCANS",
    "CORPUS_STATUS_URI",
    "DEFAULT_MIX",
    "KINDS",
    "MIX_KINDS",
    "CorpusError",
    "CorpusSummary",
    "Expectation",
    "make_corpus",
    "parse_mix",
    "read_scans",
]

#: The manifest and the scans, in the corpus directory.
CORPUS_MANIFEST: Final = "corpus.json"
CORPUS_SCANS: Final = "scans.jsonl"
CORPUS_FORMAT: Final = "apcv-corpus/1"
#: The corpus's own status list (its credentials, delegations and attestations).
CORPUS_STATUS_URI: Final = "https://status.apcv.example/corpus/1"
_CORPUS_STATUS_FILE: Final = "status/corpus-1.cwt"

#: The profile's longest presentation lifetime (docs/profile.md §2.5, §7.3): the corpus lasts
#: as long as it can.
PRESENTATION_LIFETIME: Final = 300
#: A replayed code's second presentation comes 1 to this many items after its first.
REPLAY_GAP: Final = 20
_DAY: Final = 86_400
_YEAR: Final = 365 * _DAY


@dataclass(frozen=True)
class Expectation:
    """The answer a kind of scan must get: docs/profile.md §8 codes."""

    decision: str  # "ACCEPTED" | "REJECTED"
    reason: str
    meaning: str

    def to_json(self) -> dict[str, str]:
        return {"decision": self.decision, "reason": self.reason}


_ACCEPTED = "ACCEPTED"
_REJECTED = "REJECTED"

#: Every kind of item, with the answer it must get.
KINDS: Final[Mapping[str, Expectation]] = {
    "valid": Expectation(_ACCEPTED, "OK", "a holder presents their own card (mostly for care)"),
    "beneficiary": Expectation(_ACCEPTED, "OK", "a holder presents a child attached to the card"),
    "amc": Expectation(_ACCEPTED, "OK", "with an AMC (complementary insurance) attestation"),
    "delegated": Expectation(_ACCEPTED, "OK", "a trusted person presents from their own phone"),
    "replay_first": Expectation(_ACCEPTED, "OK", "a code's first presentation"),
    "replayed": Expectation(_REJECTED, "REPLAYED", "the same code, later, at another reader"),
    "expired": Expectation(_REJECTED, "CREDENTIAL_EXPIRED", "the credential has expired"),
    "revoked": Expectation(_REJECTED, "REVOKED", "the credential is revoked"),
    "suspended": Expectation(_REJECTED, "SUSPENDED", "the credential is suspended"),
    "tampered": Expectation(_REJECTED, "BAD_DEVICE_SIGNATURE", "one bit of the signature flipped"),
    "unknown_issuer": Expectation(
        _REJECTED, "UNKNOWN_ISSUER", "a credential signed by a key outside the trust list"
    ),
    "malformed": Expectation(_REJECTED, "MALFORMED", "noise: no presentation of the profile"),
}

#: The kinds a mix names (``replayed`` stands for the pair: ``replay_first`` + ``replayed``).
MIX_KINDS: Final = tuple(kind for kind in KINDS if kind != "replay_first")

#: Mostly valid presentations, a few of every failure a reception desk meets.
DEFAULT_MIX: Final[Mapping[str, float]] = {
    "valid": 72,
    "beneficiary": 6,
    "amc": 5,
    "delegated": 3,
    "replayed": 2,
    "expired": 3,
    "revoked": 2,
    "suspended": 1,
    "tampered": 1,
    "unknown_issuer": 1,
    "malformed": 4,
}

#: Uses of ordinary presentations and how often (docs/profile.md §2.5).
_USES: Final = (("care", 80), ("dmp", 8), ("dp", 8), ("auth", 4))
#: Share of new holders with children attached (used for every kind, not only beneficiary).
_FAMILY_SHARE: Final = 0.25
#: Share of credentials issued by the Ed25519 AMO key (the rest: ES256).
_ED25519_SHARE: Final = 0.2

# Fictional names only (no real person behind any of them).
_BIRTH_NAMES: Final = (
    "MARTIN", "BERNARD", "THOMAS", "PETIT", "ROBERT", "RICHARD", "DURAND", "DUBOIS", "MOREAU",
    "LAURENT", "SIMON", "MICHEL", "LEFEBVRE", "LEROY", "ROUX", "DAVID", "BERTRAND", "MOREL",
)  # fmt: skip
_GIVEN: Final = {
    "F": ("Camille", "Léa", "Manon", "Chloé", "Inès", "Jeanne", "Louise", "Alice", "Zoé"),
    "M": ("Lucas", "Hugo", "Louis", "Gabriel", "Arthur", "Jules", "Paul", "Adam", "Noé"),
}
_DEPARTMENTS: Final = (*(f"{n:02d}" for n in range(1, 96) if n != 20), "2A", "2B")


class CorpusError(ValueError):
    """A mix, count or option that cannot make a corpus (the message names it)."""


def parse_mix(text: str) -> dict[str, float]:
    """``"valid=90,malformed=10"`` → weights by kind; kinds not named weigh 0."""
    mix: dict[str, float] = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        kind, equals, weight = part.partition("=")
        kind = kind.strip()
        if not equals or kind not in MIX_KINDS:
            raise CorpusError(f"mix: expected KIND=WEIGHT with KIND one of {', '.join(MIX_KINDS)}")
        try:
            value = float(weight)
        except ValueError:
            raise CorpusError(f"mix: the weight of {kind} is not a number") from None
        if not value >= 0:
            raise CorpusError(f"mix: the weight of {kind} is negative")
        mix[kind] = mix.get(kind, 0.0) + value
    if not any(mix.values()):
        raise CorpusError("mix: every weight is 0")
    return mix


def _item_counts(count: int, mix: Mapping[str, float]) -> dict[str, int]:
    """Exact items per kind for ``count`` items: replayed pairs first (two items each), then
    the rest by largest remainder."""
    total = sum(mix.values())
    pairs = int(mix.get("replayed", 0.0) / total * count) // 2
    rest = {kind: weight for kind, weight in mix.items() if kind != "replayed" and weight > 0}
    left = count - 2 * pairs
    if left and not rest:
        raise CorpusError("mix: only replayed pairs, so the count must be even")
    counts = {"replay_first": pairs, "replayed": pairs}
    if rest:
        weight = sum(rest.values())
        exact = {kind: w / weight * left for kind, w in rest.items()}
        counts.update({kind: int(value) for kind, value in exact.items()})
        short = left - sum(counts[kind] for kind in rest)
        for kind in sorted(rest, key=lambda k: (int(exact[k]) - exact[k], k))[:short]:
            counts[kind] += 1
    return {kind: counts.get(kind, 0) for kind in KINDS}


@dataclass
class _Holder:
    """A corpus credential and what presents it (kept in memory only)."""

    label: str
    device_key: SigningKey
    credential: bytes
    issuer_key: SigningKey
    sub: str
    person: Person
    beneficiaries: tuple[Beneficiary, ...]
    status_index: int
    delegation: tuple[SigningKey, bytes] | None = None
    attestation: bytes | None = None


@dataclass
class _Plan:
    """One item as planned from the seed, before any key or signature is made."""

    kind: str
    reader: str
    holder: int | None = None  # index into the holders of its pool
    pool: str = "ordinary"
    ben: int = 0
    use: str = "care"
    noise: int = 0  # which malformed variant
    partner: int | None = None  # replay pairs: the position of the other item


@dataclass
class CorpusSummary:
    """What :func:`make_corpus` wrote (also in ``corpus.json``)."""

    directory: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def scans_path(self) -> Path:
        return self.directory / CORPUS_SCANS

    @property
    def pki_directory(self) -> Path:
        return self.directory / "pki"


class _Generator:
    def __init__(self, pki: DemoPKI, rng: random.Random, now: int, readers: int) -> None:
        self.pki = pki
        self.rng = rng
        self.now = now
        self.readers = [f"desk-{n:02d}" for n in range(1, readers + 1)]
        self.pools: dict[str, list[_Holder | None]] = {
            "ordinary": [],
            "family": [],
            "revoked": [],
            "suspended": [],
        }
        self.status = StatusListBuilder(0, 2)  # replaced once the plan is known
        self.next_index = 0
        self.statuses: dict[int, int] = {}
        self.year = time.gmtime(now).tm_year

    # -- the plan (the seed's part) ----------------------------------------------------------

    def plan(self, counts: Mapping[str, int], repeat_rate: float) -> list[_Plan]:
        rng = self.rng
        units = [kind for kind, n in counts.items() for _ in range(n) if kind != "replayed"]
        rng.shuffle(units)
        order: list[_Plan] = []
        due: list[tuple[int, _Plan]] = []  # (position, second presentation)
        seen: dict[str, int] = {pool: 0 for pool in self.pools}

        def pick(pool: str) -> int:
            # A credential seen before (repeat_rate), else a new one.
            if seen[pool] and rng.random() < repeat_rate:
                return rng.randrange(seen[pool])
            seen[pool] += 1
            return seen[pool] - 1

        for kind in units:
            while due and due[0][0] <= len(order):
                order.append(due.pop(0)[1])
            item = _Plan(kind, rng.choice(self.readers))
            if kind == "malformed":
                item.noise = rng.randrange(4)
            else:
                item.pool = {"revoked": "revoked", "suspended": "suspended"}.get(kind, "ordinary")
                if kind == "beneficiary" or (
                    item.pool == "ordinary" and rng.random() < _FAMILY_SHARE
                ):
                    item.pool = "family"
                item.holder = pick(item.pool)
                if kind == "valid":
                    item.use = _weighted(rng, _USES)
            order.append(item)
            if kind == "replay_first":
                second = _Plan(
                    "replayed",
                    rng.choice([r for r in self.readers if r != item.reader] or [item.reader]),
                    holder=item.holder,
                    pool=item.pool,
                    partner=len(order) - 1,
                )
                position = len(order) + rng.randrange(REPLAY_GAP)
                due.append((position, second))
                due.sort(key=lambda entry: entry[0])
        order.extend(second for _, second in due)
        for position, item in enumerate(order):
            if item.kind == "replayed" and item.partner is not None:
                order[item.partner].partner = position
        for pool, n in seen.items():
            self.pools[pool] = [None] * n
        # Persons and ranks are part of the plan: drawn now, in order, from the seed.
        self.people = {
            pool: [self._draw_family(pool) for _ in range(n)] for pool, n in seen.items()
        }
        for item in order:
            if item.kind == "beneficiary" and item.holder is not None:
                children = self.people[item.pool][item.holder][1]
                item.ben = rng.choice(children).rank
        return order

    def _draw_family(self, pool: str) -> tuple[Person, tuple[Beneficiary, ...], bool]:
        holder = self._draw_person(adult=True)
        children: tuple[Beneficiary, ...] = ()
        if pool == "family":
            children = tuple(
                Beneficiary(rank, self._draw_person(adult=False))
                for rank in range(1, self.rng.randint(1, 3) + 1)
            )
        return holder, children, self.rng.random() < _ED25519_SHARE

    def _draw_person(self, *, adult: bool) -> Person:
        rng = self.rng
        sex = rng.choice("MF")
        first, last = (1935, self.year - 19) if adult else (self.year - 17, self.year)
        born = rng.randint(first, last)
        month = rng.randint(1, 12)
        department = rng.choice(_DEPARTMENTS)
        commune = f"{rng.randint(1, 999):03d}"
        number13 = (
            f"{1 if sex == 'M' else 2}{born % 100:02d}{month:02d}{department}{commune}"
            f"{rng.randint(1, 999):03d}"
        )
        identity = Identity(
            rng.choice(_BIRTH_NAMES),
            " ".join(rng.sample(_GIVEN[sex], rng.randint(1, 2))),
            sex,
            f"{born:04d}-{month:02d}-{rng.randint(1, 28):02d}",
            department + commune,
        )
        rights = AmoRights(
            "01",
            f"{rng.randint(1, 999):03d}",
            f"{rng.randint(1, 9999):04d}",
            f"{self.year - 1}-01-01",
            f"{self.year + 1}-12-31",
        )
        return Person(matricule(number13), INS_DEMO_OID, identity, rights)

    # -- the objects (fresh keys and signatures) ----------------------------------------------

    def _index(self, status: int = 0) -> int:
        index = self.next_index
        self.next_index += 1
        if status:
            self.statuses[index] = status
        return index

    def holder(self, pool: str, number: int) -> _Holder:
        found = self.pools[pool][number]
        if found is not None:
            return found
        person, children, ed25519 = self.people[pool][number]
        issuer_key = self.pki.amo_issuer_ed25519 if ed25519 else self.pki.amo_issuer
        status = {"revoked": STATUS_INVALID, "suspended": STATUS_SUSPENDED}.get(pool, 0)
        device_key = SigningKey.generate(Alg.ES256)
        made = _Holder(
            label=f"{pool[0]}{number:06d}",
            device_key=device_key,
            credential=b"",
            issuer_key=issuer_key,
            sub="corpus-" + secrets.token_hex(8),
            person=person,
            beneficiaries=children,
            status_index=self._index(status),
        )
        made.credential = self._credential(made, self.now - _DAY, self.now - _DAY + _YEAR)
        self.pools[pool][number] = made
        return made

    def _credential(
        self, holder: _Holder, nbf: int, exp: int, key: SigningKey | None = None
    ) -> bytes:
        return issue_credential(
            holder.issuer_key if key is None else key,
            iss=DEMO_AMO_ISS,
            sub=holder.sub,
            device_key=holder.device_key,
            holder=holder.person,
            beneficiaries=holder.beneficiaries,
            status_uri=CORPUS_STATUS_URI,
            status_index=holder.status_index,
            iat=nbf,
            nbf=nbf,
            exp=exp,
        )

    def _present(self, holder: _Holder, **claims: Any) -> bytes:
        claims.setdefault("credential", holder.credential)
        signer = claims.pop("signer", holder.device_key)
        return make_presentation(
            signer,
            claims.pop("credential"),
            iat=self.now,
            exp=self.now + PRESENTATION_LIFETIME,
            **claims,
        )

    def presentation(self, item: _Plan) -> bytes:
        """The scan of ``item`` (a presentation, or noise for ``malformed``)."""
        if item.kind == "malformed":
            return self._noise(item.noise)
        assert item.holder is not None
        holder = self.holder(item.pool, item.holder)
        kind = item.kind
        if kind in ("valid", "beneficiary", "replay_first", "revoked", "suspended"):
            return self._present(holder, ben=item.ben, use=item.use)
        if kind == "amc":
            if holder.attestation is None:
                holder.attestation = make_amc_attestation(
                    self.pki.amc_issuer,
                    iss=DEMO_AMC_ISS,
                    sub="contract-" + secrets.token_hex(6),
                    covered=[holder.person.ins, *(b.person.ins for b in holder.beneficiaries)],
                    amc_number=DEMO_AMC_NUMBER,
                    third_party_payment=True,
                    domains=DEMO_AMC_DOMAINS,
                    iat=self.now - _DAY,
                    nbf=self.now - _DAY,
                    exp=self.now - _DAY + _YEAR,
                    status_uri=CORPUS_STATUS_URI,
                    status_index=self._index(),
                )
            return self._present(holder, amc=[holder.attestation])
        if kind == "delegated":
            if holder.delegation is None:
                key = SigningKey.generate(Alg.ES256)
                holder.delegation = (
                    key,
                    make_delegation(
                        holder.issuer_key,
                        iss=DEMO_AMO_ISS,
                        sub="dlg-" + secrets.token_hex(8),
                        delegate_key=key,
                        for_credential=holder.sub,
                        ben=[0],
                        use=["care"],
                        who="trusted person",
                        status_uri=CORPUS_STATUS_URI,
                        status_index=self._index(),
                        iat=self.now - _DAY,
                        nbf=self.now - _DAY,
                        exp=self.now + 30 * _DAY,
                    ),
                )
            key, delegation = holder.delegation
            return self._present(holder, signer=key, dlg=delegation)
        if kind == "expired":
            expired_at = self.now - _DAY
            credential = self._credential(holder, expired_at - _YEAR, expired_at)
            return self._present(holder, credential=credential)
        if kind == "tampered":
            return tamper_signature(self._present(holder))
        if kind == "unknown_issuer":
            credential = self._credential(
                holder, self.now - _DAY, self.now + _YEAR, key=self.pki.rogue_issuer
            )
            return self._present(holder, credential=credential)
        raise AssertionError(f"no presentation for {kind}")

    def _noise(self, variant: int) -> bytes:
        """What else a reader may scan: never a presentation (MALFORMED, §7.2 step 1–2)."""
        if variant == 0:  # the prefix, then base45 that inflates to nothing
            alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
            return (QR_PREFIX + "".join(secrets.choice(alphabet) for _ in range(300))).encode()
        if variant == 1:  # a real code cut short (a misread)
            text = qr_text(self._present(self._spare()))
            return text[: len(text) // 2].encode()
        if variant == 2:  # another QR code altogether
            return f"HTTPS://WWW.EXAMPLE.FR/RDV/{secrets.token_hex(8).upper()}".encode()
        return b"\x00" + secrets.token_bytes(200)  # NFC garbage

    def _spare(self) -> _Holder:
        """A holder for noise (the first ordinary one, made when the plan has none)."""
        if not self.pools["ordinary"]:
            self.pools["ordinary"].append(None)
            self.people["ordinary"] = [self._draw_family("ordinary")]
        return self.holder("ordinary", 0)

    def status_list(self) -> bytes:
        builder = StatusListBuilder(max(self.next_index, 1024), 2)
        for index, status in self.statuses.items():
            builder.set(index, status)
        return builder.sign(
            self.pki.status_signer,
            uri=CORPUS_STATUS_URI,
            iat=self.now,
            exp=self.now + DEMO_LIST_VALIDITY,
            ttl=DEMO_STATUS_TTL,
        )


def _weighted(rng: random.Random, choices: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([c for c, _ in choices], [w for _, w in choices])[0]


def make_corpus(
    directory: str | Path,
    *,
    count: int,
    seed: int = 0,
    mix: Mapping[str, float] = DEFAULT_MIX,
    repeat_rate: float = 0.3,
    readers: int = 8,
    now: int | None = None,
    progress: Callable[[int], object] | None = None,
) -> CorpusSummary:
    """Write a corpus of ``count`` scans to ``directory`` (see the module's docstring);
    ``progress`` is called with the number of items made since its last call."""
    if count < 1:
        raise CorpusError("count must be at least 1")
    if not 0 <= repeat_rate < 1:
        raise CorpusError("repeat rate must be in [0, 1)")
    if readers < 2 and mix.get("replayed", 0):
        raise CorpusError("a replayed code needs at least 2 readers")
    if readers < 1:
        raise CorpusError("readers must be at least 1")
    root = Path(directory)
    now = int(time.time()) if now is None else now
    counts = _item_counts(count, mix)
    pki = DemoPKI.create(root / "pki", now=now)
    generator = _Generator(pki, random.Random(seed), now, readers)
    plan = generator.plan(counts, repeat_rate)
    digest = hashlib.sha256()
    repeats = fresh = 0
    used: set[tuple[str, int]] = set()
    # Request ids are new for each corpus: a verifier keeps answers by (caller, reader,
    # request_id) to give them back to a resend, so two corpora must never share one.
    prefix = secrets.token_hex(4)
    first_qr: dict[int, str] = {}  # each replayed code's first presentation, by position
    scans_path = root / CORPUS_SCANS
    with scans_path.open("w", encoding="utf-8") as out:
        for position, item in enumerate(plan):
            # A replayed code is its first presentation's QR text again.
            presented = b"" if item.kind == "replayed" else generator.presentation(item)
            line: dict[str, Any] = {
                "request_id": f"{prefix}-{position:07d}",
                "reader_id": item.reader,
                "kind": item.kind,
                "expect": KINDS[item.kind].to_json(),
            }
            if item.holder is not None:
                line["credential"] = f"{item.pool[0]}{item.holder:06d}"
                if item.kind != "replayed":
                    key = (item.pool, item.holder)
                    repeats, fresh = (repeats + 1, fresh) if key in used else (repeats, fresh + 1)
                    used.add(key)
            if item.kind == "replayed" and item.partner is not None:
                line["after"] = f"{prefix}-{item.partner:07d}"
            # The plan's digest: everything the seed decides, nothing the run makes.
            planned = {
                **{key: value for key, value in line.items() if key not in ("request_id", "after")},
                "position": position,
                "after": item.partner if item.kind == "replayed" else None,
                "ben": item.ben,
                "use": item.use,
                "noise": item.noise,
            }
            digest.update(json.dumps(planned, sort_keys=True).encode() + b"\n")
            if item.kind == "replayed" and item.partner is not None:
                line["qr_text"] = first_qr[item.partner]
            elif item.kind == "malformed" and item.noise == 3:
                line["nfc"] = base64.b64encode(presented).decode()
            elif item.kind == "malformed":
                line["qr_text"] = presented.decode()
            else:
                line["qr_text"] = qr_text(presented)
            if item.kind == "replay_first":
                first_qr[position] = line["qr_text"]
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
            if progress is not None:
                progress(1)
    status_path = pki.directory / _CORPUS_STATUS_FILE
    status_path.parent.mkdir(parents=True, exist_ok=True)
    status_path.write_bytes(generator.status_list())
    expected: dict[str, int] = {}
    for kind, n in counts.items():
        if n:
            answer = f"{KINDS[kind].decision}/{KINDS[kind].reason}"
            expected[answer] = expected.get(answer, 0) + n
    manifest = {
        "format": CORPUS_FORMAT,
        "seed": seed,
        "count": len(plan),
        "mix": {kind: mix.get(kind, 0.0) for kind in MIX_KINDS},
        "repeat_rate": repeat_rate,
        "repeat_rate_achieved": round(repeats / max(repeats + fresh, 1), 4),
        "credentials": fresh,
        "readers": generator.readers,
        "created_at": now,
        "valid_until": now + PRESENTATION_LIFETIME,
        "kinds": {kind: n for kind, n in counts.items() if n},
        "expected": dict(sorted(expected.items())),
        "plan_sha256": digest.hexdigest(),
        "scans": CORPUS_SCANS,
        "anchor": "pki/anchor.pem",
        "trust_list": "pki/trust-list.cose",
        "status_lists": [
            *(str(path.relative_to(root)) for path in pki.status_list_paths.values()),
            f"pki/{_CORPUS_STATUS_FILE}",
        ],
        "allow_test_identities": True,
    }
    (root / CORPUS_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return CorpusSummary(root, manifest)


def read_scans(directory: str | Path) -> Iterator[dict[str, Any]]:
    """The items of the corpus in ``directory``, in order."""
    with (Path(directory) / CORPUS_SCANS).open(encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)
