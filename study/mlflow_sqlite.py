"""A new SQLite MLflow store opened by several processes at once (a workaround: MLflow does not serialise it).

The first client of a new ``sqlite:///...`` store creates its tables and runs its schema migrations (Alembic).
MLflow takes no lock for that: two processes that open the same new store together both migrate it, and one
of them fails with ``table experiments already exists``, ``duplicate column name: step`` or ``table
_alembic_tmp_tags already exists`` (``tests/test_mlflow_sqlite.py`` pins that behaviour, which is why this
module exists). It happens whenever two studies start together on a fresh run folder, as the GPU campaign's
lanes do (session 7 lost its PD lane to it), or when a run folder is rebuilt from a report (no MLflow store).

:func:`first_open` holds an exclusive ``fcntl`` lock on ``DB.lock`` beside the store while a client opens it
for the first time in this process, so one process creates the schema and the others find it made. Stores
that are not local SQLite files (a server, a ``file:`` store, ``:memory:``) pass through unlocked.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URI (None for anything else, ``:memory:`` included)."""
    if not uri.startswith("sqlite:") or ":///" not in uri:
        return None
    db = uri.split(":///", 1)[1].split("?", 1)[0]
    return Path(db).expanduser() if db and db != ":memory:" else None


@contextlib.contextmanager
def first_open(uri: str) -> Iterator[None]:
    """Hold the store's creation lock (``DB.lock``) for the body: open the client and query it inside."""
    db = sqlite_path(uri)
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no lock (one process at a time must create the store there)
        fcntl = None
    if db is None or fcntl is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
