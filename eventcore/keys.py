"""Every Redis key eventcore uses is built here, and nowhere else.

Layout (namespace ``ec`` by default, ``P`` partitions)::

    ec:{p0}:events               task event log of partition 0 (stream)
    ec:{p0}:q:<queue>:<prio>     work stream of one queue and priority level
    ec:{p0}:delayed              delayed / retry-scheduled task ids (zset, score = due ms)
    ec:{p0}:delayed:items        the work entry each delayed task will get (hash)
    ec:{p0}:idem:<tenant>:<key>  idempotency key -> task id (string, TTL); the
                                 tenant escaped (no ':'), the key as given
    ec:{p0}:done                 task id -> terminal event type (hash)
    ec:{p0}:cancel               task ids with a pending cancel request (set)
    ec:{p0}:dlq                  dead-lettered work entries (stream)
    ec:{p0}:events:trimmed       lowest id kept by the last trim of the log (string)
    ec:{n}:nodes                 node event stream
    ec:{n}:nodes:seen            node -> time of its last sign of life, ms (hash)
    ec:{n}:nodes:info            node -> its NodeStarted event, while it lives (hash)
    ec:{n}:nodes:trimmed         lowest id kept by the last trim of the node stream (string)
    ec:{c}:ctl:node:<node>       control commands for one node (stream)
    ec:{c}:ctl:all               broadcast control commands (stream)
    ec:{c}:ctl:acks              control acknowledgements (stream)
    ec:{x}:parked                entries that did not decode (stream)
    ec:blob:{<sha256>}           blobs (string, TTL); each its own tag, so blobs
                                 spread over the masters of a cluster
    ec:{w}:web:tokens            API token digests (hash)
    ec:{w}:web:secret            the key that signs stream tickets (string)
    ec:{w}:web:model             the IOPaint routes' default model (string)
    ec:{v0}:<view-ns>:...        views of view shard 0: the task views of
                                 partition 0, and its parts of the queue, stats
                                 and node views, their indexes, the watermark
                                 of its stream and the lease of the projector
                                 writing it (one slot: a batch of view changes,
                                 its feed entries and the watermark are
                                 written by one script)
    ec:{vn}:<view-ns>:...        views of the node shard: node views as the
                                 node stream tells them
    ec:{v0}:feed                 view-change feed of shard 0 (capped stream);
                                 ec:{vn}:feed that of the node shard
    ec:{v}:current               the view namespace in use (string)
    ec:{v}:projectors            live projector processes (hash: name -> expiry ms)
    ec:{v}:snapshot:latest       id of the latest snapshot of the views (string)
    ec:{v}:snapshot:<id>         a snapshot: every view and its watermark (hash)
    ec:{v}:snapshot:<id>:partial a snapshot being written (hash, with a TTL)

Every key carries a hash tag, and the keys one script or one multi-key
command touches share it: a partition's keys ``{pN}``, the views of its
shard ``{vN}``, the node shard's views ``{vn}``, the
node keys ``{n}``, the control streams ``{c}``. So each Lua script touches a
single slot and the layout runs unchanged on Redis Cluster. Reads over several
tags (every partition's log, say) are split per slot on a cluster
(:mod:`eventcore.log.spread`).

Before the node, control, parked and web keys had tags they were named
``ec:nodes``, ``ec:ctl:...``, ``ec:parked``, ``ec:web:...`` and
``ec:blob:<sha256>``; :meth:`Keys.legacy_names` maps those names to the new
ones for the one-time rename (``eventcore.log.migrate``).
"""

from __future__ import annotations

import functools
import re

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from eventcore.events import Priority
from eventcore.ids import partition_of

__all__ = ["NAME_RE", "SQL_GROUP", "Keys", "check_name", "escape_part", "spread_tag"]

