"""Storages: the opener, study-owned heartbeats, stale trials and retries, torn journal files, masked passwords.

Also pins the Optuna 5 behaviours that study/storage.py, study/heartbeat.py, study/journal_heartbeat.py and
study/journal_file.py rely on (tests named ``test_optuna_*``): if one of them fails after an Optuna upgrade,
the workaround that relies on it must be revisited.
"""

from __future__ import annotations

import sys
import threading
import time
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import JournalStorage, RDBStorage, RetryFailedTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from study import journal_file, journal_heartbeat
from study.heartbeat import SETTINGS_ATTR, HeartbeatSettings, write_settings
from study.secrets import mask_text, mask_url
from study.storage import (
    StorageError, fail_stale, is_finished, open_storage, open_study_storage, record_heartbeats,
)

optuna.logging.set_verbosity(optuna.logging.ERROR)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning",
                                        "ignore::FutureWarning", "ignore:Heartbeat of storage:UserWarning")

FAST = dict(heartbeat_interval=1, grace_period=2)  # the smallest legal rule: stale after 2 s without a beat


def _url(tmp_path: Path, kind: str) -> str:
    return f"journal:{tmp_path / 'j.log'}" if kind == "journal" else f"sqlite:///{tmp_path / 'o.db'}"


def _plain(url: str):
    """The same storage as another process would open it with plain Optuna."""
    if url.startswith("journal:"):
        return JournalStorage(JournalFileBackend(url[len("journal:"):]))
    return RDBStorage(url)


def _ids(storage, study, number):
    sid = storage.get_study_id_from_name(study.study_name)
    return sid, storage.get_trial_id_from_study_id_trial_number(sid, number)


def _running_trial(study, **attrs):
    trial = study.ask()
    trial.suggest_int("K", 1, 4)
    trial.suggest_float("a", -1.0, 1.0)
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    return trial


# ---------------------------------------------------------------- secrets

