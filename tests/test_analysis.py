"""Tests of analysis/ and notebooks/ on small synthetic studies written through Optuna's and MLflow's own APIs,
following the storage contract of study/ (DESIGN.md, issue 3). Nothing here needs study/ except the one
``slow`` integration test at the end, which is skipped when study/run.py does not exist.

The synthetic FIDs come from a known relation: FID = base(K, NFE) + 20 (1 - exp(-d^2 / 3)) + small terms, d = ln b - (C0 + C1 a),
so the best schedules lie on the ridge ln b = C0 + C1 a, which the a-b fit must recover.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from analysis import ablation, fit, summary
from analysis.load import StudyLoadError, load_metric_histories, load_study, load_trials, open_storage, trials_frame

ROOT = Path(__file__).resolve().parents[1]
C0, C1 = 0.5, -4.0  # the ridge of good schedules: ln b = C0 + C1 * a
K_CHOICES = [1, 2, 4]
DISTS = {"K": CategoricalDistribution(K_CHOICES), "a": FloatDistribution(-1.0, 1.0),
         "b": FloatDistribution(1e-3, 1e3, log=True)}
BASE_FID = {2: 30.0, 3: 25.0, 4: 22.0, 5: 21.0}  # K=1 baseline FID per NFE
N_STEPS = 12

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")  # MLflow's SQLAlchemy


def true_fid(k: int, a: float, b: float, nfe: int = 2) -> float:
    """The synthetic FID surface: K=1 sits at the NFE's base; K>1 has a valley along ln b = C0 + C1 a."""
    if k == 1:
        return BASE_FID[nfe]
    d = math.log(b) - (C0 + C1 * a)
    return BASE_FID[nfe] - (2.0 if k == 4 else 1.0) + 20.0 * (1.0 - math.exp(-d * d / 3.0)) + 0.5 * (a - 0.3) ** 2


def _attrs(k, a, b, nfe, seeds, rng, role, noise=0.3, **extra):
    mean = true_fid(k, a, b, nfe)
    fids = [float(mean + noise * rng.standard_normal()) for _ in seeds]
    u = {"fid": float(np.mean(fids)), "kid": float(np.mean(fids)) / 1000.0, "fid_seeds": fids,
         "fid_std": float(np.std(fids, ddof=1)) if len(fids) > 1 else 0.0, "seeds": list(seeds), "nfe": nfe,
         "framework": "sfd", "weights_mode": "exp", "fitted_a": a, "fitted_b": b, "preset": "tiny",
         "teacher_key": "teach0", "wall_time_s": 1.5, "role": role}
    u.update(extra)
    return u


def _params(k, a, b):
    return {"K": k, "a": float(a), "b": float(b)}


def ab_trials(n: int = 300, seed: int = 0, noise: float = 0.2, k: int = 4) -> pd.DataFrame:
    """An in-memory study of n K>1 trials with (a, ln b) uniform and FIDs from the known relation."""
    rng = np.random.default_rng(seed)
    study = optuna.create_study(study_name="ab-synth")
    study.set_user_attr("nfe", 2)
    for _ in range(n):
        a = float(rng.uniform(-1, 1))
        b = float(math.exp(rng.uniform(math.log(1e-3), math.log(1e3))))
        u = _attrs(k, a, b, 2, [0, 1], rng, "search", noise=noise)
        study.add_trial(create_trial(params=_params(k, a, b), distributions=DISTS, value=u["fid"], user_attrs=u))
    return trials_frame(study)


class Synth:
    """Paths and facts of the synthetic study used by the report, notebook and loader tests."""

    def __init__(self, root: Path):
        self.root = root
        self.storage = f"sqlite:///{root / 'optuna.db'}"
        self.tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
        self.name = "synth"
        self.n_trials = 0
        self.run_ids: dict[int, str] = {}
        self.parent_run_id = ""


def _log_child(client, exp_id, parent_id, number, k, fid_value, rng):
    from mlflow.entities import Metric

    run = client.create_run(exp_id, run_name=f"trial-{number}",
                            tags={"mlflow.parentRunId": parent_id, "optuna_trial_number": str(number)})
    rid = run.info.run_id
    metrics = []
    t0 = int(time.time() * 1000)
    for step in range(N_STEPS):
        branch = [float((1.0 + 0.5 * i) * math.exp(-step / 6.0) + 0.05 * rng.random()) for i in range(k)]
        metrics += [Metric(f"loss_branch_{i + 1}", v, t0 + step, step) for i, v in enumerate(branch)]
        metrics += [Metric("loss", float(sum(branch)), t0 + step, step),
                    Metric("endpoint_l1", branch[-1], t0 + step, step)]
    if fid_value is not None:
        metrics += [Metric("fid", float(fid_value), t0 + N_STEPS, 0), Metric("kid", float(fid_value) / 1000, t0, 0)]
    client.log_batch(rid, metrics=metrics)
    client.set_terminated(rid, "FINISHED" if fid_value is not None else "FAILED")
    return rid


