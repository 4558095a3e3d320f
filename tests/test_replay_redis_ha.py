"""The shared replay store beyond one Redis server: Redis Cluster (three masters made with
``redis-cli --cluster create``) and Redis Sentinel (a master, a replica and a sentinel that
promotes it), all real ``redis-server`` processes on loopback in throw-away directories."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from apcv_verify import _native
from apcv_verify.config import Config
from apcv_verify.issuer import DemoPKI
from apcv_verify.replay.answers import REUSED, AnswerRecovery, RedisAnswers
from apcv_verify.replay.memory import memory_replay_store
from apcv_verify.replay.redis import RedisReplayStore
from apcv_verify.service.startup import build_verifiers
from apcv_verify.trust.material import load_trust_material

from .conftest import free_port, pki_config, system_executable, wait_redis

PREFIX = "apcv:replay:"


@dataclass
class Processes:
    """redis-server processes started by a test, stopped after it."""

    server: str
    directory: Path
    running: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(
        self, port: int, *args: str, config: str | None = None, password: str | None = None
    ) -> None:
        workdir = self.directory / str(port)
        workdir.mkdir(exist_ok=True)
        command = [self.server]
        if config is not None:
            (workdir / "redis.conf").write_text(config)
            command.append(str(workdir / "redis.conf"))
        command += ["--bind", "127.0.0.1", "--port", str(port), "--dir", str(workdir),
                    "--save", "", "--appendonly", "no", *args]  # fmt: skip
        self.running[port] = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=2)
        wait_redis(client, self.running[port])

    def kill(self, port: int) -> None:
        process = self.running.pop(port)
        process.kill()
        process.wait()

    def stop_all(self) -> None:
        for port in list(self.running):
            self.kill(port)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(system_executable("redis-server"), tmp_path)
    yield started
    started.stop_all()


def store_config(pki: DemoPKI, url: str) -> Config:
    return pki_config(
        pki,
        {
            "replay.backend": "redis",
            "replay.redis_url": url,
            "replay.timeout_seconds": 0.5,
            # Small, so that presentations issued after a noticed loss are soon accepted.
            "policy.clock_skew_seconds": 1,
        },
    )


class Replica:
    """What one server does per batch: the core's steps 1-8, then the shared store."""

    def __init__(self, config: Config) -> None:
        self.verifier = build_verifiers(
            config, load_trust_material(config), memory_replay_store(config.replay)
        )[0]
        self.store = RedisReplayStore(config.replay)

    async def results(self, scans: list[_native.Scan]) -> list[_native.VerificationResult]:
        now = int(time.time())
        return await self.store.settle(scans, self.verifier.verify_batch(scans, now), now)

    async def verify(self, items: Sequence[tuple[bytes, str]]) -> list[str]:
        scans = [_native.Scan(presentation, reader) for presentation, reader in items]
        now = int(time.time())
        results = await self.store.settle(scans, self.verifier.verify_batch(scans, now), now)
        return ["DUPLICATE" if r.duplicate else r.reason for r in results]


