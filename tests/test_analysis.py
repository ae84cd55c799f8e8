"""Tests of analysis/ and notebooks/ on small synthetic studies written through Optuna's and MLflow's own APIs,
following the storage contract of study/ (DESIGN.md, issue 3). Nothing here needs study/ except the one
``slow`` integration test at the end, which is skipped when study/run.py does not exist.

The synthetic FIDs come from a known relation: FID = base(K, NFE) + 20 (1 - exp(-d^2 / 3)) + small terms, d = ln b - (C0 + C1 a),
so the best schedules lie on the ridge ln b = C0 + C1 a, which the a-b fit must recover.
"""

from __future__ import annotations

import html
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

from analysis import fit, summary
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
    """Baseline vs best B-DENSE per NFE straight from Optuna's API (not through analysis/ or the contract's
    code), by the contract's rule: per-seed pooling, the K>1 configuration with the lowest mean over seeds
    (ties: more seeds, then the earlier trial), Welch's t between the two."""
    import statistics

    from scipy import stats

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
        base_trials = [t for t in at if t.params["K"] == 1]
        base = per_seed(base_trials)
        configs: dict[tuple, list] = {}
        for t in at:
            if t.params["K"] > 1:
                configs.setdefault((t.params["K"], round(t.params["a"], 6), round(t.params["b"], 6)), []).append(t)
        best_trials = min(configs.values(), key=lambda ts: (statistics.fmean(per_seed(ts)), -len(per_seed(ts)),
                                                            min(t.number for t in ts)))
        fids = per_seed(best_trials)
        welch = stats.ttest_ind(base, fids, equal_var=False)
        out[nfe] = {"base_mean": statistics.fmean(base), "base_sd": statistics.stdev(base), "base_n": len(base),
                    "base_trials": len(base_trials),
                    "bd_mean": statistics.fmean(fids), "bd_sd": statistics.stdev(fids), "bd_n": len(fids),
                    "bd_trials": len(best_trials), "best": min(best_trials, key=lambda t: (t.value, t.number)).number,
                    "p": welch.pvalue, "m": len(configs)}
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
    # every figure's foot names the trials it draws from (the guide: training length, seeds, samples, machine)
    summary = json.loads((out / "summary.json").read_text())
    md = (out / "summary.md").read_text()
    for name in EXPECTED_FIGURES:
        foot = summary["figures"][name]["foot"]
        assert "iterations" in foot and "seeds" in foot and "FID on" in foot and "machines:" in foot
        # matplotlib's SVG keeps each drawn line of text as a comment beside its glyph paths
        drawn = " ".join(html.unescape(t) for t in re.findall(r"<!-- (.*?) -->", (out / f"{name}.svg").read_text(),
                                                              flags=re.S))
        assert f"Trials drawn: {foot}" in " ".join(drawn.split()), name
        assert f"Trials drawn: {foot}." in md
    assert f"All completed trials: {summary['provenance']}." in md

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
        assert row["comparison"]["p"] == pytest.approx(t["p"]) and row["candidates"] == t["m"]
    assert s["fit"]["K"] == 4 and s["fit"]["equation"].startswith("ln b =")
    assert set(s["figures"]) == set(EXPECTED_FIGURES) | {"ablation_schedule"}
    assert "skipped" in s["figures"]["ablation_schedule"]

    # the Markdown headline table carries the same numbers (4 significant digits)
    md = (out / "summary.md").read_text()
    rows = {int(m.group(1)): m.groups()[1:] for m in re.finditer(
        r"^\| (\d+) \| screen \| ([\d.]+) ± ([\d.]+) \| (\d+) \((\d+)\) \| ([\d.]+) ± ([\d.]+) \| (\d+) \((\d+)\) \|",
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
    study = optuna.load_study(study_name="it", storage=open_storage(storage))
    assert s["n_trials"] == len(study.trials) == len(pd.read_csv(out / "trials.csv"))
    made = [n for n, f in s["figures"].items() if "png" in f]
    assert {"fid_vs_k", "baseline_vs_bdense", "optuna_history", "branch_losses"} <= set(made)
    for n in made:
        _assert_image(out / f"{n}.png")
    base = s["headline"][0]["baseline"]
    k1 = [t for t in study.trials if t.state == TrialState.COMPLETE and t.params.get("K", t.user_attrs.get("K")) == 1]
    assert base["mean"] == pytest.approx(np.mean([f for t in k1 for f in t.user_attrs["fid_seeds"]]))


# ------------------------------------------------------------------- screen, then confirm at full length
SCREEN_K1 = [30.1, 29.8, 30.0, 30.3, 29.9, 29.9]  # six K=1 screen trials, one seed each: mean 30.0
SCREEN_K4 = [(0.9, 28.0), (0.7, 28.2), (0.7, 28.4), (0.5, 28.5), (0.3, 29.4), (0.1, 29.9), (-0.5, 36.0)]
SCREEN_UNIFORM = 31.0
FULL = {"K=1": [12.0, 12.2, 12.1], "uniform": [12.9, 13.1, 13.0], 0.9: [11.6, 11.8, 11.7], 0.7: [11.3, 11.5, 11.4],
        0.5: [11.9, 12.1, 12.0]}
FULL_SEEDS = [100, 101, 102]
SETTINGS = {"afs": True, "teacher_substeps": 4, "batch_size": 64, "lr": 1e-4, "teacher_paths": "seed bank",
            "objective": "fid", "framework": "sfd", "weights_mode": "exp", "nfe": 2}


def confirm_study(objective: str = "fid", unconfirmed: tuple = (), storage=None) -> optuna.Study:
    """A screen-then-confirm study as the new driver writes it (the contract of issue 15): one-seed screen
    trials, then the screen's top 3 configurations and both baselines re-trained at full length, one seed per
    trial, three seeds each. With ``objective="kid"`` the trials minimise a KID that orders them the other way
    round from their FID (as a small-sample study's objective may). ``unconfirmed`` names the configurations
    ("K=1", "uniform", or an a) whose full-length trials have not run yet; ``storage`` (default: a new in-memory
    one) is where it is written, for a caller that reads it back through a storage."""
    study = optuna.create_study(study_name="confirm", storage=storage)
    for k, v in {"preset": "tiny", "framework": "sfd", "nfe": 2, "fid_samples": 64, "k_choices": [1, 4],
                 "weights_mode": "exp"}.items():
        study.set_user_attr(k, v)

    def add(k, a, fid, seed, role, fidelity, iterations, **extra):
        kid = fid / 1000 if objective == "fid" else (50 - fid) / 1000
        u = {**SETTINGS, "role": role, "fidelity": fidelity, "seeds": [seed], "fid_seeds": [fid], "fid": fid,
             "kid": kid, "kid_seeds": [kid], "iterations": iterations, "fitted_a": a, "fitted_b": 1.0,
             "mlflow_run_id": "", "objective": objective, **extra}
        study.add_trial(create_trial(params=_params(k, a, 1.0), distributions=DISTS,
                                     value=fid if objective == "fid" else kid, user_attrs=u))
        return study.trials[-1].number

    screen_of = {}
    for i, f in enumerate(SCREEN_K1):
        n = add(1, 0.0, f, i, "baseline-k1" if i == 0 else "search", "screen", 80)
        screen_of.setdefault("K=1", n)
    screen_of["uniform"] = add(4, 0.0, SCREEN_UNIFORM, 6, "baseline-uniform", "screen", 80)
    for j, (a, f) in enumerate(SCREEN_K4):
        n = add(4, a, f, 10 + j, "search", "screen", 80)
        screen_of.setdefault(a, n)
    for rank, key in enumerate(["K=1", "uniform", 0.9, 0.7, 0.5]):
        if key in unconfirmed:
            continue
        a = {"K=1": 0.0, "uniform": 0.0}.get(key, key)
        k = 1 if key == "K=1" else 4
        role = {"K=1": "baseline-k1", "uniform": "baseline-uniform"}.get(key, "confirm")
        for seed, f in zip(FULL_SEEDS, FULL[key]):
            add(k, a, f, seed, role, "full", 1560, screen_trial=screen_of[key], confirm_rank=max(0, rank - 1))
    return study


def _ranks(x):
    order = np.argsort(x)
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    return r


def test_fidelity_table_on_a_screen_then_confirm_study():
    from analysis.fidelity import fidelity_table

    trials = trials_frame(confirm_study())
    ft = fidelity_table(trials)
    rows = {r["config"]: r for r in ft["rows"]}
    assert list(rows) == ["K=4, a=0.7, b=1", "K=4, a=0.9, b=1", "K=4, a=0.5, b=1", "K=1", "K=4, a=0, b=1"]
    r = rows["K=4, a=0.7, b=1"]
    assert r["confirm_rank"] == 2 and r["roles"] == ["confirm"]
    assert r["screen_trial_fid"] == pytest.approx(28.2)  # the screen trial it re-runs ...
    assert r["screen"]["mean"] == pytest.approx(28.3) and r["screen"]["n_seeds"] == 2  # ... and both screen runs
    assert (r["full"]["mean"], r["full"]["std"], r["full"]["n_seeds"]) == (
        pytest.approx(11.4), pytest.approx(0.1), 3)
    k1 = rows["K=1"]
    assert k1["confirm_rank"] == 0 and k1["screen"]["mean"] == pytest.approx(np.mean(SCREEN_K1))
    assert k1["screen"]["n_seeds"] == 6 and k1["full"]["mean"] == pytest.approx(12.1)
    # Spearman over the five confirmed configurations, by hand: screen (pooled) vs full-length means
    screen = [r["screen"]["mean"] for r in ft["rows"]]
    full = [r["full"]["mean"] for r in ft["rows"]]
    d = _ranks(screen) - _ranks(full)
    assert ft["spearman"]["n"] == 5 and ft["spearman"]["rho"] == pytest.approx(1 - 6 * (d**2).sum() / (5 * 24))
    assert ft["spearman"]["rho"] == pytest.approx(0.9)
    # its p counts pairings: of the 5! = 120, 10 give |rho| >= 0.9 (the identity and 4 adjacent swaps, each way),
    # not the t approximation's 0.037
    assert ft["spearman"]["method"] == "exact" and ft["spearman"]["p"] == pytest.approx(10 / 120)
    assert ft["screen_winner"] == "K=4, a=0.9, b=1" and ft["full_winner"] == "K=4, a=0.7, b=1"
    assert ft["same_winner"] is False and ft["screen_winner_confirmed"]
    full_h, screen_h = ft["headlines"]["full"], ft["headlines"]["screen"]
    assert full_h["comparison"]["delta"] == pytest.approx(0.7) and full_h["candidates"] == 4
    assert full_h["comparison"]["p"] == pytest.approx(
        __import__("scipy").stats.ttest_ind(FULL["K=1"], FULL[0.7], equal_var=False).pvalue)
    assert full_h["verdict"].startswith("B-DENSE helps")
    assert screen_h["best"]["config"] == "K=4, a=0.9, b=1" and screen_h["comparison"]["method"] == "prediction"
    assert ft["settings"]["screen"].startswith("80 iterations") and ft["settings"]["full"].startswith("1560 iterations")
    assert "seeds 100, 101, 102 (1 per trial)" in ft["settings"]["full"]
    assert "AFS on" in ft["settings"]["full"] and "S = 4" in ft["settings"]["full"] and "lr 0.0001" in ft["settings"]["full"]
    # the headline moves to full length once full-length trials completed
    assert summary.headline_fidelity(trials) == "full"
    h = summary.headline(trials)
    assert [(r["nfe"], r["fidelity"]) for r in h] == [(2, "full")]
    assert h[0]["bdense"]["config"] == "K=4, a=0.7, b=1" and h[0]["candidates"] == 4
    # the screen's Figure 4 and a-b fit never mix in full-length FIDs
    assert set(fit.ab_candidates(trials)["value"]) <= {f for _, f in SCREEN_K4} | {SCREEN_UNIFORM}


def test_paired_table_pairs_the_seeds_a_configuration_shares_with_k1():
    from scipy import stats

    from analysis.paired import paired_table, paired_tables

    trials = trials_frame(confirm_study())
    # the fixture's configurations sit a constant offset from K = 1 on every seed: give one of them a spread
    a07 = [11.3, 12.3, 11.7]  # seed 101 worse than K = 1's 12.2
    rows_07 = trials.index[(trials["fidelity"] == "full") & (trials["a_eff"] == 0.7)]
    for i, v in zip(rows_07, a07):
        trials.at[i, "fid_seeds"], trials.at[i, "fid"], trials.at[i, "value"] = [v], v, v
    rows = {r["config"]: r for r in paired_table(trials, 2, "full")}
    assert set(rows) == {"K=4, a=0.9, b=1", "K=4, a=0.7, b=1", "K=4, a=0.5, b=1", "K=4, a=0, b=1"}
    r = rows["K=4, a=0.7, b=1"]
    assert r["seeds"] == FULL_SEEDS and r["n"] == 3 and r["comparisons"] == 4
    assert r["diffs"] == pytest.approx([k - c for k, c in zip(FULL["K=1"], a07)])
    assert r["positive"] == 2 and r["mean"] == pytest.approx((0.7 - 0.1 + 0.4) / 3)
    assert r["p"] == pytest.approx(stats.ttest_rel(FULL["K=1"], a07).pvalue)
    assert r["beyond_noise"] == (r["p"] < 0.05 / 4)
    same = rows["K=4, a=0.9, b=1"]  # 0.4 better on every seed: no spread, no p, never "beyond noise"
    assert same["diffs"] == pytest.approx([0.4] * 3) and math.isnan(same["p"]) and not same["beyond_noise"]
    # the screen's configurations share no seed with K = 1 (other seeds, one each): nothing to pair
    assert paired_table(trials, 2, "screen") == []
    assert [(t["nfe"], t["fidelity"]) for t in paired_tables(trials)] == [(2, "full")]


def test_a_kid_study_is_tabled_and_fitted_by_fid():
    from analysis.fidelity import fidelity_table

    trials = trials_frame(confirm_study(objective="kid"))
    rows = {r["config"]: r for r in fidelity_table(trials)["rows"]}
    assert rows["K=4, a=0.7, b=1"]["screen_trial_fid"] == pytest.approx(28.2)  # its FID, not its KID
    f = fit.fit_ab_relation(trials, quantile=0.5, k=4)
    best_by_fid = sorted(SCREEN_K4, key=lambda af: af[1])[:f.n]
    assert sorted(f.trial_numbers) == sorted(trials.set_index("fid").loc[[x for _, x in best_by_fid], "number"])
    assert f.fid_threshold == pytest.approx(max(x for _, x in best_by_fid))  # the worst FID among them


def test_noise_marks_and_replicate_band_on_the_screen():
    trials = trials_frame(confirm_study())
    band = summary.replicate_band(trials)
    assert band["n_runs"] == 6 and band["n_seeds"] == 6
    assert band["mean"] == pytest.approx(np.mean(SCREEN_K1)) and band["sd"] == pytest.approx(np.std(SCREEN_K1, ddof=1))
    assert (band["min"], band["max"]) == (29.8, 30.3)
    ranked = summary.configurations(trials)
    assert list(ranked["rank"]) == list(range(1, 8)) and (ranked["comparisons"] == 7).all()
    by_a = {round(r.a, 3): r for r in ranked.itertuples()}
    assert by_a[0.7].n_seeds == 2 and by_a[0.7].mean == pytest.approx(28.3)
    # against K=1 (6 seeds, s.d. 0.179): prediction interval for single seeds, Bonferroni over 7
    assert {a: by_a[a].direction for a in by_a} == {0.9: "lower", 0.7: "lower", 0.5: "lower", 0.3: "",
                                                    0.1: "", 0.0: "higher", -0.5: "higher"}
    s = np.std(SCREEN_K1, ddof=1)
    t = (np.mean(SCREEN_K1) - 29.4) / (s * math.sqrt(1 + 1 / 6))
    from scipy import stats

    assert by_a[0.3].p == pytest.approx(2 * stats.t.sf(t, 5)) and 0.05 / 7 < by_a[0.3].p < 0.05


def test_figure_4_with_one_k1_run_draws_its_line_and_says_there_is_no_band():
    """One K=1 screen run has no s.d.: the ranking panel draws its FID as a line and says that a noise band
    needs K=1 replicates, instead of a zero-width band labelled "± nan"."""
    import matplotlib.pyplot as plt

    from analysis.figures import plot_ab_vs_fid

    trials = trials_frame(confirm_study())
    k1_screen = trials.index[(trials["K"] == 1) & (trials["fidelity"] == "screen")]
    one = trials.drop(k1_screen[1:])
    labels = [t.get_text() for ax in plot_ab_vs_fid(one).axes for leg in [ax.get_legend()] if leg for t in leg.get_texts()]
    plt.close("all")
    assert any("one run: no noise band" in t for t in labels) and not any("nan" in t for t in labels), labels
    labels = [t.get_text() for ax in plot_ab_vs_fid(trials).axes for leg in [ax.get_legend()] if leg for t in leg.get_texts()]
    plt.close("all")
    assert any(t.startswith("K=1 replicates: ") and "(6 runs, 6 seeds" in t for t in labels), labels


def test_the_summary_counts_completed_trials_by_device():
    """A study resumed on other machines mixes cards: the report says how many completed trials ran where (the
    trials' "device" attribute), and "not recorded" for trials from before it existed."""
    from analysis.report import build_summary

    trials = trials_frame(confirm_study())
    done = trials[trials["state"] == "COMPLETE"]
    assert build_summary("confirm", "mem", trials, None, None, 5)["devices"] == {"not recorded": len(done)}
    labels = np.where(trials["number"] % 3 == 0, "cuda:0 (NVIDIA H100 80GB HBM3)",
                      np.where(trials["number"] % 3 == 1, "cuda:1 (NVIDIA H200)", None))
    mixed = trials.assign(device=labels)
    kept = mixed[mixed["state"] == "COMPLETE"]["number"] % 3
    assert build_summary("confirm", "mem", mixed, None, None, 5)["devices"] == {
        "cuda:0 (NVIDIA H100 80GB HBM3)": int((kept == 0).sum()), "cuda:1 (NVIDIA H200)": int((kept == 1).sum()),
        "not recorded": int((kept == 2).sum())}


def test_report_of_a_confirm_study_has_the_fidelity_table_and_noise(tmp_path):
    from analysis.report import make_report

    storage = optuna.storages.InMemoryStorage()
    confirm_study(storage=storage)
    rep = make_report("confirm", storage, tmp_path / "r", log_to_mlflow=False)
    made = {f.name for f in rep.figures if f.made}
    assert {"ab_vs_fid", "fid_vs_k", "baseline_vs_bdense", "fidelity"} <= made
    for name in ("ab_vs_fid", "fidelity"):
        _assert_image(tmp_path / "r" / f"{name}.png")
    md = (tmp_path / "r" / "summary.md").read_text()
    assert re.search(r"^\| 2 \| full \| 12\.1 ± 0\.1 \| 3 \(3\) \| 11\.4 ± 0\.1 \| 3 \(3\) \| K=4, a=0\.7, b=1 \|", md, re.M)
    assert "## Screen vs full length (NFE=2)" in md and "**ρ = 0.900** over n = 5 configurations (two-sided p = 0.083, exact, over every pairing)" in md
    assert "full-length winner: K=4, a=0.7, b=1: **not the same**" in md
    assert re.search(r"^\| full \| 12\.1 ± 0\.1 \| 3 \(3\) \| 11\.4 ± 0\.1 \| 3 \(3\) \| K=4, a=0\.7, b=1 \|", md, re.M)
    assert re.search(r"^\| screen \| 30 ± 0\.179 \| 6 \(6\) \| 28 \| 1 \(1\) \| K=4, a=0\.9, b=1 \|", md, re.M)
    assert "Bonferroni over m = 7 comparisons: 3 lower and 2 higher than K=1 beyond noise" in md
    assert md.count("▼ lower") == 3 and md.count("▲ higher") == 2
    # the seed-paired reading: the fixture's configurations sit a constant offset from K = 1 on each shared seed
    assert "## Paired by seed" in md and "**NFE=2, full length**" in md
    assert re.search(r"^\| K=4, a=0\.7, b=1 \| 100, 101, 102 \| \+0\.70, \+0\.70, \+0\.70 \| \+0\.7 ± .* \| 3 of 3 \| no spread \| no \|",
                     md, re.M)
    assert "Training, full length: 1560 iterations; seeds 100, 101, 102 (1 per trial); AFS on; S = 4; batch 64; " \
           "lr 0.0001; teacher paths: seed bank." in md
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["headline_fidelity"] == "full" and s["noise"]["screen"]["n_runs"] == 6
    assert s["noise"]["full"]["n_runs"] == 3 and s["fidelity"]["same_winner"] is False


def test_report_says_when_k1_has_no_full_length_trial_yet(tmp_path):
    """A confirmation stopped before its K = 1 baseline ran (the campaign's PD studies after session 12): the
    lowest full-length FID is not 'of all, K = 1 included', and the full-length headline has no verdict."""
    from analysis.report import make_report

    partial, whole = optuna.storages.InMemoryStorage(), optuna.storages.InMemoryStorage()
    confirm_study(unconfirmed=("K=1",), storage=partial)
    make_report("confirm", partial, tmp_path / "r", log_to_mlflow=False)
    md = (tmp_path / "r" / "summary.md").read_text()
    assert "K=1 included" not in md
    assert "Lowest full-length FID (K=1 has no full-length trial yet): K=4, a=0.7, b=1 at 11.4 (3 seeds)" in md
    assert re.search(r"^\| full \| n/a \| 0 \(0\) \| 11\.4 ± 0\.1 \| 3 \(3\) \| K=4, a=0\.7, b=1 \| n/a \|", md, re.M)
    confirm_study(storage=whole)
    make_report("confirm", whole, tmp_path / "all", log_to_mlflow=False)
    assert "Lowest full-length FID of all (K=1 included): K=4, a=0.7, b=1" in (tmp_path / "all" / "summary.md").read_text()


# --------------------------------------------------------------------------------------- the b question
def b_study(fids_by_b: dict[float, list[float]]) -> pd.DataFrame:
    study = optuna.create_study()
    study.set_user_attr("nfe", 2)
    for i, f in enumerate([30.0, 30.2, 29.9]):
        study.add_trial(create_trial(params=_params(1, 0.0, 1.0), distributions=DISTS, value=f,
                                     user_attrs={"fid_seeds": [f], "seeds": [i], "role": "search",
                                                 "iterations": 80}))
    for b, fids in fids_by_b.items():
        study.add_trial(create_trial(params=_params(4, 0.9, b), distributions=DISTS, value=float(np.mean(fids)),
                                     user_attrs={"fid_seeds": fids, "seeds": [1000, 1001, 1002][:len(fids)],
                                                 "role": "ablation:b", "ablation": "b", "iterations": 80}))
    return trials_frame(study)


def _anova(groups):
    allv = np.concatenate(groups)
    ssb = sum(len(g) * (np.mean(g) - allv.mean()) ** 2 for g in groups)
    ssw = sum(((np.asarray(g) - np.mean(g)) ** 2).sum() for g in groups)
    dfb, dfw = len(groups) - 1, len(allv) - len(groups)
    return (ssb / dfb) / (ssw / dfw), dfb, dfw


def test_b_question_flat_and_dependent():
    from analysis.bgrid import b_question
    from analysis.report import build_summary, render_markdown

    flat = {0.1: [28.1, 28.4, 27.9], 1.0: [28.0, 28.3, 28.2], 10.0: [28.2, 27.9, 28.3]}
    trials = b_study(flat)
    bq = b_question(trials)
    assert [r["b"] for r in bq["rows"]] == [0.1, 1.0, 10.0] and bq["fixed"] and (bq["K"], bq["a"]) == (4, 0.9)
    assert [r["mean"] for r in bq["rows"]] == pytest.approx([np.mean(v) for v in flat.values()])
    F, dfb, dfw = _anova(list(flat.values()))
    assert bq["anova"]["F"] == pytest.approx(F) and (bq["anova"]["df_between"], bq["anova"]["df_within"]) == (dfb, dfw)
    assert bq["depends"] is False and len(bq["pairs"]) == 3 and {p["comparisons"] for p in bq["pairs"]} == {3}
    assert bq["verdict"].startswith("FID does not depend on b beyond noise at K = 4, a = 0.9")
    assert "not a parameter of the schedule" in bq["meaning"]
    md = render_markdown(build_summary("b", "mem", trials, None, "n/a", 15), [])
    assert "## The b question" in md and "| 0.1 | 4 | 0.9 | 28.13 ± 0.252 | 3 (1) |" in md
    assert f"F(2, 6) = {F:.3g}" in md

    steep = b_question(b_study({0.1: [31.0, 31.2, 30.9], 1.0: [28.0, 28.3, 28.2], 10.0: [26.2, 25.9, 26.1]}))
    assert steep["depends"] is True and steep["verdict"].startswith("FID depends on b")
    assert sum(p["beyond_noise"] for p in steep["pairs"]) == 3
    single = b_question(b_study({0.1: [28.0], 1.0: [28.1]}))
    assert single["anova"] is None and single["depends"] is None and single["verdict"].startswith("cannot tell")
    assert b_question(trials[trials["role"] != "ablation:b"]) is None


# ------------------------------------------------------------------------------ settings and PD rounds
def test_settings_say_when_they_differ_and_pd_rounds():
    study = optuna.create_study()
    study.set_user_attr("nfe", 2)
    for i, (it, dist, rounds) in enumerate([(150, "state", [30.0, 20.0, 10.0]), (150, "state", [31.0, 21.0, 11.0]),
                                            (300, "x", [29.0, 19.0])]):
        study.add_trial(create_trial(params=_params(2, 0.0, 1.0), distributions=DISTS, value=rounds[-1],
                                     user_attrs={"fid_seeds": [rounds[-1]], "seeds": [i], "role": "search",
                                                 "framework": "pd", "iterations": it, "distance": dist,
                                                 "batch_size": 128, "lr": 2e-4, "fid_rounds": rounds}))
    trials = trials_frame(study)
    st = summary.settings(trials)
    assert st["iterations"] == [(150, 2), (300, 1)] and st["distance"] == [("state", 2), ("x", 1)]
    assert st["text"] == ("iterations DIFFERS: 150 (2 trials), 300 (1 trial); seeds 0, 1, 2 (1 per trial); "
                          "PD distance DIFFERS: state (2 trials), x (1 trial); batch 128; lr 0.0002")
    rt = summary.round_table(trials)
    assert list(rt["round"]) == [1, 2, 3] and list(rt["n"]) == [3, 3, 2] and list(rt["trials"]) == [3, 3, 2]
    assert set(rt["verdict"]) == {"no K=1 trial at this round"}
    assert list(rt["mean"]) == pytest.approx([30.0, 20.0, 10.5]) and rt["std"].iloc[2] == pytest.approx(math.sqrt(0.5))
    from analysis.report import build_summary, render_markdown

    md = render_markdown(build_summary("pd", "mem", trials, None, "n/a", 15), [])
    assert "## Progressive distillation: FID after every round" in md
    assert "| K=2, a=0, b=1 | 2 | screen | 3 | 10.5 ± 0.707 | 2 (2) | no K=1 trial at this round |" in md
    assert f"Training: {st['text']}." in md


def test_pd_rounds_pool_by_seed_and_judge_each_round_against_k1():
    """Each round's table row pools seeds as the headline does (a 3-seed trial's per-seed FIDs count as 3 values;
    an older multi-seed trial without them counts once), and each K>1 configuration is judged against K=1 after
    the same round and at the same fidelity: Welch's t (both sides 2+ seeds) or one new seed's prediction interval,
    Bonferroni over the K>1 configurations of that round; the screen's single runs are judged apart."""
    from scipy import stats

    study = optuna.create_study()
    study.set_user_attr("nfe", 8)
    k1 = {1000: [6.0, 6.4, 8.3], 1001: [6.1, 6.5, 8.1], 1002: [5.9, 6.3, 8.2]}
    best = [[6.05, 6.45, 8.43], [6.0, 6.5, 8.05], [6.1, 6.4, 8.14]]
    def add(params, seeds, rounds, fidelity, per_seed=None):
        attrs = {"seeds": seeds, "role": "confirm" if fidelity == "full" else "search", "framework": "pd",
                 "fidelity": fidelity, "nfe": 8, "fid_rounds": rounds, "fid_seeds": [rounds[-1]] * len(seeds)}
        if per_seed is not None:
            attrs["fid_rounds_seeds"] = per_seed
            attrs["fid_seeds"] = [x[-1] for x in per_seed]
        study.add_trial(create_trial(params=params, distributions=DISTS, value=rounds[-1], user_attrs=attrs))
    add(_params(2, 0.9, 0.68), [1000, 1001, 1002], list(np.mean(best, axis=0)), "full", per_seed=best)
    for seed, rounds in k1.items():  # K=1 after a K=2 trial: the table still lists it first
        add(_params(1, 0.0, 1.0), [seed], rounds, "full")
    add(_params(2, 0.0, 1.0), [1000, 1001], [7.0, 9.0, 12.0], "full")  # before fid_rounds_seeds: its mean, once
    add(_params(2, 0.9, 0.68), [0], [5.74, 6.52, 9.15], "screen")
    add(_params(1, 0.0, 1.0), [0], [5.67, 6.14, 8.2], "screen")
    rt = summary.round_table(trials_frame(study)).set_index(["config", "fidelity", "round"])
    assert len(rt) == 5 * 3
    # each (NFE, fidelity) block: the baseline first, then the other configurations in the order trials show them
    assert [(c, f) for c, f, r in rt.index if r == 1] == [
        ("K=1", "full"), ("K=2, a=0.9, b=0.68", "full"), ("K=2, a=0, b=1", "full"),
        ("K=1", "screen"), ("K=2, a=0.9, b=0.68", "screen")]

    k1_r3 = [v[2] for v in k1.values()]
    b = rt.loc[("K=2, a=0.9, b=0.68", "full", 3)]
    assert (b["n"], b["trials"]) == (3, 1) and b["mean"] == pytest.approx(np.mean([x[2] for x in best]))
    assert b["std"] == pytest.approx(np.std([x[2] for x in best], ddof=1))
    welch = stats.ttest_ind(k1_r3, [x[2] for x in best], equal_var=False)
    assert b["p"] == pytest.approx(welch.pvalue, rel=1e-6)
    assert b["verdict"].startswith("no difference beyond noise") and "2 comparisons" in b["verdict"]

    u = rt.loc[("K=2, a=0, b=1", "full", 1)]
    assert (u["n"], u["trials"], u["mean"]) == (1, 1, 7.0)
    k1_r1 = [v[0] for v in k1.values()]
    t = (np.mean(k1_r1) - 7.0) / (np.std(k1_r1, ddof=1) * math.sqrt(1 + 1 / 3))
    assert u["p"] == pytest.approx(2 * stats.t.sf(abs(t), df=2), rel=1e-6)
    assert u["p"] < 0.05 / 2 and u["direction"] == "higher" and u["verdict"].startswith("B-DENSE hurts")

    base = rt.loc[("K=1", "full", 2)]
    assert (base["n"], base["verdict"]) == (3, "the baseline") and base["mean"] == pytest.approx(6.4)
    screen = rt.loc[("K=2, a=0.9, b=0.68", "screen", 3)]
    assert screen["n"] == 1 and screen["verdict"] == "B-DENSE higher by 0.95 FID; no spread to judge it by"
    from analysis.report import build_summary, render_markdown  # the screen's ranking says the same, not "within noise"

    md = render_markdown(build_summary("pd", "mem", trials_frame(study), None, "n/a", 15), [])
    assert "| 1 | K=2, a=0.9, b=0.68 | 9.15 | n/a | 1 (1) | 5 | -0.95 | n/a | no spread to judge it by |" in md


def test_compare_gives_each_nfes_change_and_names_what_else_differs(capsys):
    """The published NFE study against a copy with every FID 1.5 higher, trained longer on another teacher: each
    NFE's baseline and best move by +1.5, the best configuration and the verdicts stay, and the table says that
    training length and teacher differ; bad input is one line, exit 2."""
    from analysis.compare import compare_headlines, main

    journal = Path(__file__).resolve().parents[1] / "results" / "fmnist-sfd-nfe2" / "optuna-journal.log"
    published = load_study(str(journal), "fmnist-sfd-nfe2")
    shifted = optuna.create_study(study_name="shifted")
    for key, value in published.user_attrs.items():
        shifted.set_user_attr(key, value)
    for t in published.get_trials(states=[TrialState.COMPLETE]):
        attrs = dict(t.user_attrs, teacher_key="newteacher", iterations=1563)
        for name in ("fid", "fid_seeds"):
            if name in attrs:
                attrs[name] = [v + 1.5 for v in attrs[name]] if isinstance(attrs[name], list) else attrs[name] + 1.5
        shifted.add_trial(create_trial(params=t.params, distributions=t.distributions, value=t.value + 1.5,
                                       user_attrs=attrs, system_attrs=t.system_attrs))
    rows = compare_headlines(trials_frame(published), trials_frame(shifted))
    assert [r["nfe"] for r in rows] == [2, 3, 4, 5]
    for r in rows:
        assert r["baseline_change"] == pytest.approx(1.5) and r["best_change"] == pytest.approx(1.5)
        assert r["best_config_changed"] is False and r["verdict_changed"] is False
        assert r["confounded"] == ["training length", "teacher"]
        assert r["old"]["iterations"] == [80] and r["new"]["teachers"] == ["newteacher"]

    assert main(["--old", str(journal), "fmnist-sfd-nfe2", "--new", str(journal), "fmnist-pd"]) == 0
    text = capsys.readouterr().out
    assert "| 8 | training | — | screen, 150 it., teacher e6234eed360d | only in the new study |" in text
    assert main(["--old", str(journal), "nope", "--new", str(journal), "fmnist-pd"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no study named 'nope'" in err


def test_provenance_names_each_fidelitys_length_and_seeds_the_samples_and_the_machines():
    from analysis.summary import machine_of, provenance

    rows = [dict(number=0, state="COMPLETE", fidelity="screen", iterations=80, seeds=[0], device="cuda:0 (NVIDIA H100)"),
            dict(number=1, state="COMPLETE", fidelity="screen", iterations=80, seeds=[0], device=None),
            dict(number=2, state="COMPLETE", fidelity="full", iterations=1563, seeds=[1000, 1001, 1002],
                 device="cuda:1 (NVIDIA H200)"),
            dict(number=3, state="COMPLETE", fidelity="full", iterations=1563, seeds=[1000, 1001, 1002],
                 device="cuda:0 (NVIDIA H200)"),
            dict(number=4, state="FAIL", fidelity="full", iterations=1563, seeds=[1003], device="cpu")]
    trials = pd.DataFrame(rows).assign(value=[22.0, 21.5, 16.5, 16.0, float("nan")])
    trials.attrs["study"] = {"fid_samples": 10000}
    assert provenance(trials) == ("screen (2): 80 iterations; seeds 0 (1 per trial); full (2): "
                                  "1563 iterations; seeds 1000, 1001, 1002 (3 per trial); FID on 10,000 samples; "
                                  "machines: NVIDIA H200 (2), NVIDIA H100 (1), not recorded (1)")
    assert machine_of("cpu") == "cpu" and machine_of(float("nan")) == "not recorded"


def test_each_figure_draws_from_its_own_trials():
    """drawn_trials: Figure 4 and FID vs K the screen at the study's NFE, the headline figure each NFE's headline
    fidelity, the nfe grid its own trials only, another ablation its trials and the screen's K = 1 band."""
    from analysis.summary import drawn_trials, provenance

    def row(n, fid, nfe, k, role, seeds, device=None, value=20.0):
        return dict(number=n, state="COMPLETE", value=value, fidelity=fid, nfe=nfe, K=k, a=0.5 if k > 1 else None,
                    b=1.0 if k > 1 else None, weights_mode="exp", role=role, seeds=seeds,
                    iterations=80 if fid == "screen" else 1563, device=device)
    trials = pd.DataFrame([
        row(0, "screen", 2, 1, "baseline-k1", [0]), row(1, "screen", 2, 4, "search", [0]),
        row(2, "full", 2, 1, "confirm", [1000], "cuda:0 (NVIDIA H200)"),
        row(3, "full", 2, 4, "confirm", [1000], "cuda:0 (NVIDIA H200)", 19.0),
        row(4, "full", 3, 1, "ablation:nfe", [1000, 1001, 1002], "cuda:1 (NVIDIA H200)", 12.8),
        row(5, "full", 3, 4, "ablation:nfe", [1000, 1001, 1002], "cuda:0 (NVIDIA H200)", 12.2),
        row(6, "screen", 2, 4, "ablation:k", [1000], "cuda:0 (NVIDIA H100)"),
    ])
    trials.attrs["study"] = {"nfe": 2, "fid_samples": 10000}
    numbers = lambda fig: sorted(drawn_trials(trials, fig)["number"])  # noqa: E731
    assert numbers("ab_vs_fid") == numbers("fid_vs_k") == [0, 1, 6]
    assert numbers("baseline_vs_bdense") == [2, 3, 4, 5]  # NFE 2 and NFE 3 at their headline fidelity: full
    assert numbers("ablation_nfe") == [4, 5] and numbers("ablation_k") == [0, 6]
    assert numbers("optuna_history") == list(range(7))
    assert provenance(drawn_trials(trials, "ablation_nfe")) == (
        "full (2): 1563 iterations; seeds 1000, 1001, 1002 (3 per trial); FID on 10,000 samples; "
        "machines: NVIDIA H200 (2)")

