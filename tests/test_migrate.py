"""The one-time rename of keys from before node, control, parked, web keys
and blobs had hash tags (eventcore/log/migrate.py, ``eventcore events migrate``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from eventcore.connection import connect, make_client
from eventcore.errors import EventcoreError
from eventcore.keys import Keys
from eventcore.log.migrate import rename_legacy_keys
from eventcore.log.spread import is_cluster
from tests.replaykit import cli


async def _old_layout(r: Redis, ns: str) -> None:
    await r.xadd(f"{ns}:nodes", {"node": "w1", "e": b"n"})
    await r.hset(f"{ns}:nodes:seen", "w1", "5")
    await r.hset(f"{ns}:nodes:info", "w1", b"i")
    await r.set(f"{ns}:nodes:trimmed", "1-0")
    await r.xadd(f"{ns}:ctl:all", {"e": b"a"})
    await r.xadd(f"{ns}:ctl:acks", {"e": b"k"})
    await r.xadd(f"{ns}:ctl:node:w1", {"e": b"c"})
    await r.xadd(f"{ns}:parked", {"e": b"p"})
    await r.hset(f"{ns}:web:tokens", "d", b"t")
    await r.set(f"{ns}:web:secret", b"s")
    await r.set(f"{ns}:web:model", b"lama")
    await r.set(f"{ns}:blob:ab12", b"blob", ex=600)


@pytest.fixture
async def single(single_url: str) -> AsyncIterator[Redis]:
    """A client of a single server: the old names predate cluster support, so
    only a single server holds them (a cluster run has one of its own)."""
    client = make_client(single_url)
    yield client
    await client.aclose()


async def test_old_keys_are_renamed_once_and_kept_where_the_new_name_has_data(
    single: Redis, namespace: str
) -> None:
    r = single
    keys = Keys(namespace)
    await _old_layout(r, namespace)
    await r.set(keys.web_model(), b"newer")  # written by the new version already
    done = await rename_legacy_keys(r, keys)
    assert done.kept == [(f"{namespace}:web:model", keys.web_model())]
    assert len(done.renamed) == 11
    assert [e[1] for e in await r.xrange(keys.nodes())] == [{b"node": b"w1", b"e": b"n"}]
    assert await r.hget(keys.nodes_seen(), "w1") == b"5"
    assert await r.hget(keys.nodes_info(), "w1") == b"i"
    assert await r.get(keys.trim_mark(keys.nodes())) == b"1-0"
    assert await r.xlen(keys.control("w1")) == 1
    assert await r.xlen(keys.control_broadcast()) == 1
    assert await r.xlen(keys.control_acks()) == 1
    assert await r.xlen(keys.parked()) == 1
    assert await r.hget(keys.api_tokens(), "d") == b"t"
    assert await r.get(keys.web_secret()) == b"s"
    assert await r.get(keys.web_model()) == b"newer"  # not overwritten
    assert await r.get(keys.blob("ab12")) == b"blob" and 0 < await r.ttl(keys.blob("ab12")) <= 600
    left = sorted(k.decode() for k in await r.keys(f"{namespace}:*") if b"{" not in k)
    assert left == [f"{namespace}:web:model"]
    again = await rename_legacy_keys(r, keys)  # idempotent
    assert again.renamed == [] and again.kept == done.kept


async def test_the_migrate_command(single: Redis, single_url: str, namespace: str) -> None:
    r = single
    keys = Keys(namespace)
    await r.xadd(f"{namespace}:nodes", {"node": "w1", "e": b"n"})
    env = {"REDIS_URL": single_url, "EVENTCORE_NAMESPACE": namespace}
    first = cli("events", "migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert f"renamed {namespace}:nodes -> {keys.nodes()}" in first.stdout
    assert "1 renamed, 0 kept" in first.stdout
    second = cli("events", "migrate", env=env)
    assert second.returncode == 0 and "0 renamed, 0 kept" in second.stdout
    assert await r.xlen(keys.nodes()) == 1


async def test_migrate_refuses_a_cluster(cluster_url: str, namespace: str) -> None:
    r = await connect(cluster_url)
    try:
        assert is_cluster(r)
        with pytest.raises(EventcoreError, match="single server"):
            await rename_legacy_keys(r, Keys(namespace))
    finally:
        await r.aclose()


async def test_partition_keys_move_to_spread_tags_and_old_views_are_dropped(
    single: Redis, namespace: str
) -> None:
    """With three partitions the keys of partitions whose old tag ``{pN}``
    is not their spread tag move, with their TTLs; views kept in the old
    single slot are dropped (the projector folds them again), while the
    pointer, the projector list and snapshots stay."""
    r = single
    keys = Keys(namespace, 3)
    moved = [
        p
        for p in keys.all_partitions()
        if keys.legacy_partition_prefix(p) != keys.events(p).removesuffix("events")
    ]
    assert moved  # with 3 partitions at least one tag changed
    for p in keys.all_partitions():
        old = keys.legacy_partition_prefix(p)
        await r.xadd(f"{old}events", {"e": f"{p}".encode()})
        await r.set(f"{old}idem:acme:k1", b"task", ex=600)
    await r.set(f"{namespace}:{{v}}:live:task:t1", b"view")
    await r.xadd(f"{namespace}:{{v}}:feed", {"e": b"f"})
    await r.set(keys.view_pointer(), b"live")
    await r.hset(keys.snapshot("1"), "head", b"h")
    done = await rename_legacy_keys(r, keys)
    assert len(done.renamed) == 2 * len(moved) and done.kept == []
    for p in keys.all_partitions():
        assert [e[1] for e in await r.xrange(keys.events(p))] == [{b"e": f"{p}".encode()}]
        idem = keys.idempotency(p, "acme", "k1")
        assert await r.get(idem) == b"task" and 0 < await r.ttl(idem) <= 600
    assert sorted(done.dropped) == sorted(
        [f"{namespace}:{{v}}:live:task:t1", f"{namespace}:{{v}}:feed"]
    )
    assert await r.get(keys.view_pointer()) == b"live"
    assert await r.hget(keys.snapshot("1"), "head") == b"h"
    again = await rename_legacy_keys(r, keys)
    assert again.renamed == again.kept == again.dropped == []