def build_synthetic_study(root: Path) -> Synth:
    """A study like study/ writes: baselines, 30 search trials, failed/pruned ones, ablation grids, one waiting
    trial, plus an MLflow store with a parent run and a nested child run (loss histories) per trial."""
    from mlflow.tracking import MlflowClient

    s = Synth(root)
    rng = np.random.default_rng(1)
    client = MlflowClient(tracking_uri=s.tracking_uri)
    exp_id = client.create_experiment("bdense-synth", artifact_location=(root / "mlartifacts").as_uri())
    parent = client.create_run(exp_id, run_name="study-synth")
    s.parent_run_id = parent.info.run_id
    study = optuna.create_study(study_name=s.name, storage=s.storage)
    for key, v in {"preset": "tiny", "framework": "sfd", "nfe": 2, "fid_samples": 64, "teacher_key": "teach0",
                   "mlflow_experiment_id": exp_id, "mlflow_parent_run_id": s.parent_run_id,
                   "k_choices": K_CHOICES, "weights_mode": "exp"}.items():
        study.set_user_attr(key, v)
    seeds = [0, 1, 2]
    number = 0

    def add(k, a, b, role, nfe=2, state=TrialState.COMPLETE, reason=None):
        nonlocal number
        u = _attrs(k, a, b, nfe, seeds, rng, role)
        value = u["fid"] if state == TrialState.COMPLETE else None
        if state != TrialState.COMPLETE:
            for key in ("fid", "kid", "fid_seeds", "fid_std"):
                u.pop(key)
            u["fail_reason"] = reason
        rid = _log_child(client, exp_id, s.parent_run_id, number, k, value, rng)
        u["mlflow_run_id"] = rid
        s.run_ids[number] = rid
        study.add_trial(create_trial(params=_params(k, a, b), distributions=DISTS, value=value, user_attrs=u,
                                     state=state))
        number += 1

    add(1, 0.0, 1.0, "baseline-k1")
    add(4, 0.0, 1.0, "baseline-uniform")
    for _ in range(30):
        k = int(rng.choice([2, 4]))
        a = float(rng.uniform(-1, 1))
        b = float(math.exp(rng.uniform(math.log(1e-3), math.log(1e3))))
        add(k, a, b, "search")
    add(4, 0.2, 5.0, "search", state=TrialState.FAIL, reason="loss became NaN at step 3")
    add(2, -0.5, 0.01, "search", state=TrialState.PRUNED, reason="pruned at step 6")
    # designed grids around the ridge's best point, as enqueue_ablation would have made them (then run)
    best = (4, 0.3, math.exp(C0 + C1 * 0.3))
    for nfe in (3, 4):
        add(1, 0.0, 1.0, "ablation:nfe", nfe=nfe)
        add(*best, "ablation:nfe", nfe=nfe)
    for k in (1, 2, 4):
        add(k, 0.3 if k > 1 else 0.0, best[2] if k > 1 else 1.0, "ablation:k")
    study.enqueue_trial({"K": 2, "a": 0.1, "b": 1.0}, user_attrs={"role": "ablation:schedule", "seeds": [0, 1, 2]})
    client.set_terminated(s.parent_run_id)
    s.n_trials = len(study.trials)
    return s


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Synth:
    return build_synthetic_study(tmp_path_factory.mktemp("synth"))


def _one_study(root: Path, name: str, trials: list[dict], attrs: dict | None = None) -> str:
    """A study in root/NAME.db holding ``trials`` (dicts for create_trial); returns the storage URL."""
    url = f"sqlite:///{root / (name + '.db')}"
    study = optuna.create_study(study_name=name, storage=url)
    for k, v in (attrs or {}).items():
        study.set_user_attr(k, v)
    for t in trials:
        study.add_trial(create_trial(distributions={k: DISTS[k] for k in t["params"]}, **t))
    return url


def _failed(reason: str = "loss became NaN at step 2") -> dict:
    return {"params": _params(4, 0.1, 1.0), "state": TrialState.FAIL,
            "user_attrs": {"fail_reason": reason, "role": "search"}}


