"""Optuna storages from a URL: one opener for every kind the project supports, and the study's heartbeats.

URLs: ``journal:PATH`` (or ``journal:///abs/path``, or a bare path ending in ``.log``/``.journal``/``.jsonl``)
is Optuna's journal file storage, for several processes on one machine (or an NFS share); ``sqlite:///PATH``,
``postgresql://...`` (psycopg 3: the ``postgres`` extra) and ``mysql://...`` are Optuna's RDB storage
(PostgreSQL is the scale-out across machines); ``redis://...`` is the journal's Redis backend (the ``redis``
package).

- :func:`open_storage` opens a URL (``create=False``: read only, a missing file or database is an error).
- :func:`open_study_storage` opens a URL for one study: it creates the study if needed, stores the study's
  heartbeat settings with it at creation, and returns the storage configured with the study's settings
  (whatever this process asked) plus those settings.
- Heartbeats, stale trials, retries: :mod:`study.heartbeat` (re-exported here). Torn journal files:
  :mod:`study.journal_file`. Passwords: :mod:`study.secrets` (every message here is masked).

Errors are :class:`StorageError`, one line, password masked (a usage error: exit status 2).
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.exceptions import DuplicatedStudyError, ExperimentalWarning
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.study import StudyDirection

from .heartbeat import (  # noqa: F401 - re-exported: the driver's one import for storages and heartbeats
    DEFAULT_INTERVAL, GRACE_FACTOR, MAX_RETRY, HeartbeatSettings, Heartbeats, RetryStaleTrial, StaleTrial,
    fail_stale, is_finished, read_settings, record_heartbeats, set_fail_reason, write_settings,
)
from .journal_file import JournalDamaged, open_backend
from .secrets import mask_text, mask_url  # noqa: F401 - re-exported

RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")
SETTLE_S = 5.0  # how long a process that did not create the study waits for its creator's settings
# Python packages a URL's database driver comes from, and how to install them
DRIVER_HINTS = {
    "psycopg": "PostgreSQL needs psycopg 3; install it with: pip install 'bdense-study[postgres]'",
    "psycopg2": "postgresql+psycopg2:// needs psycopg2; write postgresql://... and install psycopg 3 with: "
                "pip install 'bdense-study[postgres]' (or: pip install psycopg2-binary)",
    "MySQLdb": "mysql:// needs mysqlclient; write mysql+pymysql://... and: pip install pymysql",
    "pymysql": "mysql+pymysql:// needs PyMySQL: pip install pymysql",
    "redis": "redis:// needs the redis package: pip install redis",
}

Say = Callable[[str], None]


class StorageError(ValueError):
    """The storage URL is unsupported or cannot be opened (a usage error: exit status 2). One line, with
    every password masked."""


def _say_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def journal_path(url: str) -> Path | None:
    """The file of a journal URL (``journal:PATH``, ``journal:///abs``, or a bare ``*.log`` path), else None."""
    if url.startswith("journal:"):
        rest = url[len("journal:"):]
        if rest.startswith("//"):
            rest = rest[2:]  # journal:///abs/path -> /abs/path
        return Path(rest).expanduser() if rest else None
    if "://" not in url and url.endswith((".log", ".journal", ".jsonl")):
        return Path(url).expanduser()
    return None


def _scheme(url: str) -> tuple[str, str]:
    """('postgresql', 'psycopg2') for postgresql+psycopg2://...; ('', '') without a scheme."""
    if "://" not in url:
        return "", ""
    head = url.split("://", 1)[0].lower()
    scheme, _, driver = head.partition("+")
    return scheme, driver


def normalize_url(url: str) -> str:
    """``postgres://`` (as many services print it) is SQLAlchemy's ``postgresql://``; anything else unchanged."""
    return "postgresql" + url[len("postgres"):] if url.lower().startswith(("postgres://", "postgres+")) else url


def _missing_driver(e: ImportError, url: str) -> str:
    cause = e.__cause__ if isinstance(e.__cause__, ImportError) else e
    name = (getattr(cause, "name", None) or "").split(".")[0]
    if name in DRIVER_HINTS:
        return DRIVER_HINTS[name]
    scheme, driver = _scheme(url)
    if scheme == "postgresql" and driver in ("", "psycopg"):
        return DRIVER_HINTS["psycopg"]
    if scheme == "redis":
        return DRIVER_HINTS["redis"]
    what = name or driver or scheme
    return f"the database driver for {scheme}:// is not installed ({what}); install it with pip"


def _rdb(url: str, create: bool, settings: HeartbeatSettings | None) -> RDBStorage:
    scheme, _ = _scheme(url)
    if scheme == "sqlite":
        db = url.split(":///", 1)[1] if ":///" in url else ""
        if db and db != ":memory:":
            path = Path(db.split("?", 1)[0]).expanduser()
            if not create and not path.is_file():
                raise StorageError(f"no SQLite file {path}")
            if not path.parent.is_dir():
                raise StorageError(f"folder {path.parent} does not exist")
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}  # long runs outlive idle connections
    kwargs = {}
    if settings is not None:
        kwargs = dict(heartbeat_interval=settings.interval, grace_period=settings.grace,
                      heartbeat_stale_trial_callback=RetryStaleTrial())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeat arguments are "experimental"
        return RDBStorage(url, engine_kwargs=engine_kwargs, skip_table_creation=not create, **kwargs)


