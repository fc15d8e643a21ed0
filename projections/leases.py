"""A projector's lease on one view shard: who folds it now.

A lease is a string key in the shard's slot (:meth:`eventcore.keys.Keys.view_lease`)
holding the holder's token, with a time to live. It is taken with ``SET NX``,
kept by renewing it well within its time to live, and given up by deleting it
only while it still holds the holder's token (one script each). The write of
every batch checks it in the same script (``write_views``): a holder whose
lease lapsed while it was stopped (a pause, a long GC, a cut network) and was
taken over writes nothing when it wakes, however late.
"""

from __future__ import annotations

import secrets

from eventcore.log import EventLog
from projections.scripts import ViewScripts
from projections.store import LeaseLost

__all__ = ["DEFAULT_LEASE_MS", "ShardLease"]

DEFAULT_LEASE_MS = 10_000


class ShardLease:
    """One holder's lease on shard ``shard`` of view namespace ``view_ns``."""

    def __init__(
        self,
        log: EventLog,
        shard: str,
        view_ns: str,
        *,
        holder: str,
        ttl_ms: int = DEFAULT_LEASE_MS,
        scripts: ViewScripts | None = None,
    ) -> None:
        self.log = log
        self.shard = shard
        self.ns = view_ns
        self.ttl_ms = ttl_ms
        # The holder's name makes the key readable; the random part keeps two
        # incarnations of one name apart.
        self.token = f"{holder}:{secrets.token_hex(4)}"
        self.scripts = scripts or ViewScripts(log.redis)

    @property
    def key(self) -> str:
        return self.log.keys.view_lease(self.shard, self.ns)

    async def take(self) -> bool:
        """Take the lease if nobody holds it."""
        return bool(await self.log.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))

    async def renew(self) -> bool:
        """Extend the lease; False if it is no longer ours."""
        return await self.scripts.renew_lease(
            lease_key=self.key, token=self.token, ttl_ms=self.ttl_ms
        )

    async def release(self) -> bool:
        """Give the lease up (if it is still ours)."""
        return await self.scripts.release_lease(lease_key=self.key, token=self.token)

    async def move(self, view_ns: str) -> None:
        """Hold the same shard of ``view_ns`` instead (the views in use
        changed): give up this lease, take that one, or raise
        :class:`~projections.store.LeaseLost` when another holder has it."""
        await self.release()
        self.ns = view_ns
        if not await self.take():
            raise LeaseLost(f"views {view_ns!r} shard {self.shard}: held by another projector")

    async def holder(self) -> str | None:
        """The token the lease is held with now (None: free)."""
        raw = await self.log.redis.get(self.key)
        return None if raw is None else raw.decode()
