"""The demonstration PKI (:class:`DemoPKI`): an anchor, AMO, AMC and status-list issuers, a rogue
issuer, holders with credentials and device keys, a signed trust list and status lists, all
kept in a directory — what the demo, the tests and integrators' test benches start from."""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .claims import (
    _CLAIM_EXP,
    _CLAIM_IAT,
    _CLAIM_ISS,
    _CLAIM_NBF,
    _CLAIM_STATUS,
    _CLAIM_SUB,
    INS_DEMO_OID,
    INS_NIR_OID,
    AmoRights,
    Beneficiary,
    Identity,
    Person,
    issue_credential,
    make_amc_attestation,
    make_delegation,
    make_presentation,
    matricule,
)
from .cose import parse_sign1, sign1, tamper_signature
from .keys import Alg, SigningKey
from .lists import (
    AMC_ROLE,
    AMO_ROLE,
    STATUS_INVALID,
    STATUS_ROLE,
    STATUS_SUSPENDED,
    STATUS_VALID,
    StatusListBuilder,
    TrustEntry,
    make_trust_list,
)

# --- Demonstration PKI ----------------------------------------------------------------------------

DEMO_AMO_ISS = "https://amo.apcv.example"
DEMO_AMC_ISS = "https://amc.apcv.example"
DEMO_STATUS_ISS = "https://status.apcv.example"
DEMO_STATUS_URI = "https://status.apcv.example/amo/1"
#: AMC organisation number of the demo complementary insurer (fictional).
DEMO_AMC_NUMBER = "012345678"
#: Default care domains of demo AMC attestations.
DEMO_AMC_DOMAINS = ("PHAR", "MED", "HOSP", "OPT", "DENT")
DEMO_DELEGATION_VALIDITY = 30 * 86_400

_DAY = 86_400
_YEAR = 365 * _DAY
#: Demo material is meant to stay usable for a while after it is made (the demo, CI caches).
DEMO_LIST_VALIDITY = _YEAR
DEMO_KEY_VALIDITY = 5 * _YEAR
DEMO_CREDENTIAL_VALIDITY = _YEAR
#: 1,024 entries × 2 bits: room for revoked (1) and suspended (2) samples (profile §2.9).
DEMO_STATUS_LIST_SIZE = 1024
DEMO_STATUS_BITS = 2
DEMO_STATUS_TTL = 3600

_MANIFEST = "pki.json"
_MANIFEST_FORMAT = "apcv-demo-pki/1"
_ANCHOR = "anchor"
_AMO_ES256 = "amo-es256"
_AMO_ED25519 = "amo-ed25519"
_AMC = "amc"
_STATUS = "status"
_ROGUE_AMO = "rogue-amo"

#: Trusted demo keys: name → (algorithm, trust-list role, iss).
_DEMO_TRUSTED_KEYS: dict[str, tuple[Alg, str, str]] = {
    _AMO_ES256: (Alg.ES256, AMO_ROLE, DEMO_AMO_ISS),
    _AMO_ED25519: (Alg.EDDSA, AMO_ROLE, DEMO_AMO_ISS),
    _AMC: (Alg.ES256, AMC_ROLE, DEMO_AMC_ISS),
    _STATUS: (Alg.ES256, STATUS_ROLE, DEMO_STATUS_ISS),
}

#: Names of the sample presentations :meth:`DemoPKI.samples` makes (the demo's six cases).
DEMO_SAMPLE_NAMES = ("accepted", "expired", "revoked", "replayed", "tampered", "wrong_issuer")


@dataclass(frozen=True)
class _DemoHolderSpec:
    name: str
    note: str
    number13: str
    identity: Identity
    issuer: str = _AMO_ES256
    children: tuple[tuple[int, str, Identity], ...] = ()
    revoked: bool = False