def open_storage(url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 create: bool = True, say: Say = _say_stderr) -> BaseStorage:
    """Open the storage of ``url``.

    ``create=True``: a missing journal file, SQLite file or Optuna schema is created; a journal file's torn
    tail is cut (a backup is kept; ``say`` gets one line), now and before every later append.
    ``create=False``: read only; the file (or database schema) must exist; nothing is written.
    ``heartbeat_interval``/``grace_period`` configure Optuna's heartbeats on an RDB storage (with the retry
    callback :class:`RetryStaleTrial`); a journal storage keeps its heartbeats in the study itself, so they
    only get checked there. Prefer :func:`open_study_storage`, which takes them from the study.
    Raises :class:`StorageError` (one line, password masked).
    """
    shown = mask_url(url)
    try:
        settings = None
        if heartbeat_interval is not None or grace_period is not None:
            settings = HeartbeatSettings.make(heartbeat_interval, grace_period)
        url = normalize_url(str(url).strip())
        path = journal_path(url)
        if path is not None:
            return JournalStorage(open_backend(path, create=create, say=say))
        if url.startswith("journal:"):
            raise StorageError("journal storage URL without a path; use journal:PATH")
        scheme, _ = _scheme(url)
        if scheme == "redis":
            from optuna.storages.journal import JournalRedisBackend

            return JournalStorage(JournalRedisBackend(url))
        if scheme in RDB_SCHEMES:
            return _rdb(url, create, settings)
        raise StorageError("unsupported storage URL; use journal:PATH, sqlite:///PATH, postgresql://... "
                           "or redis://...")
    except StorageError as e:
        raise StorageError(f"cannot open Optuna storage {shown}: {mask_text(str(e), url)}") from None
    except ImportError as e:
        raise StorageError(f"cannot open Optuna storage {shown}: {_missing_driver(e, url)}") from None
    except (JournalDamaged, FileNotFoundError, PermissionError) as e:
        raise StorageError(f"cannot open Optuna storage {shown}: {mask_text(str(e), url)}") from None
    except Exception as e:  # noqa: BLE001 - any driver error is a bad URL or server for the user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageError(f"cannot open Optuna storage {shown}: {mask_text(reason, url)}") from None


def _find_or_create(storage: BaseStorage, study_name: str, create: bool, direction: str,
                    shown: str) -> tuple[int, bool]:
    try:
        return storage.get_study_id_from_name(study_name), False
    except KeyError:
        if not create:
            names = sorted(s.study_name for s in storage.get_all_studies())
            there = f"; studies there: {', '.join(names)}" if names else "; it holds no study"
            raise StorageError(f"no study {study_name!r} in {shown}{there}") from None
    try:
        return storage.create_new_study([StudyDirection[direction.upper()]], study_name), True
    except DuplicatedStudyError:  # another process created it first
        return storage.get_study_id_from_name(study_name), False


def _study_settings(storage: BaseStorage, study_id: int, created: bool,
                    wanted: HeartbeatSettings) -> HeartbeatSettings:
    """The study's settings; the creator writes ``wanted``; others wait for them (a study created without
    them, e.g. by an older version, gets ``wanted`` from the first process that finds it so)."""
    if created:
        write_settings(storage, study_id, wanted)
    deadline = time.monotonic() + SETTLE_S
    settings = read_settings(storage, study_id)
    while settings is None and time.monotonic() < deadline:
        time.sleep(0.2)
        settings = read_settings(storage, study_id)
    if settings is None:
        write_settings(storage, study_id, wanted)
        settings = read_settings(storage, study_id)
    return settings


def open_study_storage(url: str, study_name: str, *, heartbeat_interval: int | None = None,
                       grace_period: int | None = None, create: bool = True, direction: str = "minimize",
                       say: Say = _say_stderr) -> tuple[BaseStorage, HeartbeatSettings | None]:
    """Open ``url`` for study ``study_name``; returns (storage, the study's heartbeat settings).

    ``create=True`` (the driver): the storage and the study are created if missing (``direction``); a new
    study stores ``HeartbeatSettings.make(heartbeat_interval, grace_period)`` (defaults 30 s and 4 intervals)
    with it; an existing study keeps its own, and if this process asked for others (a value that is not
    None), ``say`` gets one line naming the values the study uses. An RDB storage comes back configured
    with the study's settings and :class:`RetryStaleTrial`, so that :func:`fail_stale` and
    :func:`record_heartbeats` work on it; pass it to ``optuna.create_study``/``load_study``.
    ``create=False`` (analysis): read only; the study must exist; settings may be None (an older study).
    Raises :class:`StorageError` (one line, password masked), also for bad heartbeat values.
    """
    shown = mask_url(url)
    try:
        wanted = HeartbeatSettings.make(heartbeat_interval, grace_period)
    except ValueError as e:
        raise StorageError(f"cannot open Optuna storage {shown}: {e}") from None
    storage = open_storage(url, create=create, say=say)
    try:
        study_id, created = _find_or_create(storage, study_name, create, direction, shown)
        if not create:
            return storage, read_settings(storage, study_id)
        settings = _study_settings(storage, study_id, created, wanted)
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - a server that fails after connecting
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageError(f"cannot use Optuna storage {shown}: {mask_text(reason, url)}") from None
    asked = {k: v for k, v in (("interval", heartbeat_interval), ("grace", grace_period)) if v is not None}
    if not created and any(getattr(settings, k) != v for k, v in asked.items()):
        say(f"heartbeat: study {study_name!r} uses its own settings ({settings.describe()}), set when it was "
            f"created; the asked " + ", ".join(f"{k} {v} s" for k, v in asked.items()) + " is not used")
    if isinstance(storage, RDBStorage):
        configured = open_storage(url, heartbeat_interval=settings.interval, grace_period=settings.grace,
                                  create=True, say=say)
        storage.engine.dispose()
        storage = configured
    return storage, settings


def storage_location(url: str) -> str:
    """A human-readable place for the summary: the file path for journal storages, else the masked URL."""
    path = journal_path(url)
    return str(path) if path is not None else mask_url(url)
