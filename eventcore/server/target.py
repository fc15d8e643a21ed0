"""Where the system's Redis is: the configured URL, or the embedded server
of ``redis.data_dir``; and the client options the settings ask for. Used by
every command that talks to Redis."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from eventcore.config import Settings
from eventcore.connection import ClientOptions
from eventcore.server.access import AccessError, Listen, TlsFiles
from eventcore.server.embedded import EmbeddedRedis

__all__ = ["RedisTarget", "client_options", "redis_for"]


def client_options(settings: Settings) -> ClientOptions:
    r = settings.redis
    return ClientOptions(
        connect_timeout=r.connect_timeout,
        socket_timeout=r.socket_timeout,
        retry_attempts=r.retry_attempts,
        retry_backoff_base=r.retry_backoff_base,
        retry_backoff_cap=r.retry_backoff_cap,
        max_connections=r.max_connections,
        pool_timeout=r.pool_timeout,
        cluster=r.cluster,
    )


@dataclass
class RedisTarget:
    """Where the system's Redis is, and the embedded server if we run it."""

    url: str
    embedded: EmbeddedRedis | None


@contextlib.contextmanager
def redis_for(
    settings: Settings,
    *,
    start: bool = False,
    listen: Listen | None = None,
    tls: TlsFiles | None = None,
    password: bool = True,
) -> Iterator[RedisTarget]:
    """The configured Redis or, with no URL, the embedded server of
    ``redis.data_dir``.

    Only ``start=True`` (``up`` and ``redis``) starts a server there when none
    runs, and stops it on exit. Everything else uses the one running there
    (``up`` or ``redis`` in another terminal) or fails with
    :class:`~eventcore.server.embedded.NoServerRunning`: a tool that started an empty
    server would show an empty system as if it were the real one.

    ``listen``, ``tls`` and ``password`` are for the embedded server (see
    :class:`~eventcore.server.embedded.EmbeddedRedis`); with a configured URL
    they are refused, as there is no server of ours to open.
    """
    if settings.redis.url:
        if listen is not None:
            raise AccessError(
                "--listen opens the embedded Redis to other machines, but redis.url "
                "(REDIS_URL) is set: that server is reached as it is; unset it to use --listen"
            )
        yield RedisTarget(settings.redis.url, None)
        return
    embedded = EmbeddedRedis(
        settings.redis.data_dir,
        settings.redis.durability,
        listen=listen,
        tls=tls,
        password=password,
    )
    url = embedded.start() if start else embedded.attach()
    try:
        yield RedisTarget(url, embedded)
    finally:
        embedded.stop()