def _demo_holder_specs() -> tuple[_DemoHolderSpec, ...]:
    """Fictional people; NIR numbers are made up, keys computed (profile §5.2)."""
    return (
        _DemoHolderSpec(
            "alice",
            "ordinary holder, ES256 issuer",
            "2850675115042",
            Identity("MARTIN", "Alice Jeanne", "F", "1985-06-14", "75115"),
        ),
        _DemoHolderSpec(
            "corsica",
            "born in Corse-du-Sud (2A), Ed25519 issuer",
            "172032A004057",
            Identity("SANTONI", "Ange Marie", "M", "1972-03-08", "2A004"),
            issuer=_AMO_ED25519,
        ),
        _DemoHolderSpec(
            "lunar",
            "lunar birth date 1957-00-00, born abroad",
            "2572099350012",
            Identity("BENALI", "Fatima", "F", "1957-00-00", "99350"),
        ),
        _DemoHolderSpec(
            "family",
            "holder with a beneficiary child of rank 1",
            "1800569123087",
            Identity("DURAND", "Paul Henri", "M", "1980-05-17", "69123"),
            children=((1, "2150969123045", Identity("DURAND", "Léa", "F", "2015-09-21", "69123")),),
        ),
        _DemoHolderSpec(
            "revoked",
            "credential revoked in the status list",
            "1491159350121",
            Identity("LEROY", "Bernard", "M", "1949-11-02", "59350"),
            revoked=True,
        ),
    )


@dataclass(frozen=True)
class DemoHolder:
    """A demo holder: phone key, credential and where its status lives."""

    name: str
    device_key: SigningKey
    credential: bytes
    issuer: str  # name of the issuer key in the PKI
    status_uri: str
    status_index: int
    beneficiary_ranks: tuple[int, ...]

    def __repr__(self) -> str:
        return f"DemoHolder({self.name!r})"


def _now() -> int:
    return int(time.time())