@pytest.mark.parametrize("url, masked", [
    ("postgresql://bdense:s3cret@127.0.0.1:5432/study", "postgresql://bdense:***@127.0.0.1:5432/study"),
    ("postgresql+psycopg://u:p%40ss@db.lab:5432/s?sslmode=require", "postgresql+psycopg://u:***@db.lab:5432/s?sslmode=require"),
    ("postgresql://u@h/db?password=hunter22&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
    ("redis://:pw123@localhost:6379/0", "redis://:***@localhost:6379/0"),
    ("http://user:tok3n@mlflow.lab:5000", "http://user:***@mlflow.lab:5000"),
    ("postgresql://u:a@b/c@host/db", "postgresql://u:***@host/db"),  # an unescaped '@' in the password
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("journal:/runs/optuna-journal.log", "journal:/runs/optuna-journal.log"),
    ("sqlite:////runs/o.db", "sqlite:////runs/o.db"),
    ("postgresql://bdense@h/db", "postgresql://bdense@h/db"),
])
def test_mask_url(url, masked):
    assert mask_url(url) == masked


def test_mask_text_hides_the_password_also_where_a_driver_quotes_it():
    url = "postgresql://bdense:p%40ss-42@127.0.0.1:5432/s"
    text = 'connection to postgresql://bdense:p%40ss-42@127.0.0.1:5432/s failed: password "p@ss-42" rejected'
    assert mask_text(text, url) == 'connection to postgresql://bdense:***@127.0.0.1:5432/s failed: password "***" rejected'


# ---------------------------------------------------------------- the opener

def test_unusable_storages_are_reported(tmp_path):
    (tmp_path / "junk.log").write_text("not a journal\n")
    for url in [f"sqlite:///{tmp_path}/missing/x.db", "bogus://x", f"journal:{tmp_path}", str(tmp_path / "junk.log"),
                "journal:"]:
        with pytest.raises(StorageError, match="cannot open Optuna storage") as e:
            open_storage(url)
        assert "\n" not in str(e.value)


def test_read_only_never_creates_anything(tmp_path):
    for url in [f"journal:{tmp_path / 'none.log'}", str(tmp_path / "none.log"), f"sqlite:///{tmp_path / 'none.db'}"]:
        with pytest.raises(StorageError, match="no (journal|SQLite) file"):
            open_storage(url, create=False)
    assert list(tmp_path.iterdir()) == []
    open_study_storage(f"journal:{tmp_path / 'j.log'}", "a")
    with pytest.raises(StorageError, match=r"no study 'b' in .*studies there: a"):
        open_study_storage(f"journal:{tmp_path / 'j.log'}", "b", create=False)
    storage, settings = open_study_storage(f"journal:{tmp_path / 'j.log'}", "a", create=False)
    assert settings == HeartbeatSettings(30, 120) and optuna.get_all_study_names(storage) == ["a"]


def test_errors_mask_the_password_and_name_the_postgres_extra(monkeypatch):
    url = "postgresql://bdense:Sup3rSecret@127.0.0.1:9/study"  # port 9: nothing listens
    with pytest.raises(StorageError) as e:
        open_storage(url)
    assert "Sup3rSecret" not in str(e.value) and "bdense:***@127.0.0.1:9" in str(e.value)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as without the extra: import psycopg fails
    with pytest.raises(StorageError) as e:
        open_storage(url)
    assert str(e.value) == ("cannot open Optuna storage postgresql://bdense:***@127.0.0.1:9/study: PostgreSQL needs "
                            "psycopg 3; install it with: pip install 'bdense-study[postgres]'")


def test_postgres_urls_map_to_psycopg3():
    from sqlalchemy.engine import make_url

    pytest.importorskip("psycopg")  # the postgres extra
    dialect = make_url("postgresql://u:p@h/db").get_dialect()
    assert dialect.driver == "psycopg"  # SQLAlchemy >= 2.1: what `pip install 'bdense-study[postgres]'` provides


# ---------------------------------------------------------------- one staleness rule per study

def test_the_study_keeps_the_settings_of_its_creator(tmp_path):
    url = f"journal:{tmp_path / 'j.log'}"
    said = []
    _, first = open_study_storage(url, "s", heartbeat_interval=30, say=said.append)
    assert first == HeartbeatSettings(30, 120) and said == []
    _, second = open_study_storage(url, "s", heartbeat_interval=1, say=said.append)
    assert second == first
    assert said == ["heartbeat: study 's' uses its own settings (a heartbeat every 30 s, stale after 120 s without "
                    "one), set when it was created; the asked interval 1 s is not used"]
    _, third = open_study_storage(url, "s", say=said.append)  # no flag: nothing to say
    assert third == first and len(said) == 1
    with pytest.raises(StorageError, match="grace period must be .* >= 2 heartbeat intervals"):
        open_study_storage(url, "t", heartbeat_interval=10, grace_period=15)


def test_a_process_that_did_not_create_the_study_waits_for_its_creators_settings(tmp_path):
    """Two processes starting together: the creator's settings win, not the joiner's flag."""
    url = f"journal:{tmp_path / 'j.log'}"
    creator = open_storage(url)
    sid = creator.create_new_study([optuna.study.StudyDirection.MINIMIZE], "s")  # created, settings not yet written
    timer = threading.Timer(0.5, write_settings, (creator, sid, HeartbeatSettings(2, 8)))
    timer.start()
    said = []
    _, settings = open_study_storage(url, "s", heartbeat_interval=30, say=said.append)
    timer.join()
    assert settings == HeartbeatSettings(2, 8) and "uses its own settings" in said[0]


def test_a_study_created_by_plain_optuna_gets_settings_once(tmp_path, monkeypatch):
    monkeypatch.setattr("study.storage.SETTLE_S", 0.3)
    url = f"sqlite:///{tmp_path / 'o.db'}"
    optuna.create_study(study_name="old", storage=url)
    storage, settings = open_study_storage(url, "old", heartbeat_interval=5)
    assert settings == HeartbeatSettings(5, 20)
    assert isinstance(storage, RDBStorage) and (storage.heartbeat_interval, storage.grace_period) == (5, 20)
    sid = storage.get_study_id_from_name("old")
    assert storage.get_study_system_attrs(sid)[SETTINGS_ATTR] == {"interval": 5, "grace": 20}


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_live_owner_is_never_failed_and_a_dead_one_is_retried(tmp_path, kind):
    """Issue 11, 1: another process asking a shorter heartbeat must not fail a live owner's trials."""
    url = _url(tmp_path, kind)
    owner_storage, settings = open_study_storage(url, "s", heartbeat_interval=4, grace_period=8)
    owner = optuna.load_study(study_name="s", storage=owner_storage)
    trials = [_running_trial(owner, role="search", mlflow_run_id=f"run{i}", nfe=2, fitted_a=0.5) for i in range(2)]
    # a process that asks for beats every second and a 2 s grace: with its own rule it fails the owner (who
    # beats every 4 s) within 4 s (checked by hand: optuna.storages.fail_stale_trials on an RDBStorage with
    # grace_period=2 does); with the study's rule (8 s) it must not
    other_storage, other_settings = open_study_storage(url, "s", heartbeat_interval=1, grace_period=2,
                                                       say=lambda _: None)
    other = optuna.load_study(study_name="s", storage=other_storage)
    assert other_settings == settings == HeartbeatSettings(4, 8)

    with record_heartbeats(owner_storage, owner, [t.number for t in trials]) as beats:
        deadline = time.monotonic() + 5  # > one beat interval and > the asked grace
        while time.monotonic() < deadline:
            assert fail_stale(other_storage, other) == []
            time.sleep(0.5)
        owner.tell(trials[0], 1.5)
        beats.discard(trials[0].number)
        assert beats.numbers == {trials[1].number}
        beats.stop()  # the owner "dies": no more beats for trial 1
        time.sleep(settings.grace + 1.5)
        failed = fail_stale(other_storage, other)
    assert [(f.number, f.mlflow_run_id) for f in failed] == [(trials[1].number, "run1")]
    assert fail_stale(owner_storage, owner) == []  # failed once, by one process

    # the owner learns it and ends the trial cleanly
    assert is_finished(owner_storage, owner, trials[1].number) and is_finished(owner_storage, owner, trials[0].number)
    assert owner.tell(trials[1], 2.0, skip_if_finished=True).state == TrialState.FAIL

    old = other.trials[trials[1].number]
    retry = other.trials[failed[0].retry_number]
    assert old.state == TrialState.FAIL and retry.state == TrialState.WAITING
    assert retry.params == old.params and retry.distributions == old.distributions
    assert retry.user_attrs == {"role": "search", "nfe": 2, "retry_of": old.number}  # no run id, no results
    assert retry.system_attrs["retry_history"] == [old.number]
    assert journal_heartbeat.BEAT_ATTR not in retry.system_attrs
    # the retry is what the next ask() runs
    again = other.ask()
    assert again.number == retry.number and again.params == old.params


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_trial_failed_by_another_process_stops_being_beaten_for(tmp_path, kind):
    url = _url(tmp_path, kind)
    storage, _ = open_study_storage(url, "s", **FAST)
    study = optuna.load_study(study_name="s", storage=storage)
    trial = _running_trial(study)
    with record_heartbeats(storage, study, [trial.number]) as beats:
        plain = _plain(url)
        plain.set_trial_state_values(_ids(plain, study, trial.number)[1], TrialState.FAIL)  # "another process"
        time.sleep(2.5)
        assert beats.numbers == frozenset() and beats.gone() == {trial.number}


def test_retries_stop_after_three(tmp_path):
    url = _url(tmp_path, "journal")
    storage, settings = open_study_storage(url, "s", **FAST)
    study = optuna.load_study(study_name="s", storage=storage)
    trial = _running_trial(study, role="baseline-k1")
    numbers = [trial.number]
    for _ in range(4):
        sid, tid = _ids(storage, study, numbers[-1])
        journal_heartbeat.beat(storage, tid, now=time.time() - 10)  # its owner's last beat: 10 s ago
        failed = fail_stale(storage, study)
        assert [f.number for f in failed] == [numbers[-1]]
        if failed[0].retry_number is None:
            break
        numbers.append(study.ask().number)  # a process takes the retry and dies too
    assert len(numbers) == 4  # the original and 3 retries
    assert [t.user_attrs.get("retry_of") for t in study.trials] == [None, 0, 0, 0]
    assert all(t.state == TrialState.FAIL for t in study.trials)


# ---------------------------------------------------------------- torn journal files

def _journal_with_trials(tmp_path, n=3) -> Path:
    path = tmp_path / "j.log"
    storage, _ = open_study_storage(f"journal:{path}", "s", say=lambda _: None)
    study = optuna.load_study(study_name="s", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=n)
    return path


TEARS = {
    "no newline": lambda b: b[:-7],
    "NUL bytes": lambda b: b + b"\0" * 512,
    "torn then NUL": lambda b: b[:-30] + b"\0" * 4096,
    "unparsable line": lambda b: b + b'{"op_code": 4, "worker_id": "x", "trial_id\n',
    "two bad lines": lambda b: b + b"\0\0\0\n" + b'{"op_code"',
}


@pytest.mark.parametrize("tear", list(TEARS))
def test_a_torn_journal_is_repaired_and_stays_readable_by_plain_optuna(tmp_path, tear):
    path = _journal_with_trials(tmp_path)
    whole = path.read_bytes()
    torn = TEARS[tear](whole)
    path.write_bytes(torn)
    said = []
    storage, _ = open_study_storage(f"journal:{path}", "s", say=said.append)
    assert len(said) == 1 and said[0].startswith(f"journal {path}: its last ") and ".torn-" in said[0]
    backups = list(tmp_path.glob("j.log.torn-*.bak"))
    assert len(backups) == 1 and backups[0].read_bytes() == torn
    good_lines = whole.count(b"\n") - (1 if tear in ("no newline", "torn then NUL") else 0)
    assert path.read_bytes() == b"".join(whole.splitlines(keepends=True)[:good_lines])
    study = optuna.load_study(study_name="s", storage=storage)
    before = len([t for t in study.trials if t.state == TrialState.COMPLETE])
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    plain = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path))))
    assert len([t for t in plain.trials if t.state == TrialState.COMPLETE]) == before + 2


