"""End-to-end: real studies on the tiny preset through the CLI, checked through Optuna's and MLflow's own APIs.

One teacher (and one set of FID reference statistics) serves every test: ``BDENSE_CACHE_DIR`` points all run
folders at one cache. Each command runs in a subprocess, as a researcher would run it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parent.parent
RUN = [sys.executable, str(REPO / "study" / "run.py")]
# tiny sizes: the tiny preset, 2 distillation iterations, 8-sample FID, no pruning (3 trials are too few)
FAST = ["--preset", "tiny", "--fid-samples", "8", "--iterations", "2", "--pruner", "none"]
TRIAL_ATTRS = {"fid", "kid", "fid_seeds", "kid_seeds", "fid_std", "seeds", "nfe", "framework", "weights_mode",
               "fitted_a", "fitted_b", "preset", "teacher_key", "mlflow_run_id", "wall_time_s", "role", "fidelity",
               "objective", "iterations", "batch_size", "lr", "afs", "teacher_substeps", "teacher_paths"}
STUDY_ATTRS = {"preset", "framework", "nfe", "fid_samples", "teacher_key", "mlflow_experiment_id",
               "mlflow_parent_run_id", "k_choices", "weights_mode", "objective", "iterations", "paths"}

optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bdense-cache")


def _env(runs: Path, cache: Path) -> dict:
    env = dict(os.environ)
    env.update(BDENSE_RUNS_DIR=str(runs), BDENSE_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1")
    return env


def run_cli(args: list[str], runs: Path, cache: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(RUN + args, cwd=REPO, env={**_env(runs, cache), **env}, capture_output=True, text=True,
                          timeout=timeout)


def load(runs: Path, name: str) -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(runs / "optuna-journal.log")))
    return optuna.load_study(study_name=name, storage=storage)


def mlflow_client(runs: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")


def runs_of(client, study: optuna.Study, kind: str):
    exp = study.user_attrs["mlflow_experiment_id"]
    return client.search_runs([exp], f"tags.`bdense.kind` = '{kind}'", max_results=1000)


def _check(proc: subprocess.CompletedProcess, code: int = 0) -> None:
    assert proc.returncode == code, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"


# -- a 3-trial study, then 2 more trials on it ---------------------------------------------------------------
NAME = "e2e"


@pytest.fixture(scope="module")
def first_study(tmp_path_factory, cache_dir):
    runs = tmp_path_factory.mktemp("runs-e2e")
    start = time.monotonic()
    proc = run_cli([*FAST, "--n-trials", "3", "--study-name", NAME], runs, cache_dir, BDENSE_STACKS_EVERY="1")
    _check(proc)
    return runs, proc, time.monotonic() - start


def test_three_trial_study_is_in_both_stores(first_study):
    runs, proc, _ = first_study
    study = load(runs, NAME)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    roles = [t.user_attrs["role"] for t in trials]
    assert roles[:2] == ["baseline-k1", "baseline-uniform"] and roles[2] == "search"
    assert trials[0].params == {} and trials[0].user_attrs["K"] == 1  # K = 1 is no point of the search space
    assert trials[1].params == {"K": 4, "a": 0.0, "b": 1.0}
    assert trials[2].params["K"] in (2, 4) and set(trials[2].params) == {"K", "a", "b"}
    assert STUDY_ATTRS <= set(study.user_attrs)
    assert study.user_attrs["objective"] == "kid"  # 8 FID samples: the trials minimise KID
    for t in trials:
        assert TRIAL_ATTRS <= set(t.user_attrs), TRIAL_ATTRS - set(t.user_attrs)
        assert t.value == pytest.approx(t.user_attrs["kid"]) and t.user_attrs["kid_seeds"] == [t.value]
        assert t.user_attrs["fidelity"] == "screen" and t.user_attrs["iterations"] == 2
        assert t.user_attrs["teacher_paths"] == "seed bank"
    # one process, no workers: its pace lines still go to a log of its own (one line at the end of each training)
    logs = list((runs / "logs").glob(f"{NAME}-process-*.log"))
    assert len(logs) == 1
    lines = re.findall(r"^\d\d:\d\d:\d\d SFD, 1 student at NFE 2: iteration (\d+)/\1, [\d.]+ ms an iteration ",
                       logs[0].read_text(), re.M)
    assert len(lines) == 3, logs[0].read_text()
    # BDENSE_STACKS_EVERY=1: the main thread's stack, sampled, in the same log (the sampler stopped before it closed)
    stacks = re.findall(r"^\d\d:\d\d:\d\d stacks of pid (\d+):\nthread MainThread", logs[0].read_text(), re.M)
    assert stacks and logs[0].name.endswith(f"-process-{stacks[0]}.log")
    assert "Exception in thread bdense-stacks" not in proc.stderr

    client = mlflow_client(runs)
    parents = runs_of(client, study, "study")
    assert [p.info.run_id for p in parents] == [study.user_attrs["mlflow_parent_run_id"]]
    children = {r.info.run_id: r for r in runs_of(client, study, "trial")}
    assert len(children) == 3
    for t in trials:
        run = children[t.user_attrs["mlflow_run_id"]]
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.tags["optuna_trial_number"] == str(t.number)
        assert run.info.status == "FINISHED"
        params = run.data.params
        k = t.params.get("K", 1)
        assert params["K"] == str(k) and float(params["a"]) == pytest.approx(t.params.get("a", 0.0))
        for key in ("b", "weights_mode", "framework", "nfe", "seeds", "preset", "teacher_key", "fidelity", "iterations"):
            assert key in params
        assert run.data.tags["K"] == str(k) and run.data.tags["fidelity"] == "screen"
        assert params["teacher_key"] == study.user_attrs["teacher_key"]
        loss = client.get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in loss] == [1, 2]  # per-step history (--iterations 2)
        assert len(client.get_metric_history(run.info.run_id, f"loss_branch_{k}")) == 2
        assert run.data.metrics["kid"] == pytest.approx(t.value)
        for key in ("fid", "wall_time_s", "samples_per_s"):
            assert key in run.data.metrics
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"samples_seed0.png", "branch_weights.png", "config.json"} <= artifacts
    teacher = runs_of(client, study, "teacher")
    assert len(teacher) == 1 and teacher[0].data.tags["teacher_key"] == study.user_attrs["teacher_key"]
    assert len(client.get_metric_history(teacher[0].info.run_id, "teacher_loss")) > 10

    out = proc.stdout
    assert "headline: baseline K=1" in out and "best B-DENSE" in out and "verdict" in out
    assert "mlflow ui --backend-store-uri sqlite:///" in out and "--default-artifact-root" in out
    assert "optuna-dashboard " in out and "python -m analysis.report --study e2e" in out
    assert out.count("[trial ") == 3  # one progress line per trial (not a terminal)


def test_same_command_again_adds_trials_to_the_same_study(first_study, cache_dir):
    runs, _, _ = first_study
    proc = run_cli([*FAST, "--n-trials", "2", "--study-name", NAME], runs, cache_dir)
    _check(proc)
    assert "queued baselines" not in proc.stderr
    study = load(runs, NAME)
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    roles = [t.user_attrs["role"] for t in trials]
    assert roles.count("baseline-k1") == 1 and roles.count("baseline-uniform") == 1
    client = mlflow_client(runs)
    assert len(runs_of(client, study, "study")) == 1
    assert len(runs_of(client, study, "teacher")) == 1
    children = runs_of(client, study, "trial")
    assert len(children) == 5
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {study.user_attrs["mlflow_parent_run_id"]}
    assert {r.info.run_id for r in children} == {t.user_attrs["mlflow_run_id"] for t in trials}
    # the teacher came from the cache: the log says so
    assert "loaded from cache" in proc.stderr


def test_resuming_with_other_settings_is_refused(first_study, cache_dir):
    runs, _, _ = first_study
    proc = run_cli([*FAST[:-4], "--iterations", "3", "--n-trials", "1", "--study-name", NAME], runs, cache_dir)
    _check(proc, 2)
    assert proc.stderr.count("\n") == 1 and "other settings" in proc.stderr and "iterations" in proc.stderr


def test_resuming_with_another_teacher_file_is_refused(first_study, cache_dir, tmp_path):
    from dataclasses import replace

    from bdense_core.presets import get_preset
    from bdense_core.teacher import save_teacher, train_teacher

    runs, _, _ = first_study
    before = len(load(runs, NAME).get_trials())
    other = train_teacher(replace(get_preset("tiny").teacher, steps=3), "cpu", root=tmp_path)
    path = save_teacher(other, tmp_path / "other.pt")
    proc = run_cli([*FAST, "--teacher-file", str(path), "--n-trials", "1", "--study-name", NAME], runs, cache_dir)
    _check(proc, 2)
    assert proc.stderr.count("\n") == 1 and f"this command's is {other.key}; use a new --study-name" in proc.stderr
    assert len(load(runs, NAME).get_trials()) == before


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_mlflow_ui_serves_the_study(first_study):
    runs, _, _ = first_study
    out = runs / "mlflow-ui.png"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "mlflow_screenshot.py"), "--runs-dir", str(runs),
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=400)
    _check(proc)
    assert out.exists() and out.stat().st_size > 20_000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- workers -------------------------------------------------------------------------------------------------
def test_two_workers_share_one_journal_storage(tmp_path, cache_dir):
    runs = tmp_path / "runs"
    proc = run_cli([*FAST, "--n-trials", "4", "--workers", "2", "--study-name", "pair"], runs, cache_dir,
                   BDENSE_STACKS_EVERY="1")
    _check(proc)
    study = load(runs, "pair")
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert sorted(numbers) == [0, 1, 2, 3] and len(set(numbers)) == 4
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker_pid"] for t in trials}) == 2  # both workers did trials
    assert {t.user_attrs["device"] for t in trials} == {"cpu"}  # where each trained (a table names the machine)
    children = runs_of(mlflow_client(runs), study, "trial")
    assert sorted(int(r.data.tags["optuna_trial_number"]) for r in children) == [0, 1, 2, 3]
    assert proc.stdout.count("[trial ") == 4
    # each worker's log: its pace line per training (timestamped, at its end at least) and the sampled stacks
    logs = [p.read_text() for p in sorted((runs / "logs").glob("pair-worker*.log"))]
    assert len(logs) == 2
    share = max(1, len(os.sched_getaffinity(0)) // 2)  # each worker's share of the cores for its CPU work
    assert all(re.search(rf"^worker \d \(pid \d+\) on cpu, {share} CPU threads?: 2 trial\(s\)$", t, re.M) for t in logs)
    assert sum(text.count(" ms an iteration over the last ") for text in logs) >= 4
    assert re.search(r"^\d\d:\d\d:\d\d SFD, 1 student at NFE \d: iteration (\d+)/\1, ", logs[0], re.M)
    for text in logs:  # sampled stacks: the main thread's goes down from the worker's entry point
        assert re.search(r"^\d\d:\d\d:\d\d stacks of pid \d+:\nthread MainThread \(most recent call last\):\n", text, re.M)
        assert "in _worker_main" in text


def _wait_for_running_trial(runs: Path, name: str, proc: subprocess.Popen, timeout: float = 400):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if (runs / "optuna-journal.log").exists():
            try:
                study = load(runs, name)
            except KeyError:
                study = None
            if study is not None:
                for t in study.get_trials(states=(TrialState.RUNNING,)):
                    if "mlflow_run_id" in t.user_attrs:
                        return t
        time.sleep(0.5)
    raise AssertionError("no trial started")


@pytest.mark.slow
def test_a_killed_worker_leaves_its_trial_failed_then_retried(tmp_path, cache_dir):
    runs = tmp_path / "runs"
    args = [*FAST, "--n-trials", "4", "--workers", "2", "--study-name", "kill", "--heartbeat-interval", "2"]
    proc = subprocess.Popen(RUN + args, cwd=REPO, env=_env(runs, cache_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    victim = _wait_for_running_trial(runs, "kill", proc)
    os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "killed by signal 9" in err

    study = load(runs, "kill")
    trials = study.get_trials()
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    dead = trials[victim.number]
    assert dead.state == TrialState.FAIL and "heartbeat" in dead.user_attrs["fail_reason"]
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == dead.params and retries[0].user_attrs["role"] == dead.user_attrs["role"]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4  # no trial lost
    assert len({t.number for t in trials}) == len(trials)
    client = mlflow_client(runs)
    assert client.get_run(dead.user_attrs["mlflow_run_id"]).info.status == "FAILED"


@pytest.mark.slow
def test_ctrl_c_fails_the_running_trial_and_keeps_the_rest(tmp_path, cache_dir):
    runs = tmp_path / "runs"
    args = [*FAST, "--n-trials", "5", "--study-name", "intr"]
    proc = subprocess.Popen(RUN + args, cwd=REPO, env=_env(runs, cache_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = _wait_for_running_trial(runs, "intr", proc)
    deadline = time.monotonic() + 300  # let one trial finish, then interrupt the next one
    while time.monotonic() < deadline:
        running = [t for t in load(runs, "intr").get_trials(states=(TrialState.RUNNING,))
                   if t.number > first.number and "mlflow_run_id" in t.user_attrs]
        if running:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert last.startswith("interrupted:") and "run the same command to continue" in last
    study = load(runs, "intr")
    trials = study.get_trials()
    assert trials[0].state == TrialState.COMPLETE
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    stopped = trials[running[0].number]
    assert stopped.state == TrialState.FAIL and "interrupted" in stopped.user_attrs["fail_reason"]
    client = mlflow_client(runs)
    assert client.get_run(stopped.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    assert client.get_run(trials[0].user_attrs["mlflow_run_id"]).info.status == "FINISHED"


def test_a_group_whose_training_raises_fails_its_trials_with_that_error_and_the_study_goes_on(
        tmp_path, cache_dir, monkeypatch):
    """An error out of a group's training (session 17: torch's CUDA-graph trees, in a worker's third group) fails
    that group's trials with the error as their reason and the next trials still run; it used to end the worker's
    loop, and its trials read "the command ended before this trial could run". In this process (one worker), so
    that the framework's training can be made to raise once."""
    from bdense_core.distill.sfd import SFD
    from study import run

    real, calls = SFD.train_many, []

    def fails_once(self, *args, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(self, *args, **kw)

    monkeypatch.setattr(SFD, "train_many", fails_once)
    runs = tmp_path / "runs"
    for k, v in _env(runs, cache_dir).items():
        monkeypatch.setenv(k, v)
    code = run.main([*FAST, "--n-trials", "2", "--study-name", "raises"])
    trials = load(runs, "raises").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE] and len(calls) == 2
    assert "illegal memory access" in trials[0].user_attrs["fail_reason"]
    assert code == 0 and mlflow_client(runs).get_run(trials[0].user_attrs["mlflow_run_id"]).info.status == "FAILED"