# Hash tags of the keys outside the partitions and the views (see the layout).
NODE_TAG = "n"
# The view shard that holds what the node stream tells (the others are
# partitions, named by their number).
NODE_SHARD = "n"
CONTROL_TAG = "c"
PARKED_TAG = "x"
WEB_TAG = "w"
# The consumer group the SQL projector keeps on each log stream at the
# position it has written: trimming never passes it, and the views' retention
# knows from it what the SQL history holds.
SQL_GROUP = "sql"

# Queue names, node ids and namespaces: safe inside a key and in Lua splitting.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def check_name(what: str, name: str) -> str:
    """Return ``name`` if it is a valid queue / node / namespace name, else raise ValueError."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(
            f"{what} {name!r} is not a valid name: use 1-128 letters, digits, '_', '.' or '-'"
        )
    return name


@functools.cache
def spread_tag(prefix: str, i: int, n: int) -> str:
    """The hash tag of part ``i`` of ``n`` (a partition, a view shard): one
    whose slot lies in the ``i``-th ``n``-th of the cluster's slots, so that
    ``n`` parts spread evenly over masters that split the slots evenly (with
    ``n`` a multiple of their number). ``<prefix><i>`` when its slot is
    there already (always for ``n`` = 1), else ``<prefix><i>.<k>`` with the
    smallest ``k`` that puts it there."""
    tag = f"{prefix}{i}"
    k = 0
    while key_slot(tag.encode()) * n // REDIS_CLUSTER_HASH_SLOTS != i:
        k += 1
        tag = f"{prefix}{i}.{k}"
    return tag


def escape_part(name: str) -> str:
    """A user-given name made safe to join into a key with ``:``: ``%`` and
    ``:`` are percent-encoded, so the result holds no ``:`` and two names
    never give one text. A name without either is unchanged, so keys built
    before escaping existed keep their names."""
    if "%" not in name and ":" not in name:
        return name
    return name.replace("%", "%25").replace(":", "%3A")


class Keys:
    """Builds the keys of one deployment (namespace + partition count)."""

    __slots__ = ("namespace", "partitions")

    def __init__(self, namespace: str = "ec", partitions: int = 1) -> None:
        check_name("namespace", namespace)
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self.namespace = namespace
        self.partitions = partitions

    def __repr__(self) -> str:
        return f"Keys(namespace={self.namespace!r}, partitions={self.partitions})"

    # -- partitions ----------------------------------------------------------

    def partition(self, task_id: str) -> int:
        """The partition that holds ``task_id``'s events and work."""
        return partition_of(task_id, self.partitions)

    def all_partitions(self) -> range:
        return range(self.partitions)

    def _p(self, p: int) -> str:
        if not 0 <= p < self.partitions:
            raise ValueError(f"partition {p} out of range (0..{self.partitions - 1})")
        return f"{self.namespace}:{{{spread_tag('p', p, self.partitions)}}}"

    def legacy_partition_prefix(self, p: int) -> str:
        """The prefix of partition ``p``'s keys before partition tags were
        spread over the slots (``ec:{p1}:``); :meth:`_p` may name the same."""
        return f"{self.namespace}:{{p{p}}}:"

    # -- per partition -------------------------------------------------------

    def events(self, p: int) -> str:
        return f"{self._p(p)}:events"

    def work(self, p: int, queue: str, priority: Priority | str) -> str:
        return f"{self.work_prefix(p)}{queue}:{Priority(priority).value}"

    def work_prefix(self, p: int) -> str:
        """Prefix of the partition's work streams; the release script appends
        ``<queue>:<priority>`` read from the delayed item."""
        return f"{self._p(p)}:q:"

    def delayed(self, p: int) -> str:
        return f"{self._p(p)}:delayed"

    def delayed_items(self, p: int) -> str:
        return f"{self._p(p)}:delayed:items"

    def idempotency(self, p: int, tenant: str, key: str) -> str:
        """The tenant's name is escaped (:func:`escape_part`) so that it holds
        no ``:`` and the first ``:`` after it ends it: ``acme`` + ``x:k2`` and
        ``acme:x`` + ``k2`` are two keys. The key comes last, as given."""
        return f"{self._p(p)}:idem:{escape_part(tenant)}:{key}"

    def done(self, p: int) -> str:
        return f"{self._p(p)}:done"

    def cancels(self, p: int) -> str:
        return f"{self._p(p)}:cancel"

    def dead_letters(self, p: int) -> str:
        return f"{self._p(p)}:dlq"

    def work_pattern(self, p: int) -> str:
        """SCAN pattern matching every work stream of partition ``p``."""
        return f"{self.work_prefix(p)}*"

    # -- global --------------------------------------------------------------

    def _tagged(self, tag: str) -> str:
        return f"{self.namespace}:{{{tag}}}"

    def nodes(self) -> str:
        return f"{self._tagged(NODE_TAG)}:nodes"

    def nodes_seen(self) -> str:
        return f"{self.nodes()}:seen"

    def nodes_info(self) -> str:
        return f"{self.nodes()}:info"

    def control(self, node: str) -> str:
        return f"{self._tagged(CONTROL_TAG)}:ctl:node:{node}"

    def control_broadcast(self) -> str:
        return f"{self._tagged(CONTROL_TAG)}:ctl:all"

    def control_acks(self) -> str:
        return f"{self._tagged(CONTROL_TAG)}:ctl:acks"

    def control_pattern(self) -> str:
        """SCAN pattern matching every per-node control stream."""
        return f"{self.control('')}*"

    # -- view shards ---------------------------------------------------------

    def view_shards(self) -> list[str]:
        """The view shards: one per partition (``"0"``, ``"1"``, ...) and the
        node shard (``"n"``). Each is one slot, folded by one projector at a
        time, from the streams :meth:`shard_streams` names."""
        return [*(str(p) for p in self.all_partitions()), NODE_SHARD]

    def shard_streams(self, shard: str) -> list[str]:
        """The streams whose events shard ``shard`` folds."""
        if shard == NODE_SHARD:
            return [self.nodes()]
        return [self.events(int(shard))]

    def shard_of_stream(self, stream: str) -> str:
        """The view shard that folds ``stream`` (a partition's log or the node stream)."""
        if stream == self.nodes():
            return NODE_SHARD
        for p in self.all_partitions():
            if stream == self.events(p):
                return str(p)
        raise ValueError(f"{stream!r} is not a stream the views fold")

    def shard_of_task(self, task_id: str) -> str:
        """The view shard that holds ``task_id``'s view."""
        return str(self.partition(task_id))

    def _v(self, shard: str) -> str:
        if shard == NODE_SHARD:
            return f"{self.namespace}:{{v{NODE_SHARD}}}"
        if not (shard.isdigit() and int(shard) < self.partitions):
            raise ValueError(f"view shard {shard!r} out of range")
        return f"{self.namespace}:{{{spread_tag('v', int(shard), self.partitions)}}}"

    def feed(self, shard: str) -> str:
        """The feed of view changes of one shard (capped stream)."""
        return f"{self._v(shard)}:feed"

    def parked(self) -> str:
        return f"{self._tagged(PARKED_TAG)}:parked"

    def blob(self, digest: str) -> str:
        return f"{self.namespace}:blob:{{{digest}}}"

    def api_tokens(self) -> str:
        """Hash: SHA-256 of an API token -> who holds it (tenant, scopes)."""
        return f"{self._tagged(WEB_TAG)}:web:tokens"

    def web_secret(self) -> str:
        """The key that signs short-lived stream tickets, shared by every web process."""
        return f"{self._tagged(WEB_TAG)}:web:secret"

    def web_model(self) -> str:
        """The model the IOPaint-compatible routes use when a request names none."""
        return f"{self._tagged(WEB_TAG)}:web:model"

    def view(self, shard: str, view_ns: str, *parts: str) -> str:
        """A key of view shard ``shard``'s views under view namespace ``view_ns``."""
        return ":".join((self._v(shard), view_ns, *parts))

    def view_lease(self, shard: str, view_ns: str) -> str:
        """Who folds shard ``shard`` of ``view_ns`` now (string, with a TTL);
        the script writing a batch checks it, in the same slot."""
        return self.view(shard, view_ns, "lease")

    def projectors(self) -> str:
        """The live projector processes (hash: name -> expiry, ms); each takes
        its share of the shards."""
        return f"{self.namespace}:{{v}}:projectors"

    def legacy_views(self, pattern: str) -> str:
        """SCAN pattern of keys in the views' old single slot (``ec:{v}:...``:
        views and feed before view shards, dropped by ``eventcore events
        migrate``; the pointer, the projector list and snapshots stay there)."""
        return f"{self.namespace}:{{v}}:{pattern}"

    def view_pointer(self) -> str:
        """Which view namespace readers and the projector use (a rebuild switches it)."""
        return f"{self.namespace}:{{v}}:current"

    def trim_mark(self, stream: str) -> str:
        """Lowest entry id a trim kept in ``stream`` (one of :meth:`events` or
        :meth:`nodes`): entries below it may be gone. The stream's name with a
        suffix, so it carries the stream's hash tag and the trim script writes
        both in one slot."""
        return f"{stream}:trimmed"

    def snapshot(self, snap_id: str) -> str:
        """A published snapshot of the views (hash)."""
        return f"{self.namespace}:{{v}}:snapshot:{snap_id}"

    def log_retention_turn(self) -> str:
        """Held (SET NX PX) by the projector taking this period's scheduled
        snapshot and trim, so only one does, once per period."""
        return f"{self.namespace}:{{v}}:retention:turn"

    def snapshot_partial(self, snap_id: str) -> str:
        """A snapshot while it is written; renamed to :meth:`snapshot` when complete."""
        return f"{self.snapshot(snap_id)}:partial"

    def snapshot_pointer(self) -> str:
        """Which snapshot is the latest (rebuild, verify, as-of and trim start there)."""
        return f"{self.namespace}:{{v}}:snapshot:latest"

    def relative_name(self, key: str) -> str:
        """``key`` without the namespace, and for node and control keys without
        their tag: ``{p0}:events``, ``nodes``, ``ctl:all``. The names exports
        carry, the same as before those keys had tags."""
        rel = key[len(self.namespace) + 1 :]
        for tag in (NODE_TAG, CONTROL_TAG):
            if rel.startswith(f"{{{tag}}}:"):
                return rel[len(tag) + 3 :]
        return rel

    def legacy_names(self) -> list[tuple[str, str]]:
        """(old name, new name) of every fixed key that got a hash tag, for the
        one-time rename of a deployment's data (``eventcore.log.migrate``).
        Per-node control streams and blobs have a free part: see
        :meth:`legacy_control_pattern` and :meth:`legacy_blob_pattern`."""
        ns = self.namespace
        return [
            (f"{ns}:nodes", self.nodes()),
            (f"{ns}:nodes:seen", self.nodes_seen()),
            (f"{ns}:nodes:info", self.nodes_info()),
            (f"{ns}:nodes:trimmed", self.trim_mark(self.nodes())),
            (f"{ns}:ctl:all", self.control_broadcast()),
            (f"{ns}:ctl:acks", self.control_acks()),
            (f"{ns}:parked", self.parked()),
            (f"{ns}:web:tokens", self.api_tokens()),
            (f"{ns}:web:secret", self.web_secret()),
            (f"{ns}:web:model", self.web_model()),
        ]

    def legacy_control_prefix(self) -> str:
        """The old name of a node's control stream without the node."""
        return f"{self.namespace}:ctl:node:"

    def legacy_blob_prefix(self) -> str:
        """The old name of a blob without its digest."""
        return f"{self.namespace}:blob:"

    def all_keys_pattern(self) -> str:
        """SCAN pattern matching every key of this namespace (for tools and tests)."""
        return f"{self.namespace}:*"