def test_a_tail_torn_by_another_process_is_cut_before_the_next_append(tmp_path):
    path = _journal_with_trials(tmp_path, n=1)
    said = []
    storage, _ = open_study_storage(f"journal:{path}", "s", say=said.append)
    study = optuna.load_study(study_name="s", storage=storage)
    with open(path, "ab") as f:  # another process died in the middle of its write
        f.write(b'{"op_code":5,"worker_id":"dead","trial_id":0,"st')
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert len(said) == 1 and "no newline at the end" in said[0]
    plain = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path))))
    assert [t.state for t in plain.trials] == [TrialState.COMPLETE] * 2


def test_damage_before_the_tail_is_refused_with_the_fix(tmp_path):
    path = _journal_with_trials(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:3] + [lines[3][:20] + lines[4]] + lines[5:]))  # a torn line with one after it
    with pytest.raises(StorageError) as e:
        open_storage(f"journal:{path}")
    assert str(e.value).endswith(f"is damaged at line 4 of {len(lines) - 1} (not at its end), so Optuna cannot read "
                                 f"it; restore it from a backup, or keep the lines before the damage with: "
                                 f"head -n 3 {path} > {path}.repaired (and use that file)")
    assert list(tmp_path.glob("*.bak")) == []


def test_read_only_opening_never_writes_a_torn_journal(tmp_path):
    path = _journal_with_trials(tmp_path)
    path.write_bytes(path.read_bytes()[:-5])
    torn = path.read_bytes()
    storage = open_storage(f"journal:{path}", create=False)
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 3
    path.write_bytes(torn + b"\n" + b"\0" * 10)  # two bad lines: plain Optuna cannot read that
    with pytest.raises(StorageError, match=r"last 2 lines are torn .* python -m study.journal_file --repair"):
        open_storage(f"journal:{path}", create=False)
    assert path.read_bytes() == torn + b"\n" + b"\0" * 10
    assert journal_file.main([str(path), "--repair"]) == 0
    assert len(optuna.load_study(study_name="s", storage=open_storage(f"journal:{path}", create=False)).trials) == 3


