"""What handlers may use besides their params: the blob store and the model
store. Built lazily inside the process that runs the handler (a child process
gets its own blocking Redis connection, to a single server or a Redis
Cluster as the server says, and its own warm models)."""

from __future__ import annotations

from typing import Any

import msgspec

from eventcore.blobs import SyncRedisBlobStore
from eventcore.config import Settings
from eventcore.connection import sync_client
from eventcore.keys import Keys

__all__ = ["ResourceConfig", "Resources"]


class ResourceConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Plain data, so it can cross into a child process."""

    redis_url: str | None = None
    # As ``redis.cluster``: None asks the server whether it is a cluster node.
    cluster: bool | None = None
    namespace: str = "ec"
    partitions: int = 1
    blob_ttl: float = 86_400.0
    blob_max_bytes: int = 64 * 1024 * 1024
    model_root: str = "models"
    model_files: dict[str, str] = {}
    device: str = "auto"

    @classmethod
    def from_settings(cls, settings: Settings, redis_url: str | None) -> ResourceConfig:
        return cls(
            redis_url=redis_url,
            cluster=settings.redis.cluster,
            namespace=settings.namespace,
            partitions=settings.partitions,
            blob_ttl=settings.blobs.ttl,
            blob_max_bytes=settings.blobs.max_bytes,
            model_root=settings.models.root,
            model_files=dict(settings.models.files),
        )


class Resources:
    """The blob store and model store of one process, created on first use."""

    def __init__(self, config: ResourceConfig) -> None:
        self.config = config
        self._blobs: SyncRedisBlobStore | None = None
        self._models: Any = None

    @property
    def blobs(self) -> SyncRedisBlobStore:
        if self._blobs is None:
            if not self.config.redis_url:
                raise RuntimeError("no Redis URL given to this process's resources")
            client = sync_client(self.config.redis_url, self.config.cluster)
            keys = Keys(self.config.namespace, self.config.partitions)
            self._blobs = SyncRedisBlobStore(
                client, keys, ttl=self.config.blob_ttl, max_bytes=self.config.blob_max_bytes
            )
        return self._blobs

    @property
    def models(self) -> Any:
        """The :class:`workers.images.models.ModelStore` (torch is imported on first use)."""
        if self._models is None:
            from workers.images.models import ModelStore

            self._models = ModelStore(
                self.config.model_root, self.config.model_files, device=self.config.device
            )
        return self._models

    def warm_models(self) -> tuple[str, ...]:
        return tuple(self._models.warm()) if self._models is not None else ()
