"""``eventcore status``: queues, nodes, pending entries, who folds which
view shard and how far the SQL history is, as tables or JSON; and
:func:`table`, the aligned text table every command prints."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from eventcore.config import Settings
from eventcore.connection import connect
from eventcore.events.task import PRIORITIES_HIGH_FIRST
from eventcore.keys import Keys
from eventcore.log import EventLog
from eventcore.routing import backlog
from eventcore.server.target import client_options, redis_for
from projections.pool import lease_holders
from projections.read import read_queue_health
from projections.retention import sql_behind
from projections.store import ViewStore, current_views

__all__ = ["cmd_status", "table"]


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    with redis_for(settings) as target:
        return asyncio.run(_status(target.url, settings, args.json))


async def _status(url: str, settings: Settings, as_json: bool) -> int:
    redis = await connect(url, client_options(settings))
    log = EventLog(redis, Keys(settings.namespace, settings.partitions), group=settings.group)
    try:
        store = ViewStore(log, await current_views(log))
        queues = await store.queues()
        nodes = await store.nodes()
        names = [q.name for q in settings.queues]
        waiting = await backlog(log, names)
        pending = await _pending(log, names, settings.group)
        marks = await store.watermark()
        holders = await lease_holders(log, store.ns)
        sql = await sql_behind(log)
        health = await read_queue_health(
            log, names, queues, silent_for=settings.worker.heartbeat_timeout
        )
    finally:
        await log.redis.aclose()
    now = time.time()
    qrows = []
    for name, h in health.items():
        v = queues.get(name)
        qrows.append(
            {
                "queue": name,
                "entries": waiting.get(name, 0),
                "pending": pending.get(name, 0),
                "waiting": v.waiting if v else 0,
                "in_flight": v.in_flight if v else 0,
                "succeeded": v.succeeded if v else 0,
                "failed": (v.failed + v.timed_out + v.dead_lettered) if v else 0,
                "oldest_wait_s": round(now - v.oldest_waiting_at, 1)
                if v and v.oldest_waiting_at
                else None,
                "consumers": h.consumers,
            }
        )
    nrows = [
        {
            "node": n.node,
            "state": n.state,
            "queues": ",".join(n.queues),
            "running": len(n.running),
            "slots": n.concurrency,
            "processed": n.processed,
            "failed": n.failed,
            "heartbeat_s_ago": round(now - n.last_heartbeat, 1) if n.last_heartbeat else None,
        }
        for n in sorted(nodes.values(), key=lambda n: n.node)
    ]
    warnings = {name: h.warning for name, h in health.items() if h.warning}
    if as_json:
        for row in qrows:
            row["warning"] = warnings.get(row["queue"])
        folded_by = {s: h.rsplit(":", 1)[0] if h else None for s, h in holders.items()}
        out = {
            "queues": qrows,
            "nodes": nrows,
            "watermark": marks,
            "projectors": folded_by,
            "sql_behind": sql,
        }
        print(json.dumps(out, indent=2))
        return 0
    print(table(qrows) if qrows else "no queues")
    for name, warning in warnings.items():
        print(f"warning: queue {name}: {warning}")
    print()
    print(table(nrows) if nrows else "no nodes have announced themselves yet")
    print()
    print(_projectors_line(holders))
    print(_sql_line(sql))
    return 0


def _sql_line(behind: int | None) -> str:
    """How far the SQL history is: ``sql history: 12 log entries behind``."""
    if behind is None:
        return "sql history: no SQL projector has written yet (`eventcore sql`)"
    if behind == 0:
        return "sql history: up to date with the log"
    more = "+" if behind > 10_000 else ""
    return f"sql history: {min(behind, 10_000):,}{more} log entries behind"


def _projectors_line(holders: dict[str, str | None]) -> str:
    """Who folds which view shard: ``projectors: host-12 folds shards 0, n; ...``."""
    by: dict[str, list[str]] = {}
    for shard, holder in holders.items():
        by.setdefault(holder.rsplit(":", 1)[0] if holder else "", []).append(shard)
    parts = [f"{name} folds {', '.join(shards)}" for name, shards in sorted(by.items()) if name]
    if "" in by:
        parts.append(f"no projector folds {', '.join(by[''])}")
    return "view shards: " + "; ".join(parts)


async def _pending(log: EventLog, queues: list[str], group: str) -> dict[str, int]:
    """Entries delivered to a worker and not yet acked, per queue."""
    k = log.keys
    out = dict.fromkeys(queues, 0)
    for q in queues:
        for p in k.all_partitions():
            for prio in PRIORITIES_HIGH_FIRST:
                try:
                    info = await log.redis.xpending(k.work(p, q, prio), group)
                except Exception:  # no such stream or group yet
                    continue
                out[q] += int(info.get("pending", 0) if isinstance(info, dict) else 0)
    return out


def table(rows: list[dict[str, Any]]) -> str:
    """Rows as an aligned text table (numbers right-aligned, missing as '-')."""
    cols = list(rows[0])
    cells = [[("-" if r[c] is None else str(r[c])) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    numeric = [all(isinstance(r[c], int | float) or r[c] is None for r in rows) for c in cols]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)
        ).rstrip()

    return "\n".join([line(cols), line(["-" * w for w in widths]), *map(line, cells)])