def test_a_nul_only_journal_is_a_torn_first_write(tmp_path):
    path = tmp_path / "j.log"
    path.write_bytes(b"\0" * 4096)
    storage, _ = open_study_storage(f"journal:{path}", "s", say=lambda _: None)
    assert path.read_bytes().count(b"\n") >= 2 and b"\0" not in path.read_bytes()


# ---------------------------------------------------------------- Optuna behaviours relied on

@pytest.mark.parametrize("tear", list(TEARS))
def test_optuna_itself_does_not_repair_a_torn_journal(tmp_path, tear):
    """Why study/journal_file.py exists: plain Optuna appends after the torn tail and the file is lost."""
    path = tmp_path / "j.log"
    study = optuna.create_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path))))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    path.write_bytes(TEARS[tear](path.read_bytes()))
    for _ in range(2):  # two more runs of plain Optuna, as a user who tries again would do
        try:
            again = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path))))
            again.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
        except Exception:  # noqa: BLE001 - the appending run breaks (issue 11, 2): AttributeError, ValueError...
            continue
        pytest.fail("plain Optuna ran a trial on a torn journal without breaking")
    with pytest.raises(ValueError):  # JSONDecodeError, UnicodeDecodeError or "Invalid log format."
        optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path)))).trials


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_optuna_finishing_a_trial_another_process_failed(tmp_path, kind):
    """What the owner of a trial meets once another process failed it (study.heartbeat.is_finished exists
    so that it can check first): tell raises ValueError, tell(skip_if_finished=True) returns the FAIL trial,
    report/set_user_attr and a second FAIL raise UpdateFinishedTrialError."""
    url = _url(tmp_path, kind)
    study = optuna.create_study(study_name="s", storage=_plain(url))
    trial = _running_trial(study)
    other = _plain(url)
    tid = _ids(other, study, trial.number)[1]
    assert other.set_trial_state_values(tid, TrialState.FAIL) is True
    with pytest.raises(UpdateFinishedTrialError):
        other.set_trial_state_values(tid, TrialState.FAIL)  # of two failers, exactly one wins
    with pytest.raises(ValueError, match="Cannot tell a FAIL trial"):
        study.tell(trial, 1.0)
    assert study.tell(trial, 1.0, skip_if_finished=True).state == TrialState.FAIL
    with pytest.raises(UpdateFinishedTrialError):
        trial.report(0.5, step=1)
    with pytest.raises(UpdateFinishedTrialError):
        trial.set_user_attr("fid", 1.0)