# -- bad input -----------------------------------------------------------------------------------------------
def test_bad_input_gets_one_line_and_status_2(tmp_path, cache_dir):
    (tmp_path / "junk.log").write_text("this is not a journal\n")
    cases = {
        "unknown preset": ["--preset", "nope"],
        "--n-trials 0": ["--preset", "tiny", "--n-trials", "0"],
        "missing sqlite folder": ["--preset", "tiny", "--storage", f"sqlite:///{tmp_path}/no/such/dir/o.db"],
        "not a journal": ["--preset", "tiny", "--storage", str(tmp_path / "junk.log")],
        "unsupported scheme": ["--preset", "tiny", "--storage", "bogus://host/db"],
        "a-range min > max": ["--preset", "tiny", "--a-range", "2", "1"],
        "K choice < 1": ["--preset", "tiny", "--k", "0", "2"],
        "BDENSE_NUM_THREADS=two": ["--preset", "tiny"],
    }
    env = _env(tmp_path / "runs", cache_dir)
    procs = {name: subprocess.Popen(RUN + argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env={**env, **dict([name.split("=")] if "=" in name else [])})
             for name, argv in cases.items()}
    for name, p in procs.items():
        out, err = p.communicate(timeout=120)
        assert p.returncode == 2, (name, err)
        assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("bdense-study: error:"), (name, err)
        assert out == "", (name, out)
    assert not (tmp_path / "runs" / "mlflow.db").exists()


