"""Reads over keys of several slots (eventcore/log/spread.py): one command on a
single server, one per slot on a cluster, with the same answers either way."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.crc import key_slot

from eventcore.keys import Keys
from eventcore.log.spread import is_cluster, mget, slot_groups, xread, xreadgroup


def test_one_group_on_a_single_server_and_one_per_slot_on_a_cluster(r: Redis, keys: Keys) -> None:
    streams = [keys.events(p) for p in keys.all_partitions()] + [keys.nodes(), keys.control("w")]
    groups = slot_groups(r, streams)
    assert sorted(k for g in groups for k in g) == sorted(streams)
    if not is_cluster(r):
        assert groups == [streams]
    else:
        assert all(len({key_slot(k.encode()) for k in g}) == 1 for g in groups)
        assert len(groups) == len({key_slot(k.encode()) for k in streams})


async def test_reads_answer_every_stream_and_mget_keeps_the_order(r: Redis, keys: Keys) -> None:
    streams = [keys.events(p) for p in keys.all_partitions()] + [keys.nodes()]
    ids = {s: (await r.xadd(s, {"e": s})).decode() for s in streams}
    got = await xread(r, dict.fromkeys(streams, "0"), count=10, block=100)
    assert {s.decode(): [e[0].decode() for e in entries] for s, entries in got} == {
        s: [i] for s, i in ids.items()
    }
    # nothing newer: every group blocks, and the answer is empty
    assert await xread(r, ids, count=10, block=50) == []
    for s in streams:
        await r.xgroup_create(s, "g", "0")
    got = await xreadgroup(r, "g", "c", dict.fromkeys(streams, ">"), count=10, block=100)
    assert sorted(s.decode() for s, _ in got) == sorted(streams)
    marks = [keys.trim_mark(s) for s in streams]
    await r.set(marks[-1], "9-0")
    assert await mget(r, marks) == [None] * (len(marks) - 1) + [b"9-0"]
    assert await mget(r, []) == []
