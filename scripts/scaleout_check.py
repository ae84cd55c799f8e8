#!/usr/bin/env python
"""Scale-out check: two "machines" on one PostgreSQL study and one MLflow server, one of them killed.

    python scripts/scaleout_check.py [--trials 3] [--keep] [--timeout 900]

What it does (everything on loopback, in a temporary folder, stopped at the end, also on failure):
1. finds PostgreSQL's server programs (Debian's ``postgresql``; installs it with ``apt-get install -y
   postgresql`` when run as root, else says the command to run), creates a cluster, starts it on a free port
   and creates two databases (Optuna's and MLflow's) owned by a user with a random password;
2. starts ``mlflow server`` with that PostgreSQL backend (``postgresql://``, the ``postgres`` extra);
3. runs ``study/run.py --preset tiny`` twice on the same ``--storage postgresql://...`` and study name, as two
   machines A and B with different ``--heartbeat-interval`` (A: 2 s, B: 30 s; A creates the study), lets
   both train at the same time until A starts a second trial (where A's shorter heartbeat must not fail
   B's live trial), SIGKILLs A in the middle of that trial and lets B finish its ``--n-trials``;
4. checks and prints a table: B's trials complete and none of them was failed while B lived, no trial left RUNNING or lost, the killed trial FAIL and
   retried, no duplicate (K, a, b) among search trials, exactly one MLflow run per trial and none RUNNING,
   no password in any MLflow param, tag or artifact, in the Optuna study's attributes, nor in the processes'
   output.

It relies on what the driver records: the trial user attributes ``worker_pid``, ``role``, ``mlflow_run_id`` and
``retry_of`` (or Optuna's ``failed_trial``), and the MLflow tags of study/tracking.py (``KIND_TAG``,
``TRIAL_TAG``). ``--repo DIR`` runs another checkout's driver (e.g. an export of an older commit).

Exit status: 0 every check passed, 1 some check failed, 2 the check could not be set up (missing PostgreSQL,
a server that does not start...). The teacher and FID caches live in ``$BDENSE_CACHE_DIR`` (default
``~/.cache/bdense-study``) so that a second run does not train the tiny teacher again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # whose study/run.py runs (--repo changes it)
STUDY = "scaleout-check"
A_HEARTBEAT, B_HEARTBEAT = 2, 30
FAST = ["--preset", "tiny", "--iterations", "2", "--fid-samples", "32", "--sampler", "tpe"]


class SetupError(RuntimeError):
    """The check could not be set up; the message is one line."""


def say(msg: str, t0: float = time.monotonic()) -> None:
    print(f"[{time.monotonic() - t0:6.1f} s] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------ PostgreSQL
def pg_bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found and Path(found).resolve().parent.joinpath("initdb").exists():
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


def ensure_postgres() -> Path:
    bindir = pg_bindir()
    if bindir is not None:
        return bindir
    if os.geteuid() != 0:
        raise SetupError("PostgreSQL's server is not installed; install it with: sudo apt-get install -y postgresql")
    say("installing PostgreSQL: apt-get install -y postgresql")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "install", "-y", "postgresql"], ["apt-get", "update"],
                ["apt-get", "install", "-y", "postgresql"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if cmd[1] == "install" and done.returncode == 0:
            break
    bindir = pg_bindir()
    if bindir is None:
        raise SetupError("apt-get install -y postgresql did not provide pg_ctl; install PostgreSQL by hand")
    return bindir


@dataclass
class Postgres:
    bindir: Path
    root: Path
    password: str
    port: int = field(default_factory=free_port)
    user: str = "bdense"

    def _as_owner(self) -> list[str]:
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as Debian's postgres user
            return ["runuser", "-u", "postgres", "--"]
        return []

    def _run(self, *cmd: str) -> None:
        done = subprocess.run([*self._as_owner(), *cmd], capture_output=True, text=True,
                              env={**os.environ, "PGPASSWORD": self.password})
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
            raise SetupError(f"{Path(cmd[0]).name} failed: {last[0]}")

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise SetupError("no 'postgres' user to run the server as; reinstall Debian's postgresql") from None
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
        pwfile.chmod(0o600)
        self._run(str(self.bindir / "initdb"), "-D", str(self.root / "data"), "-U", self.user,
                  "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-instructions")
        pwfile.unlink()
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
                f"-c max_connections=100 -c fsync=off")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-o", opts,
                  "-l", str(self.root / "server.log"), "-w", "-t", "60", "start")
        for db in ("optuna", "mlflow"):
            self._run(str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, db)

    def url(self, db: str) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        if (self.root / "data" / "postmaster.pid").exists():
            subprocess.run([*self._as_owner(), str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"),
                            "-m", "immediate", "-w", "stop"], capture_output=True)


# ------------------------------------------------------------------------------------------ processes
@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)  # its own session: the process and its children
            except ProcessLookupError:
                return
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=20)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start(name: str, cmd: list[str], log: Path, env: dict[str, str]) -> Proc:
    f = open(log, "wb")
    popen = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                             env=env, start_new_session=True)
    f.close()
    return Proc(name, popen, log)


def wait_for(what: str, predicate, deadline: float, procs: list[Proc] = (), every: float = 1.0):
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for p in procs:
            if p.popen.poll() is not None:
                tail = " | ".join(p.output().strip().splitlines()[-3:])
                raise SetupError(f"{p.name} exited ({p.popen.returncode}) while waiting for {what}: {tail[-400:]}")
        time.sleep(every)
    raise SetupError(f"timed out waiting for {what}")


def mlflow_up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


# ------------------------------------------------------------------------------------------ the check
_STORAGES: dict[str, object] = {}


def trials_of(storage_url: str):
    """The study's trials as plain Optuna reads them (empty before the study exists)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if storage_url not in _STORAGES:
        _STORAGES[storage_url] = optuna.storages.RDBStorage(storage_url)
    try:
        return optuna.load_study(study_name=STUDY, storage=_STORAGES[storage_url]).get_trials(deepcopy=False)
    except KeyError:
        return []