def _run_report(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analysis.report", *args], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=300)


def _assert_image(path: Path) -> None:
    """A readable, non-empty, non-blank image."""
    from PIL import Image

    assert path.is_file() and path.stat().st_size > 0, path
    with Image.open(path) as im:
        im.load()
        assert im.width > 200 and im.height > 200, (path, im.size)
        arr = np.asarray(im.convert("L"), dtype=float)
    assert arr.std() > 1.0, f"{path} is blank"


def _assert_svg(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0, path
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    assert len(list(root.iter())) > 50, f"{path} has almost nothing in it"


# ------------------------------------------------------------------------------------------- loading
def test_load_trials_one_row_per_trial_with_contract_columns(synth):
    df = load_trials(synth.storage, synth.name)
    assert len(df) == synth.n_trials
    assert list(df["number"]) == list(range(synth.n_trials))
    for col in ["number", "state", "value", "K", "a", "b", "a_eff", "b_eff", "fid", "kid", "fid_seeds", "fid_std",
                "seeds", "n_seeds", "nfe", "framework", "weights_mode", "fitted_a", "fitted_b", "preset",
                "teacher_key", "mlflow_run_id", "wall_time_s", "role", "fail_reason", "duration_s",
                "datetime_start"]:
        assert col in df.columns, col
    assert df["state"].value_counts().to_dict() == {"COMPLETE": synth.n_trials - 3, "FAIL": 1, "PRUNED": 1,
                                                     "WAITING": 1}
    done = df[df["state"] == "COMPLETE"]
    assert all(isinstance(v, list) and len(v) == 3 for v in done["fid_seeds"])
    assert np.allclose(done["value"], [np.mean(v) for v in done["fid_seeds"]])
    assert (done["n_seeds"] == 3).all()
    assert set(done["nfe"]) == {2, 3, 4}
    assert df.loc[df["state"] == "FAIL", "fail_reason"].item() == "loss became NaN at step 3"
    assert {n: r for n, r in zip(df["number"], df["mlflow_run_id"]) if isinstance(r, str)} == synth.run_ids
    assert df.attrs["study"]["nfe"] == 2 and df.attrs["study"]["study_name"] == synth.name
    assert df.loc[0, "role"] == "baseline-k1" and int(df.loc[0, "K"]) == 1


def test_load_journal_file_and_free_weights(tmp_path):
    path = tmp_path / "optuna-journal.log"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    study = optuna.create_study(study_name="j", storage=storage)
    wd = {f"w{i}": FloatDistribution(1e-3, 1e3, log=True) for i in range(1, 5)}
    a, b = 0.4, 0.2
    ws = {f"w{i}": b * math.exp(a * i) for i in range(1, 5)}
    study.add_trial(create_trial(params={"K": 4, **ws}, distributions={"K": DISTS["K"], **wd}, value=12.0,
                                 user_attrs={"weights_mode": "free"}))
    study.add_trial(create_trial(params={"K": 2, "w1": 1.0, "w2": 1.0}, distributions={"K": DISTS["K"], "w1": wd["w1"],
                                                                                       "w2": wd["w2"]},
                                 value=13.0, user_attrs={"weights_mode": "free", "fitted_a": 0.0, "fitted_b": 1.0}))
    for spelled in (str(path), path, f"journal:{path}", f"journal://{path}"):
        df = load_trials(spelled, "j")
        assert len(df) == 2
    assert [c for c in df.columns if re.fullmatch(r"w\d", c)] == ["w1", "w2", "w3", "w4"]
    assert df.loc[0, "a_eff"] == pytest.approx(a) and df.loc[0, "b_eff"] == pytest.approx(b)
    assert df.loc[1, "a_eff"] == 0.0 and pd.isna(df.loc[1, "w3"])
    assert summary.is_uniform(df.loc[1]) and not summary.is_uniform(df.loc[0])
    # an SQLite file given as a plain path is recognised by its header
    url = _one_study(tmp_path, "plain", [{"params": _params(2, 0.0, 1.0), "value": 3.0}])
    assert len(load_trials(url.split("///", 1)[1], "plain")) == 1
    assert len(load_trials(url, None)) == 1  # the only study


def test_mlflow_join_and_metric_histories(synth):
    df = load_trials(synth.storage, synth.name, with_mlflow=True, tracking_uri=synth.tracking_uri)
    done = df[df["state"] == "COMPLETE"]
    assert np.allclose(done["mlflow_fid"], done["fid"])
    assert (done["mlflow_status"] == "FINISHED").all()
    runs = [synth.run_ids[0], synth.run_ids[1]]  # K=1 baseline, K=4 uniform
    h = load_metric_histories(synth.tracking_uri, runs, keys=("loss", "loss_branch_*"))
    assert list(h.columns) == ["run_id", "trial_number", "key", "step", "value", "timestamp"]
    counts = h.groupby(["run_id", "key"]).size()
    assert (counts == N_STEPS).all()
    assert set(h.loc[h["run_id"] == runs[0], "key"]) == {"loss", "loss_branch_1"}
    assert set(h.loc[h["run_id"] == runs[1], "key"]) == {"loss"} | {f"loss_branch_{i}" for i in range(1, 5)}
    assert dict(zip(h["run_id"], h["trial_number"])) == {runs[0]: 0, runs[1]: 1}
    assert list(h.loc[(h["run_id"] == runs[1]) & (h["key"] == "loss"), "step"]) == list(range(N_STEPS))
    with pytest.warns(UserWarning, match="not found"):
        assert load_metric_histories(synth.tracking_uri, ["0" * 32], keys=None).empty
    with pytest.raises(StudyLoadError, match="tracking store not found"):
        load_metric_histories(f"sqlite:///{synth.root / 'nope.db'}", runs, keys=None)


@pytest.fixture(scope="module")
def bad_stores(tmp_path_factory, synth):
    root = tmp_path_factory.mktemp("bad")
    garbage = root / "garbage.log"
    garbage.write_text("this is not a journal\n")
    return {
        "missing file": (str(root / "nope.log"), "x", "storage not found"),
        "missing sqlite": (f"sqlite:///{root / 'nope.db'}", "x", "storage not found"),
        "folder": (str(root), "x", "is a folder"),
        "garbage": (str(garbage), "x", "not a readable Optuna journal file"),
        "not optuna db": (synth.tracking_uri, "x", "holds no Optuna tables (it looks like an MLflow tracking store)"),
        "missing study": (synth.storage, "nope", "studies there: 'synth'"),
        "empty study": (_one_study(root, "empty", []), "empty", "has no trials"),
        "only failed": (_one_study(root, "failed", [_failed(), _failed("CUDA out of memory")]), "failed",
                        "no completed trials (2 fail); first failure reason: loss became NaN"),
    }


BAD_CASES = ["missing file", "missing sqlite", "folder", "garbage", "not optuna db", "missing study", "empty study",
             "only failed"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_load_errors_are_one_line(bad_stores, case):
    storage, name, fragment = bad_stores[case]
    with pytest.raises(StudyLoadError) as exc:
        load_trials(storage, name)
    msg = str(exc.value)
    assert fragment in msg and "\n" not in msg and len(msg) < 400


def test_storage_is_never_created_by_reading(tmp_path):
    for spelled in (str(tmp_path / "new.log"), f"sqlite:///{tmp_path / 'new.db'}"):
        with pytest.raises(StudyLoadError):
            open_storage(spelled)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ a-b fit
def test_fit_recovers_the_known_ab_relation():
    df = ab_trials(400, seed=3)
    tight = fit.fit_ab_relation(df, quantile=0.1)
    assert tight.form == "log-linear" and tight.K == 4 and tight.n == 40 and tight.n_candidates == 400
    assert tight.c1 == pytest.approx(C1, abs=0.3)
    assert tight.c0 == pytest.approx(C0, abs=0.2)
    assert tight.r2 > 0.9
    assert abs(tight.c1 - C1) < 3 * tight.c1_se
    loose = fit.fit_ab_relation(df, quantile=0.25)
    assert loose.c1 == pytest.approx(C1, abs=0.6) and loose.c0 == pytest.approx(C0, abs=0.35)
    # the fitted trials are the best ones
    top = df.sort_values("value").head(40)
    assert set(tight.trial_numbers) == set(top["number"])
    assert tight.fid_threshold == pytest.approx(top["value"].max())
    assert tight.equation.startswith("ln b = ") and "·a" in tight.equation
    assert tight.predict_b(0.0) == pytest.approx(math.exp(tight.c0))


def test_fit_exact_forms_and_refusals():
    # points exactly on a relation, all in the top quantile: exact coefficients, R^2 = 1
    study = optuna.create_study()
    for i, a in enumerate(np.linspace(-1, 1, 9)):
        study.add_trial(create_trial(params=_params(4, a, math.exp(0.7 - 2.5 * a)), distributions=DISTS,
                                     value=10.0 + i))
    df = trials_frame(study)
    f = fit.fit_ab_relation(df, quantile=1.0)
    assert (f.c0, f.c1, f.r2) == (pytest.approx(0.7), pytest.approx(-2.5), pytest.approx(1.0))
    assert f.equation == "ln b = 0.7 - 2.5·a"
    study2 = optuna.create_study()
    for i, a in enumerate(np.linspace(-1, 1, 5)):
        study2.add_trial(create_trial(params=_params(2, a, 2.0 + 0.5 * a), distributions=DISTS, value=5.0 + i))
    lin = fit.fit_ab_relation(trials_frame(study2), quantile=1.0, form="linear")
    assert (lin.c0, lin.c1) == (pytest.approx(2.0), pytest.approx(0.5)) and lin.K == 2
    with pytest.raises(fit.ABFitError, match="at least 3"):
        fit.fit_ab_relation(df.head(2))
    same_a = optuna.create_study()
    for i in range(4):
        same_a.add_trial(create_trial(params=_params(4, 0.2, 1.0 + i), distributions=DISTS, value=float(i)))
    with pytest.raises(fit.ABFitError, match="all have a = 0.2"):
        fit.fit_ab_relation(trials_frame(same_a), quantile=1.0)
    with pytest.raises(ValueError, match="quantile"):
        fit.fit_ab_relation(df, quantile=0.0)


# --------------------------------------------------------------------------------------------- report
def independent_headline(storage: str, name: str) -> dict[int, dict]:
    """Baseline vs best B-DENSE per NFE straight from Optuna's API (not through analysis/)."""
    import statistics

    study = optuna.load_study(study_name=name, storage=storage)
    nfe0 = study.user_attrs["nfe"]
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    def per_seed(trials):  # one FID per distinct seed: the mean over the trials that ran it
        runs: dict[int, list[float]] = {}
        for t in trials:
            for seed, f in zip(t.user_attrs["seeds"], t.user_attrs["fid_seeds"]):
                runs.setdefault(seed, []).append(f)
        return [statistics.fmean(v) for v in runs.values()]

    out = {}
    for nfe in sorted({t.user_attrs.get("nfe", nfe0) for t in done}):
        at = [t for t in done if t.user_attrs.get("nfe", nfe0) == nfe]
        base = per_seed([t for t in at if t.params["K"] == 1])
        bd = [t for t in at if t.params["K"] > 1]
        best = min(bd, key=lambda t: (t.value, t.number))
        same = [t for t in bd if t.params == best.params]
        fids = per_seed(same)
        out[nfe] = {"base_mean": statistics.fmean(base), "base_sd": statistics.stdev(base), "base_n": len(base),
                    "base_trials": sum(1 for t in at if t.params["K"] == 1),
                    "bd_mean": statistics.fmean(fids), "bd_sd": statistics.stdev(fids), "bd_n": len(fids),
                    "bd_trials": len(same), "best": best.number}
    return out


EXPECTED_FIGURES = ["ab_vs_fid", "fid_vs_k", "baseline_vs_bdense", "branch_losses", "optuna_history",
                    "optuna_importances", "ablation_k", "ablation_nfe"]


def test_report_cli_on_synthetic_study(synth, tmp_path):
    out = tmp_path / "report"
    proc = _run_report("--study", synth.name, "--storage", synth.storage, "--tracking-uri", synth.tracking_uri,
                       "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for name in EXPECTED_FIGURES:
        _assert_image(out / f"{name}.png")
        _assert_svg(out / f"{name}.svg")
    # the schedule grid has only a waiting trial: no figure, a note instead
    assert not (out / "ablation_schedule.png").exists()

    csv = pd.read_csv(out / "trials.csv")
    assert len(csv) == synth.n_trials and sorted(csv["number"]) == list(range(synth.n_trials))
    assert json.loads(csv.loc[0, "fid_seeds"]) == pytest.approx(
        optuna.load_study(study_name=synth.name, storage=synth.storage).trials[0].user_attrs["fid_seeds"])

    s = json.loads((out / "summary.json").read_text())
    assert s["n_trials"] == synth.n_trials and s["n_completed"] == synth.n_trials - 3
    assert s["states"] == {"complete": synth.n_trials - 3, "fail": 1, "pruned": 1, "waiting": 1}
    assert s["seeds_per_trial"] == [3] and s["n_seed_runs"] == 3 * (synth.n_trials - 3)
    truth = independent_headline(synth.storage, synth.name)
    assert [r["nfe"] for r in s["headline"]] == sorted(truth) == [2, 3, 4]
    for row in s["headline"]:
        t = truth[row["nfe"]]
        b, d = row["baseline"], row["bdense"]
        assert (b["mean"], b["std"]) == (pytest.approx(t["base_mean"], rel=1e-12), pytest.approx(t["base_sd"], rel=1e-9))
        assert (b["n_seeds"], b["n_trials"]) == (t["base_n"], t["base_trials"])
        assert (d["mean"], d["std"]) == (pytest.approx(t["bd_mean"], rel=1e-12), pytest.approx(t["bd_sd"], rel=1e-9))
        assert (d["n_seeds"], d["n_trials"], d["trial_number"]) == (t["bd_n"], t["bd_trials"], t["best"])
        assert row["delta"] == pytest.approx(t["base_mean"] - t["bd_mean"])
    assert s["fit"]["K"] == 4 and s["fit"]["equation"].startswith("ln b =")
    assert set(s["figures"]) == set(EXPECTED_FIGURES) | {"ablation_schedule"}
    assert "skipped" in s["figures"]["ablation_schedule"]

    # the Markdown headline table carries the same numbers (4 significant digits)
    md = (out / "summary.md").read_text()
    rows = {int(m.group(1)): m.groups()[1:] for m in re.finditer(
        r"^\| (\d+) \| ([\d.]+) ± ([\d.]+) \| (\d+) \((\d+)\) \| ([\d.]+) ± ([\d.]+) \| (\d+) \((\d+)\) \|",
        md, flags=re.M)}
    assert sorted(rows) == [2, 3, 4]
    for nfe, (bm, bsd, bn, bt, dm, dsd, dn, dt) in rows.items():
        t = truth[nfe]
        assert float(bm) == pytest.approx(t["base_mean"], rel=1e-3) and float(dm) == pytest.approx(t["bd_mean"], rel=1e-3)
        assert float(bsd) == pytest.approx(t["base_sd"], rel=1e-2) and float(dsd) == pytest.approx(t["bd_sd"], rel=1e-2)
        assert (int(bn), int(bt), int(dn), int(dt)) == (t["base_n"], t["base_trials"], t["bd_n"], t["bd_trials"])
    for name in EXPECTED_FIGURES:
        assert f"]({name}.png)" in md and f"({name}.svg)" in md
    assert s["fit"]["equation"] in md and "No completed trials yet (1 waiting or running)" in md

    # logged to the study's MLflow parent run
    from mlflow.tracking import MlflowClient

    logged = {Path(a.path).name for a in MlflowClient(synth.tracking_uri).list_artifacts(synth.parent_run_id, "report")}
    assert {"summary.md", "summary.json", "trials.csv", "ab_vs_fid.png", "ab_vs_fid.svg"} <= logged


@pytest.mark.parametrize("case", ["missing file", "garbage", "not optuna db", "missing study", "empty study",
                                  "only failed"])
def test_report_cli_bad_input_exits_2_with_one_line(bad_stores, tmp_path, case):
    storage, name, fragment = bad_stores[case]
    out = tmp_path / "out"
    proc = _run_report("--study", name, "--storage", storage, "--out", str(out))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m analysis.report: error:") and fragment in lines[0]
    assert not out.exists() or not list(out.glob("*.png"))  # no figure, empty or not


def test_report_cli_bad_flags_exit_2(synth, tmp_path):
    for args in (["--out", str(tmp_path)],  # no --study
                 ["--study", synth.name, "--storage", synth.storage, "--out", str(tmp_path), "--quantile", "0"],
                 ["--study", synth.name, "--storage", synth.storage, "--out", str(tmp_path),
                  "--tracking-uri", f"sqlite:///{tmp_path / 'nope.db'}"]):
        from analysis.report import main

        proc = _run_report(*args) if args[0] == "--out" else None
        if proc is not None:
            assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1
        else:
            assert main(args) == 2
    assert not list(tmp_path.glob("*.png"))


def test_report_on_a_sparse_study_skips_figures_with_reasons(tmp_path):
    """One completed trial (plus a failed one): Optuna's plots and the fit are skipped, never drawn empty."""
    from analysis.report import make_report

    url = _one_study(tmp_path, "sparse", [
        {"params": _params(4, 0.2, 1.5), "value": 31.0,
         "user_attrs": {"fid_seeds": [31.0], "role": "search", "nfe": 2}},
        _failed(),
    ], attrs={"nfe": 2, "framework": "sfd"})
    rep = make_report("sparse", url, tmp_path / "r", tracking_uri=None, log_to_mlflow=False)
    made = {f.name for f in rep.figures if f.made}
    skipped = {f.name: f.note for f in rep.figures if not f.made}
    assert made == {"ab_vs_fid", "fid_vs_k", "baseline_vs_bdense"}
    assert "at least 2 completed trials" in skipped["optuna_history"]
    assert "at least 2 completed trials" in skipped["optuna_importances"]
    assert "MLflow" in skipped["branch_losses"]
    for name in made:
        _assert_image(tmp_path / "r" / f"{name}.png")
    for name in skipped:
        assert not (tmp_path / "r" / f"{name}.png").exists()
    md = (tmp_path / "r" / "summary.md").read_text()
    assert "Not fitted: the a-b fit needs at least 3" in md and md.count("_Skipped:") == 3
    assert len(pd.read_csv(tmp_path / "r" / "trials.csv")) == 2


def test_optuna_figures_skip_single_parameter_studies():
    from analysis import figures

    study = optuna.create_study()
    for i, a in enumerate(np.linspace(-1, 1, 6)):
        study.add_trial(create_trial(params={"K": 4, "a": float(a), "b": 1.0}, distributions=DISTS, value=float(i)))
    with pytest.raises(figures.NotEnoughData, match="at least 2 parameters that vary"):
        figures.plot_param_importances(study)
    fig = figures.plot_optimization_history(study)  # one parameter is fine for the history
    assert fig.axes and fig.axes[0].collections
    figures._pyplot().close(fig)
    with pytest.raises(figures.NotEnoughData, match="histories"):
        figures.plot_branch_losses(pd.DataFrame(columns=["run_id", "trial_number", "key", "step", "value"]))


# ------------------------------------------------------------------------------------------ ablations
def test_ablation_grids():
    assert [c.label for c in ablation.ablation_grid("k", [1, 2, 4], seeds=2)] == [
        "K=1", "K=2 (uniform a=0)", "K=4 (uniform a=0)"]
    k = ablation.ablation_grid("k", [1, 2, 4], best_params={"K": 4, "a": 0.3, "b": 0.5})
    assert [c.params for c in k] == [{"K": 1, "a": 0.0, "b": 1.0}, {"K": 2, "a": 0.3, "b": 0.5},
                                     {"K": 4, "a": 0.3, "b": 0.5}]
    assert all(c.user_attrs["role"] == "ablation:k" and c.user_attrs["seeds"] == [1000, 1001, 1002] for c in k)
    # the seeds are apart from the search's (0, 1, ...) so a configuration from the search is re-run fresh
    assert ablation.ablation_grid("k", [1, 2], seeds=2, first_seed=7)[0].user_attrs["seeds"] == [7, 8]
    sched = ablation.ablation_grid("schedule", [1, 2, 4], best_params={"K": 2, "a": 0.3, "b": 0.5})
    assert {c.params["K"] for c in sched} == {2} and len(sched) == len(ablation.SCHEDULES) + 1
    assert {"K": 2, "a": 0.0, "b": 1.0} in [c.params for c in sched]  # uniform is always in
    nfe = ablation.ablation_grid("nfe", [1, 2, 4], best_params={"K": 4, "a": 0.3, "b": 0.5}, nfe_values=(2, 3))
    assert [(c.user_attrs["nfe"], c.params["K"]) for c in nfe] == [(2, 1), (2, 4), (3, 1), (3, 4)]
    free = ablation.ablation_grid("k", [1, 2], best_params={"K": 2, "w1": 1.0, "w2": math.e}, weights_mode="free")
    assert free[1].params == {"K": 2, "w1": pytest.approx(1.0), "w2": pytest.approx(math.e)}
    for bad, match in ((dict(name="x"), "unknown ablation"), (dict(k_choices=[0, 2]), ">= 1"),
                       (dict(seeds=0), "seeds"), (dict(name="nfe", nfe_values=[0]), "NFE")):
        kwargs = dict(name="k", k_choices=[1, 2], seeds=1) | bad
        with pytest.raises(ValueError, match=match):
            ablation.ablation_grid(**kwargs)
    with pytest.raises(ValueError, match="K > 1"):
        ablation.ablation_grid("schedule", [1])


def test_enqueue_ablation_is_run_by_the_study_workers():
    """Enqueued configurations are what the next trials of study.optimize get, with their user attributes."""
    study = optuna.create_study()
    study.set_user_attr("weights_mode", "exp")
    study.set_user_attr("nfe", 2)
    best = {"K": 4, "a": 0.3, "b": 0.5}
    n = ablation.enqueue_ablation(study, "nfe", [1, 2, 4], best_params=best, seeds=2, nfe_values=(2, 3, 4))
    assert n == 6
    assert ablation.enqueue_ablation(study, "nfe", [1, 2, 4], best_params=best, seeds=2, nfe_values=(2, 3, 4)) == 0
    assert ablation.enqueue_ablation(study, "k", [1, 2, 4], best_params=best) == 3
    seen = []

    def objective(trial):  # what study/'s objective does with an enqueued trial
        k = trial.suggest_categorical("K", K_CHOICES)
        a, b = trial.suggest_float("a", -1, 1), trial.suggest_float("b", 1e-3, 1e3, log=True)
        nfe = trial.user_attrs.get("nfe", study.user_attrs["nfe"])
        seeds = trial.user_attrs.get("seeds", [0])
        seen.append((trial.user_attrs["role"], k, a, b, nfe, tuple(seeds)))
        fids = [true_fid(k, a, b, nfe) + 0.01 * (s - 1000) for s in seeds]
        trial.set_user_attr("fid_seeds", fids)
        return float(np.mean(fids))

    study.optimize(objective, n_trials=9)
    s = (1000, 1001)
    assert seen[:6] == [("ablation:nfe", 1, 0.0, 1.0, 2, s), ("ablation:nfe", 4, 0.3, 0.5, 2, s),
                        ("ablation:nfe", 1, 0.0, 1.0, 3, s), ("ablation:nfe", 4, 0.3, 0.5, 3, s),
                        ("ablation:nfe", 1, 0.0, 1.0, 4, s), ("ablation:nfe", 4, 0.3, 0.5, 4, s)]
    assert [s[0] for s in seen[6:]] == ["ablation:k"] * 3
    # completed configurations are not enqueued again; the study's best K>1 feeds the next grid
    assert ablation.enqueue_ablation(study, "k", [1, 2, 4], best_params=best) == 0
    assert ablation.best_bdense_params(study) == {"K": 4, "a": 0.3, "b": 0.5}
    df = trials_frame(study)
    assert [r["nfe"] for r in summary.headline(df)] == [2, 3, 4]
    assert list(summary.ablation_table(df, "nfe")["nfe"]) == [2, 2, 3, 3, 4, 4]
    free = optuna.create_study()
    free.set_user_attr("weights_mode", "free")
    ablation.enqueue_ablation(free, "schedule", [1, 4], seeds=1)
    params = [t.system_attrs["fixed_params"] for t in free.get_trials(states=(TrialState.WAITING,))]
    assert len(params) == len(ablation.SCHEDULES) and all(set(p) == {"K", "w1", "w2", "w3", "w4"} for p in params)
    waiting = trials_frame(free, require_complete=False)  # enqueued params show in the frame
    assert (waiting["K"] == 4).all() and (waiting["role"] == "ablation:schedule").all()


# ------------------------------------------------------------------------------------------ notebooks
NOTEBOOKS = {"ab_vs_fid": ["ab_vs_fid"],
             "ablations": ["fid_vs_k", "baseline_vs_bdense", "ablation_k", "ablation_nfe", "branch_losses"]}


def test_notebooks_are_committed_executed_small_and_up_to_date():
    """Committed executed (by notebooks/run_notebooks.py) so they show their plots where the repository is
    browsed: cells as make_notebooks.py writes them, every code cell run without error, images kept, files small."""
    import nbformat

    proc = subprocess.run([sys.executable, str(ROOT / "notebooks" / "make_notebooks.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name, figs in NOTEBOOKS.items():
        path = ROOT / "notebooks" / f"{name}.ipynb"
        assert path.stat().st_size < 600 * 1024
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.execution_count is not None for c in code)
        outputs = [o for c in code for o in c.outputs]
        assert not [o for o in outputs if o.output_type == "error"]
        assert sum("image/png" in o.get("data", {}) for o in outputs) >= min(len(figs), 3)
        first = code[0].source
        assert "STUDY_NAME" in first and "STORAGE" in first and "TRACKING_URI" in first
        assert "BDENSE_STUDY" in first and "BDENSE_STORAGE" in first
        assert "parameters" in code[0].metadata.get("tags", [])


def test_notebooks_run_headless_against_the_synthetic_study(synth, tmp_path, monkeypatch):
    import nbclient
    import nbformat

    figs = tmp_path / "figs"
    monkeypatch.setenv("BDENSE_STUDY", synth.name)
    monkeypatch.setenv("BDENSE_STORAGE", synth.storage)
    monkeypatch.setenv("BDENSE_TRACKING_URI", synth.tracking_uri)
    monkeypatch.setenv("BDENSE_FIG_DIR", str(figs))
    for name, expected in NOTEBOOKS.items():
        nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                                resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        assert not [o for o in outputs if o.output_type == "error"]
        assert sum("image/png" in o.get("data", {}) for o in outputs) >= len(expected)
        text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
        assert "skipped" not in text.replace("ablation_schedule skipped", "")
        for fig_name in expected:
            _assert_image(figs / f"{fig_name}.png")
            _assert_svg(figs / f"{fig_name}.svg")


# ------------------------------------------------------------------------------------------ integration
@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "study" / "run.py").exists(), reason="study/run.py does not exist yet")
def test_report_on_a_real_tiny_study(tmp_path):
    storage = f"journal:{tmp_path / 'optuna-journal.log'}"
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = subprocess.run([sys.executable, "study/run.py", "--preset", "tiny", "--n-trials", "3", "--study-name",
                          "it", "--storage", storage, "--mlflow-uri", mlflow_uri, "--device", "cpu",
                          "--runs-dir", str(tmp_path / "runs")],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "report"
    proc = _run_report("--study", "it", "--storage", storage, "--tracking-uri", mlflow_uri, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    s = json.loads((out / "summary.json").read_text())
    study = optuna.load_study(study_name="it", storage=load_study(storage, "it")._storage)
    assert s["n_trials"] == len(study.trials) == len(pd.read_csv(out / "trials.csv"))
    made = [n for n, f in s["figures"].items() if "png" in f]
    assert {"fid_vs_k", "baseline_vs_bdense", "optuna_history", "branch_losses"} <= set(made)
    for n in made:
        _assert_image(out / f"{n}.png")
    base = s["headline"][0]["baseline"]
    k1 = [t for t in study.trials if t.state == TrialState.COMPLETE and t.params["K"] == 1]
    assert base["mean"] == pytest.approx(np.mean([f for t in k1 for f in t.user_attrs["fid_seeds"]]))
