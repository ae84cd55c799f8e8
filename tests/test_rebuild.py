"""study/rebuild.py: a study exported by the real report code (trials.csv + summary.json) and rebuilt into a new
storage reads back the same: the same trials frame, the same best configuration, the same report numbers, and a
resume of study/run.py accepts it. Built on tests/test_analysis.py's screen-then-confirm fixture, written the way
the driver writes trials (K = 1 without params), plus pruned and failed trials and an NFE-grid trial."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from test_analysis import confirm_study

from analysis.load import load_study, trials_frame
from analysis.report import build_summary, make_report
from study import run
from study.cli import parse_config
from study.designs import best_bdense_params
from study.storage import open_storage

ROOT = Path(__file__).resolve().parents[1]
ARGV = ["--preset", "tiny", "--k", "4", "--a-range", "-1", "1", "--objective", "fid"]
DISTS = {"K": CategoricalDistribution([4]), "a": FloatDistribution(-1.0, 1.0), "b": FloatDistribution(0.1, 10.0, log=True)}


def _rebuild(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study.rebuild", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(config, original study, report folder): the fixture as the driver writes it, in a journal, reported."""
    root = tmp_path_factory.mktemp("rebuild")
    cfg = parse_config(ARGV + ["--runs-dir", str(root / "runs")])
    study = optuna.create_study(study_name=cfg.study_name, storage=open_storage(f"journal:{root / 'orig.log'}"))
    for k, v in {"compat": cfg.compatibility(), "preset": "tiny", "framework": "sfd", "nfe": cfg.nfe, "k_choices": [1, 4],
                 "weights_mode": "exp", "fid_samples": 64, "teacher_key": cfg.preset.teacher.key, "objective": "fid",
                 "mlflow_uri": f"sqlite:///{root / 'gone.db'}"}.items():
        study.set_user_attr(k, v)
    for t in confirm_study().trials:  # K = 1 carries K as a user attribute, no params (study/space.py)
        k1 = t.params["K"] == 1
        study.add_trial(create_trial(value=t.value, params={} if k1 else t.params, distributions={} if k1 else DISTS,
                                     user_attrs={**t.user_attrs, "mlflow_run_id": f"{t.number:032x}", "hostname": "20261127",
                                                 **({"K": 1} if k1 else {})}))
    common = {"role": "search", "fidelity": "screen", "seeds": [0], "nfe": 2, "afs": True, "iterations": 80}
    study.add_trial(create_trial(state=TrialState.PRUNED, value=0.081, params={"K": 4, "a": 0.2, "b": 3.0},
                                 distributions=DISTS, intermediate_values={40: 0.081},
                                 user_attrs={**common, "fail_reason": "pruned at step 40: endpoint_l1 0.081"}))
    study.add_trial(create_trial(state=TrialState.FAIL, params={"K": 4, "a": -0.3, "b": 0.5}, distributions=DISTS,
                                 user_attrs={**common, "fail_reason": "loss became NaN at step 2"}))
    study.add_trial(create_trial(value=25.0, user_attrs={**common, "K": 1, "role": "ablation:nfe", "nfe": 3, "ablation": "nfe",
                                                         "ablation_config": "NFE=3 K=1", "seeds": [1000, 1001],
                                                         "fid_seeds": [24.9, 25.1], "fid": 25.0, "fid_std": 0.14}))
    make_report(cfg.study_name, f"journal:{root / 'orig.log'}", root / "report", log_to_mlflow=False)
    return cfg, study, root


def test_a_rebuilt_study_reads_back_the_same_and_resumes(exported, tmp_path):
    cfg, original, root = exported
    res = _rebuild(str(root / "report"), "--runs-dir", str(tmp_path / "runs"))
    assert res.returncode == 0, res.stderr
    assert f"rebuilt study '{cfg.study_name}'" in res.stdout and "(30 complete, 1 pruned, 1 fail)" in res.stdout
    new_url = f"journal:{tmp_path / 'runs' / 'optuna-journal.log'}"  # the default: study/run.py's journal
    rebuilt = load_study(new_url, cfg.study_name)
    old, new = trials_frame(original), trials_frame(rebuilt)
    assert old["state"].value_counts().to_dict() == {"COMPLETE": 30, "PRUNED": 1, "FAIL": 1}
    pd.testing.assert_frame_equal(new, old)  # every column, the analysis's and the trials' own, with its type
    assert {k: v for k, v in new.attrs["study"].items() if k != "rebuilt_from"} == old.attrs["study"]
    assert "not recovered" in rebuilt.user_attrs["rebuilt_from"] and rebuilt.metric_names == ["FID"]
    assert isinstance(rebuilt.trials[-3].user_attrs["fail_reason"], str) and "fid" not in rebuilt.trials[-3].user_attrs
    assert rebuilt.trials[0].user_attrs["hostname"] == "20261127" and rebuilt.trials[0].user_attrs["mlflow_run_id"] == "0" * 32
    assert best_bdense_params(rebuilt) == best_bdense_params(original) == {"K": 4, "a": 0.7, "b": 1.0}
    old_s, new_s = (build_summary(cfg.study_name, "s", df, None, None, 15) for df in (old, new))
    for key in ("headline", "ranking", "fidelity", "paired", "ablations", "noise", "states"):
        assert json.dumps(new_s[key], default=str) == json.dumps(old_s[key], default=str), key
    # study/run.py resumes it: its resume check passes and a grid takes the same best configuration
    resume = parse_config(ARGV + ["--runs-dir", str(tmp_path / "runs"), "--n-trials", "0", "--ablation", "b"])
    run.check_resume(resume, open_storage(new_url))
    study = optuna.load_study(study_name=cfg.study_name, storage=open_storage(new_url))
    assert run.plan_work(study, resume) == 3
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.system_attrs["fixed_params"]["b"] for t in waiting) == [0.1, 1.0, 10.0]
    assert {t.system_attrs["fixed_params"]["a"] for t in waiting} == {0.7}
    trial = study.ask()  # the first queued trial, then the search's own distributions
    assert trial.suggest_float("a", -1.0, 1.0) == 0.7


