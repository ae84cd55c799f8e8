"""Scale-out on a real PostgreSQL (Debian's ``postgresql``; skipped where it is not installed).

- fast: the storage API of study/storage.py on PostgreSQL through ``postgresql://`` (psycopg 3, the
  ``postgres`` extra): study-owned heartbeat settings, a live owner kept, a dead one failed and retried by
  Optuna's own ``fail_stale_trials``, errors without the password;
- slow: ``scripts/scaleout_check.py``, two study processes and an ``mlflow server`` on that PostgreSQL, one
  process SIGKILLed (a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import importlib.util
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import scaleout_check  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning", "ignore::FutureWarning",
                               "ignore:Heartbeat of storage:UserWarning"),
    pytest.mark.skipif(scaleout_check.pg_bindir() is None, reason="PostgreSQL's server is not installed"),
    pytest.mark.skipif(importlib.util.find_spec("psycopg") is None,
                       reason="psycopg 3 missing: pip install 'bdense-study[postgres]'"),
]


@pytest.fixture(scope="module")
def postgres():
    root = Path(tempfile.mkdtemp(prefix="bdense-test-pg-"))  # under /tmp: the postgres user can reach it
    pg = scaleout_check.Postgres(scaleout_check.pg_bindir(), root, password=f"pw{secrets.token_hex(6)}")
    try:
        pg.start()
    except scaleout_check.SetupError as e:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL does not start here: {e}")
    yield pg
    pg.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_postgresql_urls_work_with_study_owned_heartbeats(postgres):
    from study.storage import StorageError, fail_stale, is_finished, open_storage, open_study_storage, record_heartbeats

    url = postgres.url("optuna")
    said = []
    storage, settings = open_study_storage(url, "pg", heartbeat_interval=1, grace_period=2, say=said.append)
    other_storage, other_settings = open_study_storage(url, "pg", heartbeat_interval=30, say=said.append)
    assert settings == other_settings and (other_storage.heartbeat_interval, other_storage.grace_period) == (1, 2)
    assert len(said) == 1 and "uses its own settings" in said[0]

    owner = optuna.load_study(study_name="pg", storage=storage)
    other = optuna.load_study(study_name="pg", storage=other_storage)
    trial = owner.ask()
    trial.suggest_int("K", 1, 4)
    trial.set_user_attr("role", "search")
    trial.set_user_attr("mlflow_run_id", "r1")
    with record_heartbeats(storage, owner, [trial.number]):
        time.sleep(3.5)  # > grace: only the beats keep it alive
        assert fail_stale(other_storage, other) == []
    time.sleep(3.5)
    failed = fail_stale(other_storage, other)
    assert [(f.number, f.mlflow_run_id) for f in failed] == [(trial.number, "r1")]
    assert is_finished(storage, owner, trial.number)
    retry = other.trials[failed[0].retry_number]
    assert retry.state == TrialState.WAITING and retry.user_attrs == {"role": "search", "retry_of": trial.number}

    with pytest.raises(StorageError) as e:
        open_storage(url.replace(postgres.password, "wrong-" + postgres.password))
    assert postgres.password not in str(e.value) and "password authentication failed" in str(e.value)


@pytest.mark.slow
def test_two_machines_on_postgresql_survive_a_killed_worker():
    """The whole scale-out check; its table is the assertion message."""
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "scaleout_check.py")], capture_output=True,
                          text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
