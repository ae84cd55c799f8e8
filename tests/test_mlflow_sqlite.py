"""A new SQLite MLflow store opened by several processes at once (study/mlflow_sqlite.py and why it exists)."""

from __future__ import annotations

import multiprocessing as mp

from study.mlflow_sqlite import sqlite_path

WORKERS, REPS = 4, 3


def _open_stores(uris, barrier, locked: bool) -> list[str]:
    """In a worker: open each new store at the same moment as the other workers; what each open said."""
    from mlflow import MlflowClient

    from study.tracking import Tracker

    said = []
    for uri in uris:
        barrier.wait()
        try:
            if locked:
                Tracker.open(uri)
            else:
                MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
            said.append("ok")
        except Exception as e:  # noqa: BLE001 - the test counts failures of any kind (TrackingError among them)
            said.append(str(e).splitlines()[0])
    return said


def _race(tmp_path, locked: bool) -> list[list[str]]:
    uris = [f"sqlite:///{tmp_path / f'store{r}' / 'mlflow.db'}" for r in range(REPS)]
    for r in range(REPS):
        (tmp_path / f"store{r}").mkdir()
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(WORKERS)
        with ctx.Pool(WORKERS) as pool:
            return pool.starmap(_open_stores, [(uris, barrier, locked)] * WORKERS)


def test_plain_mlflow_fails_when_processes_create_one_sqlite_store_together(tmp_path):
    """The behaviour the workaround relies on being needed: MLflow's first open migrates the new store with no
    lock, so processes that open it together collide (if this stops failing, MLflow serialises it itself)."""
    said = _race(tmp_path, locked=False)
    failures = [s for worker in said for s in worker if s != "ok"]
    assert failures, "every concurrent first open of a new SQLite store succeeded: MLflow may lock it now"
    assert any(word in f for f in failures for word in ("already exists", "duplicate column", "locked")), failures


def test_tracker_open_creates_one_sqlite_store_from_several_processes(tmp_path):
    said = _race(tmp_path, locked=True)
    assert said == [["ok"] * REPS] * WORKERS
    for r in range(REPS):
        assert (tmp_path / f"store{r}" / "mlflow.db.lock").exists()


def test_sqlite_path_reads_only_local_sqlite_files(tmp_path):
    assert sqlite_path(f"sqlite:///{tmp_path}/m.db") == tmp_path / "m.db"
    assert sqlite_path("sqlite:///relative/m.db?timeout=5") is not None
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("http://localhost:5000") is None
    assert sqlite_path(f"file:{tmp_path}") is None