def _write_bytes(path: Path, data: bytes, *, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    if private:
        os.chmod(tmp, 0o600)
    os.replace(tmp, path)  # atomic: a watcher reloading the file never reads half of it


class DemoPKI:
    """A complete, self-consistent demonstration PKI kept in a directory.

    Layout (paths relative to ``directory``)::

        pki.json                         manifest (no personal data)
        anchor.cose_key, anchor.pem      trust anchor public key (COSE_Key bytes / PEM)
        keys/<name>.pem                  private keys (PKCS#8): anchor, amo-es256, amo-ed25519,
                                         amc, status, rogue-amo (NOT in the trust list)
        trust-list.cose                  trust list signed by the anchor (profile §2.8)
        status/amo-1.cwt                 status list for https://status.apcv.example/amo/1 (2 bits)
        holders/<name>/device.key.pem    the holder's phone key (ES256)
        holders/<name>/credential.cose   the holder's credential (profile §2.4)

    Holders: ``alice`` (ordinary), ``corsica`` (born in 2A, Ed25519 issuer), ``lunar`` (birth date
    1957-00-00), ``family`` (child beneficiary rank 1), ``revoked`` (revoked in the status list).
    With ``test_identities=True`` they carry the demonstration OID ``INS_DEMO_OID``, so the
    verifier must run with a policy that allows test identities.
    """

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.directory = directory
        self.manifest = manifest
        self.keys: dict[str, SigningKey] = {
            name: SigningKey.from_pem((directory / entry["file"]).read_bytes())
            for name, entry in manifest["keys"].items()
        }
        self.holders: dict[str, DemoHolder] = {
            name: DemoHolder(
                name=name,
                device_key=SigningKey.from_pem(
                    (directory / entry["dir"] / "device.key.pem").read_bytes()
                ),
                credential=(directory / entry["dir"] / "credential.cose").read_bytes(),
                issuer=entry["issuer"],
                status_uri=entry["status_uri"],
                status_index=entry["status_index"],
                beneficiary_ranks=tuple(entry["beneficiary_ranks"]),
            )
            for name, entry in manifest["holders"].items()
        }

    # -- creation and loading ------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike[str],
        *,
        now: int | None = None,
        test_identities: bool = True,
    ) -> DemoPKI:
        """Make a fresh PKI in ``directory`` (created if needed; existing demo files replaced)."""
        root = Path(directory)
        now = _now() if now is None else now
        key_nbf, key_exp = now - 30 * _DAY, now + DEMO_KEY_VALIDITY
        manifest: dict[str, Any] = {
            "format": _MANIFEST_FORMAT,
            "created_at": now,
            "test_identities": test_identities,
            "keys": {},
            "holders": {},
            "status_lists": {},
        }

        def new_key(name: str, alg: Alg, **info: Any) -> SigningKey:
            key = SigningKey.generate(alg)
            file = f"keys/{name}.pem"
            _write_bytes(root / file, key.to_pem(), private=True)
            manifest["keys"][name] = {"file": file, "alg": int(alg), "kid": key.kid.hex(), **info}
            return key

        anchor = new_key(_ANCHOR, Alg.ES256, role="anchor")
        _write_bytes(root / "anchor.cose_key", anchor.cose_key_bytes())
        _write_bytes(root / "anchor.pem", anchor.public_pem())
        manifest["anchor"] = {"cose_key": "anchor.cose_key", "public_pem": "anchor.pem"}
        for name, (alg, role, iss) in _DEMO_TRUSTED_KEYS.items():
            new_key(name, alg, role=role, iss=iss, nbf=key_nbf, exp=key_exp, trusted=True)
        # Same iss as the real AMO: a forger's credential that only a trust lookup can catch.
        new_key(_ROGUE_AMO, Alg.ES256, role=AMO_ROLE, iss=DEMO_AMO_ISS, trusted=False)
        manifest["status_lists"][DEMO_STATUS_URI] = {
            "file": "status/amo-1.cwt",
            "signer": _STATUS,
            "bits": DEMO_STATUS_BITS,
            "size": DEMO_STATUS_LIST_SIZE,
            "ttl": DEMO_STATUS_TTL,
            "statuses": {},
        }
        manifest["trust_list"] = {"file": "trust-list.cose", "seq": 0}
        _write_bytes(root / _MANIFEST, json.dumps(manifest).encode())

        pki = cls(root, manifest)
        oid = INS_DEMO_OID if test_identities else INS_NIR_OID
        year = time.gmtime(now).tm_year
        rights = AmoRights("01", "751", "0001", f"{year - 1}-01-01", f"{year + 1}-12-31")
        for spec in _demo_holder_specs():
            children = [
                Beneficiary(rank, Person(matricule(number13), oid, identity, rights))
                for rank, number13, identity in spec.children
            ]
            pki.add_holder(
                spec.name,
                Person(matricule(spec.number13), oid, spec.identity, rights),
                beneficiaries=children,
                issuer=spec.issuer,
                note=spec.note,
                now=now,
            )
            if spec.revoked:
                pki.manifest["status_lists"][DEMO_STATUS_URI]["statuses"][
                    str(pki.holders[spec.name].status_index)
                ] = STATUS_INVALID
        pki.new_trust_list(seq=1, now=now)
        pki.write_status_lists(now=now)
        return pki

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> DemoPKI:
        """Re-open a PKI made by :meth:`create`."""
        root = Path(directory)
        manifest = json.loads((root / _MANIFEST).read_text())
        if manifest.get("format") != _MANIFEST_FORMAT:
            raise ValueError(f"{root / _MANIFEST} is not an ApCV demo PKI manifest")
        return cls(root, manifest)

    def _save_manifest(self) -> None:
        _write_bytes(self.directory / _MANIFEST, json.dumps(self.manifest, indent=2).encode())

    def _issue_time(self, now: int | None) -> int:
        # Never before the PKI's own creation time, so a PKI made "in the future" for a test
        # keeps lists that are valid at that time.
        return now if now is not None else max(self.manifest["created_at"], _now())

    # -- keys and files --------------------------------------------------------------------------

    @property
    def anchor(self) -> SigningKey:
        """Trust anchor (ES256); configure verifiers with :attr:`anchor_cose_key`."""
        return self.keys[_ANCHOR]

    @property
    def anchor_cose_key(self) -> bytes:
        return (self.directory / "anchor.cose_key").read_bytes()

    @property
    def amo_issuer(self) -> SigningKey:
        """AMO credential issuer, ES256."""
        return self.keys[_AMO_ES256]

    @property
    def amo_issuer_ed25519(self) -> SigningKey:
        """Second AMO credential issuer, EdDSA (Ed25519)."""
        return self.keys[_AMO_ED25519]

    @property
    def amc_issuer(self) -> SigningKey:
        """Complementary insurer (AMC) attestation key."""
        return self.keys[_AMC]

    @property
    def status_signer(self) -> SigningKey:
        """Status list signer (trust-list role ``status``)."""
        return self.keys[_STATUS]

    @property
    def rogue_issuer(self) -> SigningKey:
        """An ES256 key NOT in the trust list (wrong-issuer samples)."""
        return self.keys[_ROGUE_AMO]

    @property
    def trust_list_path(self) -> Path:
        return self.directory / self.manifest["trust_list"]["file"]

    @property
    def trust_list(self) -> bytes:
        return self.trust_list_path.read_bytes()

    @property
    def trust_list_seq(self) -> int:
        return int(self.manifest["trust_list"]["seq"])

    @property
    def status_list_paths(self) -> dict[str, Path]:
        """Status list files by URI."""
        return {
            uri: self.directory / entry["file"]
            for uri, entry in self.manifest["status_lists"].items()
        }

    @property
    def status_lists(self) -> dict[str, bytes]:
        """Signed status lists by URI."""
        return {uri: path.read_bytes() for uri, path in self.status_list_paths.items()}

    def trust_entries(self) -> list[TrustEntry]:
        """The trusted keys (everything in ``keys`` marked trusted), in manifest order."""
        return [
            TrustEntry(self.keys[name], info["role"], info["iss"], info["nbf"], info["exp"])
            for name, info in self.manifest["keys"].items()
            if info.get("trusted")
        ]

    # -- holders -----------------------------------------------------------------------------------

    def _allocate_status_index(self, uri: str) -> int:
        used = {holder.status_index for holder in self.holders.values() if holder.status_uri == uri}
        used.update(self.manifest["status_lists"][uri].get("allocated", []))
        size = self.manifest["status_lists"][uri]["size"]
        for index in range(size):
            if index not in used:
                return index
        raise ValueError("status list is full")

    def add_holder(
        self,
        name: str,
        person: Person,
        *,
        beneficiaries: Sequence[Beneficiary] = (),
        issuer: str = _AMO_ES256,
        note: str = "",
        now: int | None = None,
    ) -> DemoHolder:
        """Enrol a new phone for ``person``: device key, credential, status index; saved to disk."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError("holder name must be a plain directory name")
        if name in self.holders:
            raise ValueError("a holder with this name already exists")
        issued_at = self._issue_time(now) - _DAY
        uri = DEMO_STATUS_URI
        index = self._allocate_status_index(uri)
        device_key = SigningKey.generate(Alg.ES256)
        credential = issue_credential(
            self.keys[issuer],
            iss=self.manifest["keys"][issuer]["iss"],
            sub="cred-" + secrets.token_hex(8),
            device_key=device_key,
            holder=person,
            beneficiaries=beneficiaries,
            status_uri=uri,
            status_index=index,
            iat=issued_at,
            nbf=issued_at,
            exp=issued_at + DEMO_CREDENTIAL_VALIDITY,
        )
        holder_dir = f"holders/{name}"
        _write_bytes(
            self.directory / holder_dir / "device.key.pem", device_key.to_pem(), private=True
        )
        _write_bytes(self.directory / holder_dir / "credential.cose", credential)
        holder = DemoHolder(
            name=name,
            device_key=device_key,
            credential=credential,
            issuer=issuer,
            status_uri=uri,
            status_index=index,
            beneficiary_ranks=tuple(b.rank for b in beneficiaries),
        )
        self.holders[name] = holder
        self.manifest["holders"][name] = {
            "dir": holder_dir,
            "note": note,
            "issuer": issuer,
            "status_uri": uri,
            "status_index": index,
            "beneficiary_ranks": list(holder.beneficiary_ranks),
        }
        self._save_manifest()
        return holder

    def holder(self, name: str) -> DemoHolder:
        """The holder called ``name``; ``KeyError`` naming the known holders otherwise."""
        try:
            return self.holders[name]
        except KeyError:
            known = ", ".join(sorted(self.holders))
            raise KeyError(f"unknown holder {name!r} (known: {known})") from None

    def present(
        self,
        holder: str = "alice",
        *,
        credential: bytes | None = None,
        ben: int = 0,
        use: str = "care",
        iat: int | None = None,
        exp: int | None = None,
        cti: bytes | None = None,
        aud: str | None = None,
        nonce: bytes | None = None,
        amc: Sequence[bytes] | None = None,
        dlg: bytes | None = None,
        signer: SigningKey | None = None,
    ) -> bytes:
        """A presentation by ``holder``'s phone (§2.5); ``iat`` defaults to the current time.

        ``credential`` replaces the holder's own (e.g. :meth:`expired_credential`); ``signer``
        replaces the holder's phone key (e.g. the delegate's key from :meth:`delegate`, with
        ``dlg``).
        """
        demo_holder = self.holder(holder)
        return make_presentation(
            demo_holder.device_key if signer is None else signer,
            demo_holder.credential if credential is None else credential,
            ben=ben,
            use=use,
            iat=_now() if iat is None else iat,
            exp=exp,
            cti=cti,
            aud=aud,
            nonce=nonce,
            amc=amc,
            dlg=dlg,
        )

    def _allocate_extra_status_index(self, uri: str) -> int:
        """A status index for a delegation or an attestation, recorded so it is never reused."""
        index = self._allocate_status_index(uri)
        self.manifest["status_lists"][uri].setdefault("allocated", []).append(index)
        self._save_manifest()
        return index

    def matricules(self, holder: str = "alice") -> dict[int, str]:
        """The INS matricules of ``holder``'s credential by rank (0 = the holder)."""
        apcv = parse_sign1(self.holder(holder).credential).claims()["apcv"]
        ranks = {0: apcv["ins"]["m"]}
        ranks.update({b["rank"]: b["ins"]["m"] for b in apcv.get("ben", [])})
        return ranks

    def delegate(
        self,
        holder: str = "alice",
        *,
        ben: Sequence[int] = (0,),
        use: Sequence[str] = ("care",),
        who: str | None = None,
        delegate_key: SigningKey | None = None,
        now: int | None = None,
        nbf: int | None = None,
        exp: int | None = None,
    ) -> tuple[SigningKey, bytes]:
        """A delegation of ``holder``'s credential (profile §2.6) by the holder's AMO issuer.

        Returns the delegate's phone key (new unless ``delegate_key`` is given) and the
        delegation; present with ``present(holder, dlg=delegation, signer=key)``. A status index
        is allocated for it, so :meth:`revoke_object` can revoke it. Valid from ``now − 1 day``
        for 30 days unless ``nbf`` / ``exp`` say otherwise.
        """
        demo_holder = self.holder(holder)
        issued_at = self._issue_time(now) - _DAY
        key = SigningKey.generate(Alg.ES256) if delegate_key is None else delegate_key
        uri = DEMO_STATUS_URI
        delegation = make_delegation(
            self.keys[demo_holder.issuer],
            iss=self.manifest["keys"][demo_holder.issuer]["iss"],
            sub="dlg-" + secrets.token_hex(8),
            delegate_key=key,
            for_credential=parse_sign1(demo_holder.credential).claims()[_CLAIM_SUB],
            ben=ben,
            use=use,
            who=who,
            status_uri=uri,
            status_index=self._allocate_extra_status_index(uri),
            iat=issued_at,
            nbf=issued_at if nbf is None else nbf,
            exp=issued_at + DEMO_DELEGATION_VALIDITY if exp is None else exp,
        )
        return key, delegation

    def amc_attestation(
        self,
        holder: str = "alice",
        *,
        ranks: Sequence[int] | None = None,
        covered: Sequence[str] | None = None,
        contract: str | None = None,
        amc_number: str = DEMO_AMC_NUMBER,
        third_party_payment: bool = True,
        domains: Sequence[str] = DEMO_AMC_DOMAINS,
        revocable: bool = True,
        signer: SigningKey | None = None,
        now: int | None = None,
        nbf: int | None = None,
        exp: int | None = None,
    ) -> bytes:
        """An AMC attestation (profile §2.7) by the demo complementary insurer for ``holder``.

        It covers the persons of ``ranks`` (default: everyone in the credential) or the
        matricules ``covered``. With ``revocable`` (default) it gets a status index, so
        :meth:`revoke_object` can revoke it. Valid from ``now − 1 day`` for a year unless
        ``nbf`` / ``exp`` say otherwise; ``signer`` replaces the AMC key (e.g. an untrusted one).
        """
        if covered is None:
            by_rank = self.matricules(holder)
            covered = [by_rank[r] for r in (sorted(by_rank) if ranks is None else ranks)]
        issued_at = self._issue_time(now) - _DAY
        uri = DEMO_STATUS_URI if revocable else None
        return make_amc_attestation(
            self.amc_issuer if signer is None else signer,
            iss=self.manifest["keys"][_AMC]["iss"],
            sub="contract-" + secrets.token_hex(6) if contract is None else contract,
            covered=covered,
            amc_number=amc_number,
            third_party_payment=third_party_payment,
            domains=domains,
            iat=issued_at,
            nbf=issued_at if nbf is None else nbf,
            exp=issued_at + _YEAR if exp is None else exp,
            status_uri=uri,
            status_index=None if uri is None else self._allocate_extra_status_index(uri),
        )

    def revoke_object(
        self, signed: bytes, status: int = STATUS_INVALID, *, now: int | None = None
    ) -> bytes:
        """Set the status of the object whose status claim ``signed`` carries (a credential,
        delegation or attestation), rewrite its status list, and return the new signed list."""
        claims = parse_sign1(signed).claims()
        if _CLAIM_STATUS not in claims:
            raise ValueError("the object carries no status claim")
        entry = claims[_CLAIM_STATUS]["status_list"]
        return self.set_status(entry["idx"], status, uri=entry["uri"], now=now)

    def credential_variant(
        self,
        holder: str = "alice",
        *,
        signer: SigningKey | None = None,
        iss: str | None = None,
        iat: int | None = None,
        nbf: int | None = None,
        exp: int | None = None,
    ) -> bytes:
        """Re-sign ``holder``'s credential claims with other times and/or another key."""
        demo_holder = self.holder(holder)
        claims = parse_sign1(demo_holder.credential).claims()
        for claim, value in (
            (_CLAIM_ISS, iss),
            (_CLAIM_IAT, iat),
            (_CLAIM_NBF, nbf),
            (_CLAIM_EXP, exp),
        ):
            if value is not None:
                claims[claim] = value
        return sign1(self.keys[demo_holder.issuer] if signer is None else signer, claims)

    def expired_credential(self, holder: str = "alice", *, now: int | None = None) -> bytes:
        """``holder``'s credential, properly signed but expired a day before ``now``."""
        expired_at = (_now() if now is None else now) - _DAY
        issued_at = expired_at - DEMO_CREDENTIAL_VALIDITY
        return self.credential_variant(holder, iat=issued_at, nbf=issued_at, exp=expired_at)

    def rogue_credential(self, holder: str = "alice") -> bytes:
        """``holder``'s credential signed by :attr:`rogue_issuer` (→ UNKNOWN_ISSUER)."""
        return self.credential_variant(holder, signer=self.rogue_issuer)

    def samples(self, *, now: int | None = None, holder: str = "alice") -> dict[str, bytes]:
        """The demo's six presentations, by name (see ``DEMO_SAMPLE_NAMES``).

        ``accepted`` — valid; ``expired`` — expired credential; ``revoked`` — holder ``revoked``;
        ``replayed`` — valid, meant to be scanned by one reader and then by another (→ REPLAYED
        the second time); ``tampered`` — device signature with a flipped bit; ``wrong_issuer`` —
        credential signed by a key outside the trust list.
        """
        now = _now() if now is None else now
        return {
            "accepted": self.present(holder, iat=now),
            "expired": self.present(
                holder, iat=now, credential=self.expired_credential(holder, now=now)
            ),
            "revoked": self.present("revoked", iat=now),
            "replayed": self.present(holder, iat=now),
            "tampered": tamper_signature(self.present(holder, iat=now)),
            "wrong_issuer": self.present(holder, iat=now, credential=self.rogue_credential(holder)),
        }

    # -- lists -----------------------------------------------------------------------------------

    def new_trust_list(
        self,
        seq: int | None = None,
        *,
        now: int | None = None,
        entries: Sequence[TrustEntry] | None = None,
    ) -> bytes:
        """Sign and write a new trust list (default: next seq, trusted keys); returns its bytes."""
        seq = self.trust_list_seq + 1 if seq is None else seq
        iat = self._issue_time(now)
        exp = iat + DEMO_LIST_VALIDITY
        trust_list = make_trust_list(
            self.anchor,
            seq=seq,
            iat=iat,
            exp=exp,
            entries=self.trust_entries() if entries is None else entries,
        )
        self.manifest["trust_list"].update(seq=seq, iat=iat, exp=exp)
        _write_bytes(self.trust_list_path, trust_list)
        self._save_manifest()
        return trust_list

    def write_status_lists(self, *, now: int | None = None) -> None:
        """Sign and write every status list from the statuses held in the manifest."""
        iat = self._issue_time(now)
        for uri, entry in self.manifest["status_lists"].items():
            builder = StatusListBuilder(entry["size"], entry["bits"])
            for index, status in entry["statuses"].items():
                builder.set(int(index), status)
            signed = builder.sign(
                self.keys[entry["signer"]],
                uri=uri,
                iat=iat,
                exp=iat + DEMO_LIST_VALIDITY,
                ttl=entry["ttl"],
            )
            entry.update(iat=iat, exp=iat + DEMO_LIST_VALIDITY)
            _write_bytes(self.directory / entry["file"], signed)
        self._save_manifest()

    def set_statuses(
        self, statuses: Mapping[int, int], *, uri: str = DEMO_STATUS_URI, now: int | None = None
    ) -> bytes:
        """Set entries (index → status) of a status list, then re-sign and rewrite it once.

        Every change is checked before any is applied. Returns the new signed list.
        """
        entry = self.manifest["status_lists"][uri]
        range_check = StatusListBuilder(entry["size"], entry["bits"])
        for index, status in statuses.items():
            try:
                range_check.set(index, status)
            except (IndexError, ValueError) as error:
                raise type(error)(f"index {index}: {error}") from None
        for index, status in statuses.items():
            if status == STATUS_VALID:
                entry["statuses"].pop(str(index), None)
            else:
                entry["statuses"][str(index)] = status
        self.write_status_lists(now=now)
        return self.status_lists[uri]

    def set_status(
        self, index: int, status: int, *, uri: str = DEMO_STATUS_URI, now: int | None = None
    ) -> bytes:
        """Set one entry of a status list and rewrite its file; returns the new signed list."""
        return self.set_statuses({index: status}, uri=uri, now=now)

    def revoke(
        self,
        index: int,
        status: int = STATUS_INVALID,
        *,
        uri: str = DEMO_STATUS_URI,
        now: int | None = None,
    ) -> bytes:
        """Mark ``index`` revoked (1) — or ``status`` — and rewrite the status list file."""
        return self.set_status(index, status, uri=uri, now=now)

    def suspend(self, index: int, *, uri: str = DEMO_STATUS_URI, now: int | None = None) -> bytes:
        """Mark ``index`` suspended (2) and rewrite the status list file."""
        return self.set_status(index, STATUS_SUSPENDED, uri=uri, now=now)