@pytest.mark.slow  # 77 s on the 2-core CPU (session 14's CI run); `make test-all` runs it
def test_nfe_ablation_runs_each_trial_at_its_own_nfe_and_seeds(tmp_path, cache_dir):
    """``--ablation nfe`` enqueues K=1 and B-DENSE at NFE 2..5; the objective must honour each trial's NFE."""
    runs = tmp_path / "runs"
    res = run_cli(FAST + ["--study-name", "abl", "--k", "1", "2", "--ablation", "nfe", "--ablation-seeds", "2",
                          "--n-trials", "10", "--paths", "fresh"], runs, cache_dir)
    assert res.returncode == 0, res.stderr[-2000:]
    trials = [t for t in load(runs, "abl").trials if t.user_attrs.get("role") == "ablation:nfe"]
    assert len(trials) == 8 and all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted({t.user_attrs["nfe"] for t in trials}) == [2, 3, 4, 5]
    assert all(len(t.user_attrs["fid_seeds"]) == 2 for t in trials)
    client = mlflow_client(runs)
    for t in trials:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert int(run.data.params["nfe"]) == t.user_attrs["nfe"]
        config = json.loads(Path(client.download_artifacts(run.info.run_id, "config.json", str(tmp_path))).read_text())
        assert {d["nfe"] for d in config["distill"]} == {t.user_attrs["nfe"]}
        # the trial's two seeds trained together: one training loop, counted once (not once per seed)
        loops = [r["train_time_s"] for r in config["results"]]
        u = t.user_attrs
        assert len(loops) == 2 and loops[0] == loops[1] and u["train_time_s"] == pytest.approx(loops[0])
        assert 0 < u["train_time_s"] <= u["distil_time_s"] and u["eval_time_s"] > 0
        assert u["distil_time_s"] + u["eval_time_s"] <= u["wall_time_s"]


