"""Key layout: partition and view-shard tags spread evenly over the slots of
a cluster, and stay what they were for one partition."""

from __future__ import annotations

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from eventcore.keys import Keys, spread_tag


def _part_of(key: str, n: int) -> int:
    return key_slot(key.encode()) * n // REDIS_CLUSTER_HASH_SLOTS


def test_each_partition_and_view_shard_lands_in_its_own_share_of_the_slots() -> None:
    for n in range(1, 33):
        keys = Keys("ec", n)
        assert [_part_of(keys.events(p), n) for p in range(n)] == list(range(n))
        assert [_part_of(keys.feed(str(p)), n) for p in range(n)] == list(range(n))
        # every key of a partition shares its stream's slot
        p = n - 1
        slot = key_slot(keys.events(p).encode())
        for key in (keys.done(p), keys.work(p, "q", "high"), keys.delayed(p), keys.dead_letters(p)):
            assert key_slot(key.encode()) == slot


def test_three_masters_with_an_even_split_get_equal_partitions() -> None:
    for partitions in (3, 6, 12):
        keys = Keys("ec", partitions)
        per_master = [0, 0, 0]
        for p in range(partitions):
            per_master[_part_of(keys.events(p), 3)] += 1
        assert per_master == [partitions // 3] * 3


def test_one_partition_keeps_its_tags_and_tags_do_not_change() -> None:
    keys = Keys("ec", 1)
    assert keys.events(0) == "ec:{p0}:events" and keys.feed("0") == "ec:{v0}:feed"
    # Data lives under these names: the function choosing them must not change.
    assert [spread_tag("p", p, 3) for p in range(3)] == ["p0.1", "p1.4", "p2.4"]
    assert spread_tag("p", 1, 2) == "p1"
