"""Content-addressed blobs: images going in, results coming out.

Tasks carry blob references (``sha256:<hex>``), never megabytes inside
events. A blob lives under ``keys.blob(<hex>)`` with a TTL and a size cap;
storing the same bytes twice stores them once (and renews the TTL). Two
implementations of one small interface: asyncio for the web app and the
worker, blocking for handler child processes. A filesystem or S3-compatible
store can implement the same methods.
"""

from __future__ import annotations

import hashlib
import re
from typing import Protocol

import msgspec
import redis
from redis.asyncio import Redis

from eventcore.errors import EventcoreError, TaskError
from eventcore.keys import Keys

__all__ = [
    "BlobMissing",
    "BlobRef",
    "BlobStore",
    "BlobTooLarge",
    "RedisBlobStore",
    "SyncRedisBlobStore",
    "digest_of",
    "parse_ref",
]

_REF = re.compile(r"^sha256:([0-9a-f]{64})$")


class BlobTooLarge(EventcoreError):
    """The blob is over the size cap."""


class BlobMissing(TaskError):
    """No blob under that reference (never stored, or expired). Not retryable."""

    def __init__(self, ref: str) -> None:
        super().__init__(
            f"blob {ref} does not exist (never stored, or expired)", non_retryable=True
        )


class BlobRef(msgspec.Struct, frozen=True):
    ref: str  # "sha256:<hex>"
    size: int


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse_ref(ref: str) -> str:
    """The hex digest of a reference; ValueError naming the text if it is not one."""
    m = _REF.match(ref) if isinstance(ref, str) else None
    if m is None:
        raise ValueError(f"{ref!r} is not a blob reference (sha256:<64 hex digits>)")
    return m.group(1)


class BlobStore(Protocol):
    async def put(self, data: bytes) -> BlobRef: ...
    async def get(self, ref: str) -> bytes: ...
    async def exists(self, ref: str) -> bool: ...


class _Rules:
    def __init__(self, keys: Keys, ttl: float, max_bytes: int) -> None:
        self.keys = keys
        self.ttl_ms = max(1, int(ttl * 1000))
        self.max_bytes = max_bytes

    def check(self, data: bytes) -> BlobRef:
        if len(data) > self.max_bytes:
            raise BlobTooLarge(f"blob of {len(data)} bytes is over the cap of {self.max_bytes}")
        return BlobRef(digest_of(data), len(data))

    def key(self, ref: str) -> str:
        return self.keys.blob(parse_ref(ref))


class RedisBlobStore:
    """Blobs in Redis, for asyncio code."""

    def __init__(self, redis: Redis, keys: Keys, *, ttl: float, max_bytes: int) -> None:
        self.redis = redis
        self.rules = _Rules(keys, ttl, max_bytes)

    async def put(self, data: bytes) -> BlobRef:
        blob = self.rules.check(data)
        key = self.rules.key(blob.ref)
        # Same digest, same bytes: if it is there, only its TTL is renewed.
        if not await self.redis.set(key, data, px=self.rules.ttl_ms, nx=True):
            await self.redis.pexpire(key, self.rules.ttl_ms)
        return blob

    async def get(self, ref: str) -> bytes:
        data = await self.redis.get(self.rules.key(ref))
        if data is None:
            raise BlobMissing(ref)
        return data

    async def exists(self, ref: str) -> bool:
        return bool(await self.redis.exists(self.rules.key(ref)))


class SyncRedisBlobStore:
    """The same store for blocking code (handlers in child processes)."""

    def __init__(
        self, client: redis.Redis | redis.RedisCluster, keys: Keys, *, ttl: float, max_bytes: int
    ) -> None:
        self.redis = client
        self.rules = _Rules(keys, ttl, max_bytes)

    def put(self, data: bytes) -> BlobRef:
        blob = self.rules.check(data)
        key = self.rules.key(blob.ref)
        if not self.redis.set(key, data, px=self.rules.ttl_ms, nx=True):
            self.redis.pexpire(key, self.rules.ttl_ms)
        return blob

    def get(self, ref: str) -> bytes:
        data = self.redis.get(self.rules.key(ref))
        if data is None:
            raise BlobMissing(ref)
        return data

    def exists(self, ref: str) -> bool:
        return bool(self.redis.exists(self.rules.key(ref)))