def test_a_pd_study_records_each_seeds_fid_after_every_round(tmp_path, cache_dir):
    """A PD trial of two seeds keeps each seed's FID after every round (``fid_rounds_seeds``) beside their mean
    (``fid_rounds``), and the report's round table pools them by seed and judges K=2 against K=1 per round."""
    import math

    from analysis.load import trials_frame
    from analysis.summary import round_table

    runs, calls = tmp_path / "runs", tmp_path / "evaluate-calls"
    # run.py with bdense_core.evaluate.evaluate counting its calls: one FID score a seed a round, no more
    counted = ("import importlib, runpy, sys\ne = importlib.import_module('bdense_core.evaluate')\n"
               "def evaluate(*a, f=e.evaluate, **k):\n"
               f"    with open({str(calls)!r}, 'a') as out: out.write('.')\n"
               "    return f(*a, **k)\n"
               "e.evaluate, sys.argv = evaluate, sys.argv[1:]\n"
               "runpy.run_path(sys.argv[0], run_name='__main__')")
    _check(subprocess.run([sys.executable, "-c", counted, *RUN[1:], *FAST, "--study-name", "pd", "--framework", "pd",
                           "--k", "2", "--n-trials", "2", "--seeds-per-trial", "2"], cwd=REPO,
                          env=_env(runs, cache_dir), capture_output=True, text=True, timeout=600))
    study = load(runs, "pd")
    trials = study.get_trials(states=[TrialState.COMPLETE])
    assert sorted(t.user_attrs["role"] for t in trials) == ["baseline-k1", "baseline-uniform"]
    assert len(calls.read_text()) == 2 * 2 * 2  # trials x seeds x rounds: the last round's score is the student's
    for t in trials:
        u = t.user_attrs
        per, rounds = u["fid_rounds_seeds"], u["fid_rounds"]
        assert len(u["seeds"]) == len(per) == 2 and all(len(x) == len(rounds) == 2 for x in per)
        assert u["fid_seeds"] == [x[-1] for x in per]
        assert rounds == pytest.approx([(a + b) / 2 for a, b in zip(*per)])
        assert per[0] != per[1] and all(math.isfinite(v) and v > 0 for x in per for v in x)
    rt = round_table(trials_frame(study))
    assert list(rt["round"]) == [1, 2, 1, 2] and list(rt["n"]) == [2, 2, 2, 2] and list(rt["trials"]) == [1, 1, 1, 1]
    k1 = next(t for t in trials if t.user_attrs["role"] == "baseline-k1").user_attrs["fid_rounds_seeds"]
    assert rt["mean"].iloc[1] == pytest.approx((k1[0][1] + k1[1][1]) / 2)
    assert rt["verdict"].iloc[0] == "the baseline" and "1 comparison" in rt["verdict"].iloc[3]


