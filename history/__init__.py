"""The task history in SQL: a projection of the log into PostgreSQL or SQLite.

Redis holds the present (live views, feeds, the recent log); the SQL store
holds the past, for months of history, ad-hoc queries and reports. Like the
views in Redis it is only a projection: it is filled from the log, can be
dropped and filled again, and never holds anything the log did not say.

- :mod:`history.schema`: the tables (SQLAlchemy Core);
- :mod:`history.database`: opening a database from a URL, migrations, errors;
- :mod:`history.rows`: views and entries as rows (pure);
- :mod:`history.store`: reading and writing the tables, one transaction a batch;
- :mod:`history.follower`: ``eventcore sql``, following the log into the store;
- :mod:`history.verify`: the tables against a fold of the log;
- :mod:`history.queries`: what ``/v1/history/...`` and ``eventcore history`` ask.
"""
