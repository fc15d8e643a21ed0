"""The blob store: content-addressed, TTL, size cap, async and blocking alike."""

from __future__ import annotations

import time

import pytest

from eventcore.blobs import (
    BlobMissing,
    BlobTooLarge,
    RedisBlobStore,
    SyncRedisBlobStore,
    digest_of,
    parse_ref,
)
from eventcore.connection import sync_client
from eventcore.keys import Keys


async def test_put_get_is_content_addressed(r, keys: Keys) -> None:
    store = RedisBlobStore(r, keys, ttl=60, max_bytes=1000)
    a = await store.put(b"hello")
    b = await store.put(b"hello")
    assert a == b and a.ref == digest_of(b"hello") and a.size == 5
    assert await store.get(a.ref) == b"hello"
    assert len(await r.keys(keys.blob("*"))) == 1
    ttl = await r.pttl(keys.blob(parse_ref(a.ref)))
    assert 0 < ttl <= 60_000


async def test_size_cap_and_missing_and_bad_refs(r, keys: Keys) -> None:
    store = RedisBlobStore(r, keys, ttl=60, max_bytes=4)
    with pytest.raises(BlobTooLarge, match="over the cap of 4"):
        await store.put(b"12345")
    assert await r.keys(keys.all_keys_pattern()) == []
    missing = digest_of(b"never")
    with pytest.raises(BlobMissing) as err:
        await store.get(missing)
    assert err.value.non_retryable and missing in str(err.value)
    with pytest.raises(ValueError, match="not a blob reference"):
        await store.get("../etc/passwd")


async def test_blobs_expire_and_a_second_put_renews(r, keys: Keys) -> None:
    store = RedisBlobStore(r, keys, ttl=0.2, max_bytes=100)
    ref = (await store.put(b"x")).ref
    time.sleep(0.12)
    await store.put(b"x")  # renews
    time.sleep(0.12)
    assert await store.exists(ref)
    time.sleep(0.25)
    assert not await store.exists(ref)


def test_sync_store_sees_the_same_blobs(redis_url: str, keys: Keys) -> None:
    client = sync_client(redis_url)  # a cluster one on a cluster
    try:
        store = SyncRedisBlobStore(client, keys, ttl=60, max_bytes=100)
        ref = store.put(b"png bytes").ref
        assert store.get(ref) == b"png bytes" and store.exists(ref)
        with pytest.raises(BlobMissing):
            store.get(digest_of(b"other"))
    finally:
        client.close()