# -- screen, then confirm ------------------------------------------------------------------------------------
def test_screen_then_confirm_runs_each_configuration_at_full_length_on_fresh_seeds(tmp_path, cache_dir):
    """``--confirm-top 1 --confirm-seeds 2``: the best screened configuration and both baselines are re-trained
    at full length, one trial (and one MLflow run) per (configuration, seed), on seeds the screen never used."""
    from bdense_core.presets import get_preset

    runs = tmp_path / "runs"
    res = run_cli(FAST + ["--study-name", "conf", "--n-trials", "3", "--confirm-top", "1", "--confirm-seeds", "2"],
                  runs, cache_dir)
    _check(res)
    study = load(runs, "conf")
    trials = study.get_trials()
    screen = [t for t in trials if t.user_attrs["fidelity"] == "screen"]
    full = [t for t in trials if t.user_attrs["fidelity"] == "full"]
    assert len(screen) == 3 and len(full) == 3 * 2
    # the end-of-study table states both lengths: the headline's (full) and the screen's
    full_iterations = get_preset("tiny").at_length("full").config("sfd").iterations
    assert re.search(rf"│ training\s+│ length full, iterations {full_iterations},", res.stdout)
    assert re.search(r"│ screen training\s+│ length screen, iterations 2,", res.stdout)  # FAST's --iterations
    assert all(t.state == TrialState.COMPLETE for t in trials)
    full_iterations = get_preset("tiny").at_length("full").config("sfd").iterations
    for t in full:
        assert t.user_attrs["role"] == "confirm" and t.user_attrs["iterations"] == full_iterations
        assert len(t.user_attrs["seeds"]) == 1 and t.user_attrs["seeds"][0] >= 1000
    ranks = sorted(t.user_attrs["confirm_rank"] for t in full)
    assert ranks == [0, 0, 0, 0, 1, 1]
    top = [t for t in full if t.user_attrs["confirm_rank"] == 1]
    best_screen = min((t for t in screen if t.user_attrs["role"] == "search"), key=lambda t: t.value)
    assert all(t.params == best_screen.params and t.user_attrs["screen_trial"] == best_screen.number for t in top)
    assert sorted({tuple(t.user_attrs["seeds"]) for t in full}) == [(1000,), (1001,)]
    runs_by_id = {r.info.run_id: r for r in runs_of(mlflow_client(runs), study, "trial")}
    assert len(runs_by_id) == len(trials) and {t.user_attrs["mlflow_run_id"] for t in trials} == set(runs_by_id)
    assert all(runs_by_id[t.user_attrs["mlflow_run_id"]].data.tags["fidelity"] == "full" for t in full)
    assert "[NFE 2, full length]" in res.stdout  # the headline now uses the full-length trials
    # analysis reads the fidelity table and the noise marks from this real study
    from analysis.fidelity import fidelity_table
    from analysis.load import trials_frame
    from analysis.summary import configurations

    df = trials_frame(study)
    ft = fidelity_table(df)
    assert ft is not None and len(ft["rows"]) == 3 and {r["full"]["n_seeds"] for r in ft["rows"]} == {2}
    assert ft["spearman"]["n"] == 3 and -1 <= ft["spearman"]["rho"] <= 1
    assert ft["screen_winner"] and ft["full_winner"] and isinstance(ft["same_winner"], bool)
    ranked = configurations(df, nfe=2, fidelity="screen")
    assert len(ranked) == 2 and set(ranked["direction"].fillna("")) <= {"lower", "higher", ""}
    assert (ranked["method"] == "none").all()  # one seed per screen configuration: no test, and it says so
    again = run_cli(FAST + ["--study-name", "conf", "--n-trials", "0", "--confirm-top", "1", "--confirm-seeds", "2"],
                    runs, cache_dir)
    _check(again)
    assert len(load(runs, "conf").get_trials()) == len(trials)  # nothing missing: nothing queued again