def test_redis_cluster_three_masters_settle_a_batch_across_slots(
    pki: DemoPKI, processes: Processes
) -> None:
    ports = [free_port() for _ in range(3)]
    for port in ports:
        # The bus port is given: the default (port + 10000) may be taken, or beyond 65535.
        processes.start(port, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-port", str(free_port()),
                        "--cluster-node-timeout", "2000")  # fmt: skip
    subprocess.run(
        [system_executable("redis-cli"), "--cluster", "create",
         *(f"127.0.0.1:{port}" for port in ports), "--cluster-replicas", "0", "--cluster-yes"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    deadline = time.monotonic() + 15
    while redis.Redis(port=ports[0]).cluster("info").get("cluster_state") != "ok":
        assert time.monotonic() < deadline, "the cluster did not become ok"
        time.sleep(0.1)
    config = store_config(pki, "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports))
    presentations = [pki.present("alice") for _ in range(12)]

    async def run() -> None:
        a, b = Replica(config), Replica(config)
        try:
            assert await a.store.ping() and await b.store.ping()
            first = await a.verify([(p, "reader-1") for p in presentations]
                                   + [(presentations[0], "reader-2")])  # fmt: skip
            assert first == ["OK"] * 12 + ["REPLAYED"]  # the earlier item of the batch wins
            again = await b.verify(
                [(p, "reader-2") for p in presentations] + [(presentations[3], "reader-1")]
            )
            assert again == ["REPLAYED"] * 12 + ["DUPLICATE"]
        finally:
            await a.store.close()
            await b.store.close()

    asyncio.run(run())
    # The entries are spread over the masters (one pipeline, split by slot). The ctis are
    # random: all 13 keys on one master has a chance of 3 / 3**13 (2e-6), but one master
    # without any of them 3 × (2/3)**13 (1.5 %), so the test asks for at least two.
    held = [redis.Redis(port=port).dbsize() for port in ports]
    assert sum(held) == 12 + 1  # and the marker
    assert sum(count > 0 for count in held) >= 2, held

    # Answer recovery on the cluster: answers kept by one replica, recovered by the other,
    # their keys (and the shared key of the hashes) spread over the masters.
    fresh = [pki.present("alice") for _ in range(12)]

    async def recover() -> None:
        a, b = Replica(config), Replica(config)
        recovery_a = AnswerRecovery(RedisAnswers(a.store, config.replay), 3600)
        recovery_b = AnswerRecovery(RedisAnswers(b.store, config.replay), 3600)
        scans = [_native.Scan(p, "reader-9") for p in fresh]
        requests = [("anonymous", "reader-9", f"c-{i}") for i in range(12)]
        try:
            assert await a.store.ping() and await b.store.ping()  # connected, slots known
            now = int(time.time())
            first = await recovery_a.answer(scans, requests, now, a.results)
            assert [(r.reason, r.resent) for r in results(first)] == [("OK", False)] * 12
            again = await recovery_b.answer(scans, requests, now, b.results)
            assert [(r.reason, r.resent) for r in results(again)] == [("OK", True)] * 12
            # Each request id under another presentation: refused, never answered anew.
            assert await recovery_b.answer(scans[::-1], requests, now, b.results) == [REUSED] * 12
        finally:
            await a.store.close()
            await b.store.close()

    asyncio.run(recover())
    answers = [len(redis.Redis(port=port).keys("apcv:replay:answer:*")) for port in ports]
    assert sum(answers) == 12 and sum(count > 0 for count in answers) >= 2


def results(answers: Sequence[object]) -> list[_native.VerificationResult]:
    assert all(isinstance(answer, _native.VerificationResult) for answer in answers)
    return list(answers)  # type: ignore[arg-type]


SENTINEL_CONFIG = """\
sentinel monitor apcv 127.0.0.1 {master} 1
sentinel down-after-milliseconds apcv 1000
sentinel failover-timeout apcv 10000
sentinel parallel-syncs apcv 1
"""


@pytest.mark.slow
def test_redis_sentinel_failover_never_accepts_twice_and_fails_closed_meanwhile(
    pki: DemoPKI, processes: Processes
) -> None:
    master, replica, sentinel = free_port(), free_port(), free_port()
    processes.start(master)
    processes.start(replica, "--replicaof", "127.0.0.1", str(master))
    processes.start(sentinel, "--sentinel", config=SENTINEL_CONFIG.format(master=master))
    deadline = time.monotonic() + 15
    while redis.Redis(port=replica).info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, "the replica did not sync"
        time.sleep(0.1)
    config = store_config(pki, f"redis+sentinel://127.0.0.1:{sentinel}/apcv")

    async def run() -> None:
        a, b = Replica(config), Replica(config)
        accepted: list[bytes] = []
        seen: dict[str, int] = {}
        try:
            assert await a.store.ping() and await b.store.ping()
            killed_at, before = None, 0
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                presentation = pki.present("alice")
                [on_a] = await a.verify([(presentation, "reader-1")])
                [on_b] = await b.verify([(presentation, "reader-2")])
                # Never accepted at two readers, before, during or after the failover.
                assert (on_a, on_b) in {
                    ("OK", "REPLAYED"),
                    ("OK", "REPLAY_UNAVAILABLE"),
                    ("REPLAY_UNAVAILABLE", "OK"),
                    ("REPLAY_UNAVAILABLE", "REPLAY_UNAVAILABLE"),
                }, (on_a, on_b)
                if "OK" in (on_a, on_b):
                    accepted.append(presentation)
                for answer in (on_a, on_b):
                    seen[answer] = seen.get(answer, 0) + 1
                if killed_at is None and len(accepted) >= 20:
                    processes.kill(master)  # the master dies while verifications run
                    killed_at, before = time.monotonic(), len(accepted)
                    seen.clear()
                elif killed_at is not None and len(accepted) >= before + 20:
                    break
                await asyncio.sleep(0.02)
            assert killed_at is not None and len(accepted) >= before + 20, seen
            # While no master was reachable, answers failed closed; then the replica took over.
            assert seen.get("REPLAY_UNAVAILABLE", 0) > 0
            assert redis.Redis(port=replica).info("replication")["role"] == "master"
            # Everything accepted before and during the failover is still known.
            again = await a.verify([(p, "reader-3") for p in accepted])
            assert set(again) == {"REPLAYED"}
        finally:
            await a.store.close()
            await b.store.close()

    asyncio.run(run())


def guarded_sentinel(processes: Processes, sentinel_auth: str, admin_password: str) -> str:
    """A master with the password ``data-pw`` and a sentinel watching it, whose configuration
    ends with ``sentinel_auth`` (its own password, or ACL users); the URL of the pair, with the
    master's password. ``admin_password`` is the sentinel's default user's, to wait for it."""
    master, sentinel = free_port(), free_port()
    processes.start(master, "--requirepass", "data-pw", password="data-pw")
    watched = SENTINEL_CONFIG.format(master=master) + "sentinel auth-pass apcv data-pw\n"
    processes.start(sentinel, "--sentinel", config=watched + sentinel_auth, password=admin_password)
    return f"redis+sentinel://:data-pw@127.0.0.1:{sentinel}/apcv"


def with_sentinel_credentials(config: Config, password: str, username: str = "") -> Config:
    replay = dataclasses.replace(
        config.replay, redis_sentinel_password=password, redis_sentinel_username=username
    )
    return dataclasses.replace(config, replay=replay)


def test_sentinels_that_ask_for_a_password_are_given_theirs(
    pki: DemoPKI, processes: Processes
) -> None:
    """Sentinels with their own ``requirepass`` (as Redis charts set them up by default) are
    asked with ``replay.redis_sentinel_password``; the URL's password is the master's. Without
    it the master cannot be found: the store fails closed."""
    url = guarded_sentinel(processes, "requirepass sentinel-pw\n", "sentinel-pw")
    with_password = with_sentinel_credentials(store_config(pki, url), "sentinel-pw")

    async def run() -> None:
        asked, unasked = Replica(with_password), Replica(store_config(pki, url))
        try:
            assert await asked.store.ping()
            presentation = pki.present("alice")
            assert await asked.verify([(presentation, "reader-1")]) == ["OK"]
            assert await asked.verify([(presentation, "reader-2")]) == ["REPLAYED"]
            assert not await unasked.store.ping()
            assert await unasked.verify([(pki.present("alice"), "reader-1")]) == [
                "REPLAY_UNAVAILABLE"
            ]
        finally:
            await asked.store.close()
            await unasked.store.close()

    asyncio.run(run())


def test_sentinels_with_acl_users_are_asked_as_the_configured_user(
    pki: DemoPKI, processes: Processes
) -> None:
    """Sentinels whose password belongs to an ACL user (``user`` in their configuration), with
    the least it needs (docs/operations.md "Redis topologies"), are asked as
    ``replay.redis_sentinel_username``; the same password for the default user is refused."""
    users = "requirepass admin-pw\nuser apcv-verify on >sentinel-pw -@all +sentinel|masters\n"
    plain = store_config(pki, guarded_sentinel(processes, users, "admin-pw"))

    def with_sentinel(username: str) -> Config:
        return with_sentinel_credentials(plain, "sentinel-pw", username)

    async def run() -> None:
        as_user, as_default = Replica(with_sentinel("apcv-verify")), Replica(with_sentinel(""))
        try:
            presentation = pki.present("alice")
            assert await as_user.verify([(presentation, "reader-1")]) == ["OK"]
            assert await as_user.verify([(presentation, "reader-2")]) == ["REPLAYED"]
            assert await as_default.verify([(pki.present("alice"), "reader-1")]) == [
                "REPLAY_UNAVAILABLE"
            ]
        finally:
            await as_user.store.close()
            await as_default.store.close()

    asyncio.run(run())