def retry_of(t) -> int | None:
    value = t.user_attrs.get("retry_of", t.system_attrs.get("failed_trial"))
    return int(value) if value is not None else None


def run_checks(storage_url: str, mlflow_uri: str, password: str, killed: set[int], a_pid: int, b: Proc,
               n_trials: int, procs: list[Proc], work: Path) -> list[tuple[str, bool, str]]:
    import optuna
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    from study.tracking import KIND_TAG, TRIAL_TAG

    rows: list[tuple[str, bool, str]] = []
    trials_of(storage_url)
    study = optuna.load_study(study_name=STUDY, storage=_STORAGES[storage_url])
    trials = study.get_trials(deepcopy=False)
    states = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    summary = ", ".join(f"{v} {k}" for k, v in states.items() if v)

    rows.append(("B (the survivor) exits 0", b.popen.returncode == 0, f"exit status {b.popen.returncode}"))
    failed_b = [t.number for t in trials if t.user_attrs.get("worker_pid") == b.popen.pid and t.state == TrialState.FAIL]
    rows.append(("no live trial of B failed (by A's shorter heartbeat)", not failed_b,
                 f"FAIL: {failed_b}" if failed_b else "none of B's trials FAIL"))
    by_b = [t for t in trials if t.user_attrs.get("worker_pid") == b.popen.pid and t.state == TrialState.COMPLETE]
    rows.append((f"B completes its {n_trials} trials", len(by_b) == n_trials,
                 f"{len(by_b)} COMPLETE by B; study: {summary}"))
    left = [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    rows.append(("no Optuna trial left RUNNING or WAITING", not left, f"left: {left}" if left else summary))

    retried = {retry_of(t): t for t in trials if retry_of(t) is not None}
    detail = []
    ok = bool(killed)
    for n in sorted(killed):
        t = trials[n]
        r = retried.get(n)
        detail.append(f"#{n} {t.state.name} -> " + (f"retry #{r.number} {r.state.name}" if r else "no retry"))
        ok = ok and t.state == TrialState.FAIL and r is not None and r.state == TrialState.COMPLETE
        if r is not None:
            ok = ok and r.params == t.params
    rows.append(("the killed trial is FAIL, then retried (same point) to COMPLETE", ok,
                 "; ".join(detail) or "no trial of A was running when it was killed"))

    points = {}
    dupes = []
    for t in trials:
        if t.user_attrs.get("role", "search") != "search" or retry_of(t) is not None or not t.params:
            continue
        key = (t.params.get("K"), round(float(t.params.get("a", 0)), 9), round(float(t.params.get("b", 0)), 9))
        if key in points:
            dupes.append(f"#{points[key]} and #{t.number}: K={key[0]} a={key[1]:.4g} b={key[2]:.4g}")
        points.setdefault(key, t.number)
    rows.append(("no duplicate (K, a, b) among search trials", not dupes,
                 "; ".join(dupes) if dupes else f"{len(points)} distinct search points"))

    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    client = MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.get_experiment_by_name(STUDY)
    runs = client.search_runs([experiment.experiment_id], max_results=5000) if experiment else []
    trial_runs = [r for r in runs if r.data.tags.get(KIND_TAG) == "trial"]
    per_trial: dict[int, list[str]] = {}
    for r in trial_runs:
        per_trial.setdefault(int(r.data.tags.get(TRIAL_TAG, -1)), []).append(r.info.run_id)
    started = [t for t in trials if t.state != TrialState.WAITING]
    bad = [f"#{t.number}: {len(per_trial.get(t.number, []))} runs" for t in started
           if len(per_trial.get(t.number, [])) != 1]
    bad += [f"runs for unknown trial {n}" for n in per_trial if n not in {t.number for t in trials}]
    mismatch = [f"#{t.number}" for t in started if t.user_attrs.get("mlflow_run_id") not in per_trial.get(t.number, [])]
    rows.append(("exactly one MLflow run per trial (the trial's mlflow_run_id)", not bad and not mismatch,
                 "; ".join(bad + [f"run id differs: {', '.join(mismatch)}"] * bool(mismatch))
                 or f"{len(trial_runs)} trial runs for {len(started)} trials"))
    running = [f"{r.data.tags.get(KIND_TAG, '?')} {r.info.run_id[:8]}" for r in runs if r.info.status == "RUNNING"]
    rows.append(("no MLflow run left RUNNING", not running, ", ".join(running) or f"{len(runs)} runs, none RUNNING"))
    killed_runs = [client.get_run(trials[n].user_attrs["mlflow_run_id"]).info.status for n in sorted(killed)
                   if trials[n].user_attrs.get("mlflow_run_id")]
    rows.append(("the killed trial's MLflow run is closed FAILED or KILLED",
                 bool(killed_runs) and all(s in ("FAILED", "KILLED") for s in killed_runs),
                 ", ".join(killed_runs) or "the killed trial has no run id"))

    leaks = []
    for r in runs:
        texts = {f"param {k}": v for k, v in r.data.params.items()}
        texts.update({f"tag {k}": v for k, v in r.data.tags.items()})
        leaks += [f"run {r.info.run_id[:8]} {k}" for k, v in texts.items() if password in str(v)]
    dst = work / "artifacts"
    n_files = 0
    for r in runs:
        try:
            local = Path(client.download_artifacts(r.info.run_id, "", str(dst / r.info.run_id)))
        except Exception as e:  # noqa: BLE001
            leaks.append(f"run {r.info.run_id[:8]}: artifacts not readable ({type(e).__name__})")
            continue
        for f in local.rglob("*"):
            if f.is_file():
                n_files += 1
                if password.encode() in f.read_bytes():
                    leaks.append(f"artifact {r.info.run_id[:8]}/{f.relative_to(local)}")
    rows.append(("no password in MLflow params, tags or artifacts", not leaks,
                 "; ".join(leaks[:6]) or f"{len(runs)} runs, {n_files} artifact files searched"))
    storage = _STORAGES[storage_url]
    study_system = storage.get_study_system_attrs(storage.get_study_id_from_name(STUDY))
    attrs = json.dumps([study.user_attrs, study_system] + [[t.user_attrs, t.system_attrs] for t in trials],
                       default=str)
    rows.append(("no password in the Optuna study's attributes", password not in attrs,
                 "found" if password in attrs else f"{len(trials)} trials searched"))
    out_leaks = [p.name for p in procs if password in p.output()]
    rows.append(("no password in the processes' output", not out_leaks,
                 f"in the output of {', '.join(out_leaks)}" if out_leaks else
                 ", ".join(f"{p.name}: {len(p.output().splitlines())} lines" for p in procs)))
    return rows


def print_table(rows: list[tuple[str, bool, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'check':<{width}}  result  detail")
    print(f"{'-' * width}  ------  {'-' * 40}")
    for name, ok, detail in rows:
        print(f"{name:<{width}}  {'PASS' if ok else 'FAIL':<6}  {detail}")
    print(f"\n{sum(ok for _, ok, _ in rows)} passed, {sum(not ok for _, ok, _ in rows)} failed")


def scenario(args, work: Path, procs: list[Proc], pg: Postgres) -> list[tuple[str, bool, str]]:
    deadline = time.monotonic() + args.timeout
    pg.start()
    storage_url, mlflow_db = pg.url("optuna"), pg.url("mlflow")
    say(f"PostgreSQL {pg.bindir.parent.name} on 127.0.0.1:{pg.port} (user {pg.user}, a random password)")

    mport = free_port()
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "BDENSE_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "BDENSE_CACHE_DIR": os.environ.get("BDENSE_CACHE_DIR") or str(Path.home() / ".cache" / "bdense-study")}
    env.pop("MLFLOW_TRACKING_URI", None)
    server = start("mlflow server", [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", mlflow_db,
                                     "--artifacts-destination", str(work / "mlartifacts"), "--host", "127.0.0.1",
                                     "--port", str(mport), "--workers", "1"], work / "mlflow-server.log", env)
    procs.append(server)
    wait_for("mlflow server /health", lambda: mlflow_up(mport), min(deadline, time.monotonic() + 120), [server])
    mlflow_uri = f"http://127.0.0.1:{mport}"
    say(f"mlflow server on {mlflow_uri} (backend postgresql://{pg.user}:***@127.0.0.1:{pg.port}/mlflow)")

    def study_cmd(heartbeat: int, runs: str, n: int) -> list[str]:
        return [sys.executable, "study/run.py", *FAST, "--study-name", STUDY, "--storage", storage_url,
                "--mlflow-uri", mlflow_uri, "--heartbeat-interval", str(heartbeat), "--n-trials", str(n),
                "--runs-dir", str(work / runs)]

    a = start("A", study_cmd(A_HEARTBEAT, "a", args.trials + 2), work / "a.log", env)
    procs.append(a)
    say(f"A started (pid {a.popen.pid}, --heartbeat-interval {A_HEARTBEAT}); it creates the study")

    def running_of(pid: int):
        return [t.number for t in trials_of(storage_url)
                if t.state.name == "RUNNING" and t.user_attrs.get("worker_pid") == pid]

    first_of_a = set(wait_for("A's first running trial", lambda: running_of(a.popen.pid), deadline, [a], every=2))
    b = start("B", study_cmd(B_HEARTBEAT, "b", args.trials), work / "b.log", env)
    procs.append(b)
    say(f"B started (pid {b.popen.pid}, --heartbeat-interval {B_HEARTBEAT})")
    wait_for("B's first running trial", lambda: running_of(b.popen.pid), deadline, [a, b], every=2)
    say("A and B both train; A starts another trial while B's runs (A must not fail B's live trial)")
    wait_for("A to start another trial", lambda: set(running_of(a.popen.pid)) - first_of_a, deadline, [a, b],
             every=1)
    time.sleep(args.overlap)
    killed = wait_for("a running trial of A to kill it in", lambda: running_of(a.popen.pid), deadline, [a], every=1)
    os.killpg(a.popen.pid, signal.SIGKILL)
    a.popen.wait(timeout=30)
    say(f"A SIGKILLed in the middle of trial(s) {killed}; B must fail it (the study's grace) and run it again")
    wait_for("B to finish", lambda: b.popen.poll() is not None, deadline, every=3)
    say(f"B exited with status {b.popen.returncode}")
    return run_checks(storage_url, mlflow_uri, pg.password, set(killed), a.popen.pid, b, args.trials,
                      [a, b], work)


def main(argv: list[str] | None = None) -> int:
    global REPO
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=4, help="--n-trials of the surviving machine B (default 4)")
    p.add_argument("--overlap", type=float, default=5.0,
                   help="seconds into A's second trial at which A is killed (default 5)")
    p.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds (default 900)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, cluster, artifacts)")
    p.add_argument("--repo", type=Path, default=REPO,
                   help="the checkout whose study/run.py runs (default: the one holding this script)")
    args = p.parse_args(argv)
    REPO = args.repo.resolve()
    if not (REPO / "study" / "run.py").is_file():
        print(f"--repo {REPO} holds no study/run.py", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    if args.trials < 1 or args.timeout <= 0:
        print("--trials must be >= 1 and --timeout > 0", file=sys.stderr)
        return 2
    try:
        import importlib.util

        if importlib.util.find_spec("psycopg") is None:  # postgresql:// for Optuna and mlflow server
            raise SetupError("psycopg 3 is not installed; install it with: pip install 'bdense-study[postgres]'")
        bindir = ensure_postgres()
    except SetupError as e:
        print(e, file=sys.stderr)
        return 2
    def stop_on_signal(signum, frame):  # SIGTERM/SIGHUP: clean up as on Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGHUP, stop_on_signal)
    work = Path(tempfile.mkdtemp(prefix="bdense-scaleout-"))
    pg_root = Path(tempfile.mkdtemp(prefix="bdense-scaleout-pg-"))
    pg = Postgres(bindir, pg_root, password=f"bdpw{secrets.token_hex(8)}")
    procs: list[Proc] = []
    code = 2
    try:
        rows = scenario(args, work, procs, pg)
        print_table(rows)
        code = 0 if all(ok for _, ok, _ in rows) else 1
    except SetupError as e:
        print(f"scale-out check not run to the end: {str(e).replace(pg.password, '***')}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted; stopping everything", file=sys.stderr)
        code = 130
    except Exception as e:  # noqa: BLE001 - a bug in the check itself: say where, still clean up
        import traceback

        where = traceback.extract_tb(e.__traceback__)[-1]
        print(f"scale-out check failed: {type(e).__name__}: {str(e).replace(pg.password, '***')} "
              f"({Path(where.filename).name}:{where.lineno})", file=sys.stderr)
    finally:
        for proc in reversed(procs):
            proc.stop()
        pg.stop()
        if args.keep:
            say(f"kept {work} and {pg_root}")
        else:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(pg_root, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