@pytest.mark.slow
def test_a_stopped_confirmation_runs_its_queued_trials_when_resumed(tmp_path, cache_dir, monkeypatch):
    """A command stopped during the confirmation leaves its trials queued; the same command again must run them
    (it queues nothing new, so counting only what it queues would run nothing) and the new uniform baseline's."""
    from study.cli import parse_config
    from study.confirm import enqueue_confirmation

    runs = tmp_path / "runs"
    _check(run_cli(FAST + ["--study-name", "stop", "--n-trials", "3"], runs, cache_dir))
    confirm = ["--study-name", "stop", "--n-trials", "0", "--confirm-top", "1", "--confirm-seeds", "1"]
    monkeypatch.setenv("BDENSE_RUNS_DIR", str(runs))
    queued = enqueue_confirmation(load(runs, "stop"), parse_config(FAST + confirm))  # what the stopped command left
    assert queued == 3
    # and a screen trial queued after them (as the K = 4 uniform baseline is when such a study resumes): workers
    # take queued trials oldest first, so the phase must count it too or the last confirmation trial stays queued
    load(runs, "stop").enqueue_trial({"K": 2, "a": 0.0, "b": 1.0}, user_attrs={"role": "search", "fidelity": "screen"})
    # a grid now would take its best from an unfinished confirmation: refused, one line, nothing run
    refused = run_cli(FAST + confirm + ["--ablation", "b"], runs, cache_dir)
    _check(refused, 2)
    assert "has 3 confirmation trials still to run" in refused.stderr
    res = run_cli(FAST + confirm, runs, cache_dir)
    _check(res)
    assert "confirmation: 3 trials queued by an earlier command still to run" in res.stderr
    assert "also 1 other queued trials" in res.stderr
    trials = load(runs, "stop").get_trials()
    full = [t for t in trials if t.user_attrs.get("fidelity") == "full"]
    assert len(full) == 3 and all(t.state == TrialState.COMPLETE for t in trials)


