"""The web app's reader of the SQL history (:mod:`history`).

The database is opened on first use (``sql.url``, else ``history.sqlite3``
in the data directory) and read in a thread, so a slow query never holds up
the event loop. Problems with it are 503s naming the database (422s for a
bad query value), so the routes that use it never answer 500, and nothing
else in the app depends on it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from eventcore.config import Settings
from history.database import Database, SqlError, check_schema, database_url, open_database
from history.queries import BadQuery
from history.store import HistoryStore
from projections.views import TaskView
from web.errors import ApiError

__all__ = ["SqlHistory"]


class SqlHistory:
    """The web app's reader of the SQL history, opened on first use."""

    def __init__(self, settings: Settings) -> None:
        self.url = database_url(settings)
        self._db: Database | None = None
        self._checked = False

    def database(self) -> Database:
        """The database, its schema checked once (blocking: call in a thread)."""
        if self._db is None:
            db = open_database(self.url)
            if db.sqlite and not Path(db.sa_url.database or "").exists():
                db.dispose()
                raise SqlError(
                    f"there is no SQL history at {db.sa_url.database} yet: "
                    "`eventcore sql` (which `eventcore up` runs) creates it"
                )
            self._db = db
        if not self._checked:
            check_schema(self._db)
            self._checked = True
        return self._db

    async def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(database, ...)`` in a thread; database problems become a 503."""

        def call() -> Any:
            return fn(self.database(), *args, **kwargs)

        try:
            return await asyncio.to_thread(call)
        except BadQuery as exc:
            raise ApiError(422, "invalid", f"{exc.field}: {exc.message}") from None
        except SqlError as exc:
            self._checked = False
            raise ApiError(503, "unavailable", str(exc)) from None

    async def task(self, task_id: str) -> TaskView | None:
        """The task's view as the SQL history has it, or ``None`` (no row,
        or no history to ask)."""
        try:
            found = await self.run(lambda db: HistoryStore(db).task_views([task_id]))
        except ApiError:
            return None
        return found.get(task_id)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()