def test_optuna_retry_callback_copies_params_and_every_user_attr(tmp_path):
    """RetryFailedTrialCallback (alias of RetryHeartbeatStaleTrialCallback) copies params, distributions, all
    user attrs (so study.heartbeat.RetryStaleTrial hands it a filtered copy) and system attrs, and adds
    failed_trial/retry_history; max_retry=3 means three retries."""
    study = optuna.create_study()
    trial = _running_trial(study, role="search", mlflow_run_id="r0", fid=3.0)
    study.tell(trial, state=TrialState.FAIL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        callback = RetryFailedTrialCallback(max_retry=3)
    chain = [study.trials[0]]
    for _ in range(4):
        callback(study, chain[-1])
        if len(study.trials) == len(chain):
            break
        retry = study.ask()
        study.tell(retry, state=TrialState.FAIL)
        chain.append(study.trials[retry.number])
    assert len(chain) == 4  # original + 3 retries
    chain = study.trials  # as stored (the callback appends to the retry_history list of the trial it is given)
    first_retry = chain[1]
    assert first_retry.params == chain[0].params and first_retry.distributions == chain[0].distributions
    assert first_retry.user_attrs == {"role": "search", "mlflow_run_id": "r0", "fid": 3.0}
    assert first_retry.system_attrs == {"failed_trial": 0, "retry_history": [0]}
    assert chain[3].system_attrs == {"failed_trial": 0, "retry_history": [0, 1, 2]}


def test_optuna_fail_stale_trials_calls_the_storages_callback(tmp_path):
    """optuna.storages.fail_stale_trials fails an RDB trial whose heartbeat is older than the grace period and
    calls the storage's heartbeat_stale_trial_callback with it (FAIL); a trial never beaten for is left
    RUNNING (so the driver beats right after ask)."""
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        storage = RDBStorage(f"sqlite:///{tmp_path / 'o.db'}", heartbeat_interval=1, grace_period=1,
                             heartbeat_stale_trial_callback=lambda s, t: seen.append((t.number, t.state)))
    study = optuna.create_study(study_name="s", storage=storage)
    beaten, silent = _running_trial(study), _running_trial(study)
    storage.record_heartbeat(_ids(storage, study, beaten.number)[1])
    time.sleep(2.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    assert seen == [(beaten.number, TrialState.FAIL)]
    assert study.trials[silent.number].state == TrialState.RUNNING


def test_optuna_judges_staleness_by_the_failing_processes_own_grace(tmp_path):
    """Issue 11, 1's cause, and why the grace is stored with the study: fail_stale_trials uses the grace of
    the storage object it is called through, not the owner's."""
    url = f"sqlite:///{tmp_path / 'o.db'}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        owner = RDBStorage(url, heartbeat_interval=4, grace_period=8)
        hasty = RDBStorage(url, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name="s", storage=owner)
    trial = _running_trial(study)
    owner.record_heartbeat(_ids(owner, study, trial.number)[1])
    time.sleep(3.2)  # the owner's next beat is due at 4 s: alive by its own rule
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(optuna.load_study(study_name="s", storage=hasty))
    assert study.trials[trial.number].state == TrialState.FAIL


def test_optuna_journal_has_no_heartbeats_and_its_attrs_carry_them(tmp_path):
    """Why study/journal_heartbeat.py exists, and what it uses: optuna.storages.fail_stale_trials ignores a
    journal study; a trial system attr written by one process is read by another; writing it on a finished
    trial raises UpdateFinishedTrialError in the writer only."""
    path = str(tmp_path / "j.log")
    a = JournalStorage(JournalFileBackend(path))
    study = optuna.create_study(study_name="s", storage=a)
    trial = _running_trial(study)
    sid, tid = _ids(a, study, trial.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    assert a.get_trial(tid).state == TrialState.RUNNING
    b = JournalStorage(JournalFileBackend(path))
    b.set_trial_system_attr(tid, journal_heartbeat.BEAT_ATTR, 123.0)
    assert a.get_trial(tid).system_attrs[journal_heartbeat.BEAT_ATTR] == 123.0
    assert journal_heartbeat.stale_trial_ids(a, sid, grace=10, now=130.0) == []
    assert journal_heartbeat.stale_trial_ids(a, sid, grace=5, now=130.0) == [tid]
    b.set_trial_state_values(tid, TrialState.FAIL)
    with pytest.raises(UpdateFinishedTrialError):
        a.set_trial_system_attr(tid, journal_heartbeat.BEAT_ATTR, 124.0)
    assert journal_heartbeat.beat(a, tid) is False
    assert a.get_trial(tid).system_attrs[journal_heartbeat.BEAT_ATTR] == 123.0