@pytest.mark.slow  # 107 s on the 2-core CPU (session 14's CI run); `make test-all` runs it
def test_a_full_length_grid_in_a_screen_study_takes_the_confirmed_best(tmp_path, cache_dir):
    """After screen and confirmation, ``--ablation b --ablation-length full`` trains the b grid at full length in
    the same study, at the K and a of the best full-length configuration, on the confirmation's seeds."""
    from bdense_core.presets import get_preset

    runs = tmp_path / "runs"
    base = FAST + ["--study-name", "grid", "--confirm-top", "1", "--confirm-seeds", "1"]
    _check(run_cli(base + ["--n-trials", "3"], runs, cache_dir))
    res = run_cli(base + ["--n-trials", "0", "--ablation", "b", "--ablation-length", "full"], runs, cache_dir)
    _check(res)
    trials = load(runs, "grid").get_trials()
    full = [t for t in trials if t.user_attrs.get("role") == "confirm" and t.params.get("K", 1) > 1]
    # one seed each: the confirmed best is the K > 1 trial of lowest FID (the contract ranks by FID; this tiny
    # study's trials minimise KID, whose order may differ)
    best = min(full, key=lambda t: t.user_attrs["fid"])
    grid = [t for t in trials if t.user_attrs.get("role") == "ablation:b"]
    full_iterations = get_preset("tiny").at_length("full").config("sfd").iterations
    assert len(grid) == 3 and all(t.state == TrialState.COMPLETE for t in grid)
    assert all(t.user_attrs["fidelity"] == "full" and t.user_attrs["iterations"] == full_iterations for t in grid)
    assert {(t.params["K"], t.params["a"]) for t in grid} == {(best.params["K"], best.params["a"])}
    assert sorted(t.params["b"] for t in grid) == [0.1, 1.0, 10.0]
    assert {tuple(t.user_attrs["seeds"]) for t in grid} == {(1000, 1001, 1002)}
