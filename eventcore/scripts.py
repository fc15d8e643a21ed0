"""Loads the Lua library (``lua/eventcore.lua``) and registers each script.

The library is one file split into sections by ``--- script: NAME`` lines;
the section ``_shared`` (helper functions) is put in front of every script.
Scripts are called by SHA (EVALSHA) and re-sent after a SCRIPT FLUSH or a
server restart; redis-py does that for both direct calls and pipelines.
Typed wrappers live in :mod:`eventcore.log`; nothing else calls a script.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

__all__ = ["SCRIPT_NAMES", "Scripts", "load_sources"]

SCRIPT_NAMES = (
    "submit",
    "append",
    "settle",
    "append_held",
    "release_due",
    "request_cancel",
    "renew",
    "claim",
    "node_event",
    "mark_lost",
    "write_views",
    "publish_snapshot",
    "trim_stream",
    "prune_done",
    "import_entries",
    "reroute",
)
_MARKER = re.compile(r"^--- script: (\w+)\s*$", re.MULTILINE)


@functools.cache
def load_sources() -> dict[str, str]:
    """The source of every script in the library, by name."""
    text = resources.files("eventcore").joinpath("lua/eventcore.lua").read_text()
    parts = _MARKER.split(text)
    sources = {name: body.strip() + "\n" for name, body in zip(parts[1::2], parts[2::2])}
    shared = sources.pop("_shared", "")
    sources = {name: shared + body for name, body in sources.items()}
    missing = set(SCRIPT_NAMES) - set(sources)
    if missing:
        raise RuntimeError(f"Lua library lacks scripts: {sorted(missing)}")
    return sources


class Scripts:
    """The registered scripts of one Redis client."""

    __slots__ = SCRIPT_NAMES

    submit: AsyncScript
    append: AsyncScript
    settle: AsyncScript
    append_held: AsyncScript
    release_due: AsyncScript
    request_cancel: AsyncScript
    renew: AsyncScript
    claim: AsyncScript
    node_event: AsyncScript
    mark_lost: AsyncScript
    write_views: AsyncScript
    publish_snapshot: AsyncScript
    trim_stream: AsyncScript
    prune_done: AsyncScript
    import_entries: AsyncScript
    reroute: AsyncScript

    def __init__(self, redis: Redis) -> None:
        for name, source in load_sources().items():
            setattr(self, name, redis.register_script(source))
