"""The shared replay store as a Redis ACL user (``[user]:password@`` in ``replay.redis_url``)
with the least privilege docs/operations.md gives, on a real ``redis-server`` whose default
user is off; and the user and password of Sentinel and Cluster URLs, given to their clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from apcv_verify.issuer import DemoPKI
from apcv_verify.replay.redis import make_client

from .conftest import RedisServer, stop_server
from .test_replay_redis import (
    ACCEPTED,
    REPLAYED,
    UNAVAILABLE,
    outcome,
    start_redis_replica,
    verify,
)

#: The rule of docs/operations.md "Redis ACL user", for the default key prefix.
LEAST_PRIVILEGE = "~apcv:replay:* resetchannels -@all +set +get +ping +info"


@pytest.fixture
def acl_redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    """``redis_server`` with the user ``apcv`` of least privilege and the default user off."""
    admin = redis_server.client()
    admin.acl_setuser(
        "admin", enabled=True, passwords=["+admin-pw"], keys=["*"], commands=["+@all"]
    )
    admin = redis.Redis(
        host="127.0.0.1", port=redis_server.port, username="admin", password="admin-pw"
    )
    admin.execute_command("ACL", "SETUSER", "apcv", "on", ">s3cret-pw", *LEAST_PRIVILEGE.split())
    admin.acl_setuser("default", enabled=False)
    yield redis_server


def test_replicas_share_redis_as_an_acl_user_of_least_privilege(
    pki: DemoPKI, acl_redis: RedisServer, tmp_path: Path
) -> None:
    url = f"redis://apcv:s3cret-pw@127.0.0.1:{acl_redis.port}/0"
    a = start_redis_replica(pki, tmp_path / "a.log", url)
    b = start_redis_replica(pki, tmp_path / "b.log", url)
    wrong = start_redis_replica(pki, tmp_path / "w.log", url.replace("apcv:", "nobody:"))
    try:
        presentation = pki.present("alice")
        assert outcome(verify(a, presentation, "reader-1")) == ACCEPTED
        assert outcome(verify(b, presentation, "reader-2")) == REPLAYED
        assert outcome(verify(wrong, pki.present("alice"), "reader-1")) == UNAVAILABLE
        for replica in (a, b, wrong):
            assert "s3cret-pw" not in replica.server.logs()
    finally:
        for replica in (a, b, wrong):
            stop_server(replica.server)


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("redis+sentinel://apcv:p%40ss@s1,s2:26380/apcv", 26379),
        ("rediss+cluster://apcv:p%40ss@c1,c2:7000", 6379),
    ],
)
def test_sentinel_and_cluster_urls_give_the_user_and_the_password(url: str, port: int) -> None:
    """The data nodes are logged in as the URL's user; a host without a port gets the
    topology's (26379 for a sentinel, 6379 for a cluster node)."""
    client = make_client(url, 1.0)
    if "cluster" in url:
        kwargs = client.connection_kwargs
        hosts = [(node.host, node.port) for node in client.nodes_manager.startup_nodes.values()]
    else:
        kwargs = client.connection_pool.connection_kwargs
        hosts = [
            (kw["host"], kw["port"])
            for kw in (
                s.connection_pool.connection_kwargs
                for s in client.connection_pool.sentinel_manager.sentinels
            )
        ]
    assert (kwargs["username"], kwargs["password"]) == ("apcv", "p@ss")
    assert hosts[0] == ("s1" if "sentinel" in url else "c1", port)