def test_bad_input_is_one_line_and_status_2(exported, tmp_path):
    cfg, _, root = exported
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "summary.json").write_text((root / "report" / "summary.json").read_text())
    rows = (root / "report" / "trials.csv").read_text().splitlines()
    head = rows[0].split(",")
    cells = rows[1].split(",")
    cells[head.index("value")] = ""  # a complete trial without a value
    (bad / "trials.csv").write_text("\n".join([rows[0], ",".join(cells), *rows[2:]]) + "\n")
    twice = tmp_path / "twice.log"
    assert _rebuild(str(root / "report"), "--storage", str(twice)).returncode == 0
    for args, words in [((str(tmp_path / "missing"),), "is not a report"),
                        ((str(root / "report"), "--storage", str(twice)), "already exists"),
                        ((str(bad), "--storage", str(tmp_path / "new.log")), "row 2 (trial 0) cannot be rebuilt")]:
        res = _rebuild(*args)
        assert res.returncode == 2, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and words in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "new.log").exists()  # an unusable report leaves no storage behind


# ------------------------------------------------------------------- the campaign's next chains
CAMPAIGN = Path(__file__).resolve().parents[1] / "results" / "fmnist-campaign"
PUBLISHED = ("report-2026-11-27", "report-pd-x-2026-11-29", "report-pd-state-2026-11-29")


def chain_study_commands(text: str) -> list[list[str]]:
    """The study/run.py options of every ``scripts/gpu/study.sh`` command in a chain, its variables expanded and
    the machine's own options (--device, --devices, --workers) left out."""
    import re
    import shlex

    variables = dict(re.findall(r'^(\w+)="([^"]*)"', text, re.M))
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        if "scripts/gpu/study.sh" not in line or line.lstrip().startswith("#") or " -- " not in line:
            continue
        for group in re.split(r" ---? ", line.split(" -- ", 1)[1]):
            argv = shlex.split(re.sub(r"\$(\w+)", lambda m: variables.get(m.group(1), m.group(0)), group))
            keep, skip = [], False
            for a in argv:
                if skip:
                    skip = False
                elif a in ("--device", "--devices", "--workers"):
                    skip = True
                else:
                    keep.append(a)
            out.append(keep)
    return out


@pytest.fixture(scope="module")
def campaign_runs(tmp_path_factory) -> Path:
    """The campaign's run folder as a session rebuilds it from the published reports."""
    runs = tmp_path_factory.mktemp("campaign") / "runs"
    for report in PUBLISHED:
        res = _rebuild(str(CAMPAIGN / report), "--runs-dir", str(runs))
        assert res.returncode == 0, res.stderr[-2000:]
    return runs


@pytest.mark.parametrize("chain", ["call-11.sh", "call-12.sh", "call-14.sh"])
def test_the_next_chains_resume_the_published_campaign_studies(chain, campaign_runs, monkeypatch):
    """A chain's study commands must resume the studies a session rebuilds from the published reports (same name,
    same settings): a typo there would start a new study on the GPU, or stop at exit 2 there, and cost the session."""
    monkeypatch.setenv("BDENSE_RUNS_DIR", str(campaign_runs))
    storage = open_storage(f"journal:{campaign_runs / 'optuna-journal.log'}")
    names = set(optuna.get_all_study_names(storage))
    commands = chain_study_commands((CAMPAIGN / chain).read_text())
    assert commands, f"{chain} runs no study"
    for argv in commands:
        config = parse_config(argv)
        assert config.study_name in names, (chain, argv, config.study_name, names)
        run.check_resume(config, storage)  # a UsageError here is the exit 2 the GPU machine would have given
