"""study/tracking.py: experiments made for model training with a saved trials view, and trial runs named by what
researchers sort by. Uses a real SQLite MLflow store."""

from __future__ import annotations

import json

import pytest

from study import tracking
from study.tracking import Tracker, runs_page_url, trial_run_name, trial_tags, trials_view_state

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def tracker(tmp_path):
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "mlartifacts")


def test_new_experiment_is_for_model_training_and_holds_the_trials_view(tracker):
    exp_id = tracker.use_experiment("bdense-x")
    tags = tracker.client.get_experiment(exp_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(tags["mlflow.sharedViewState.bdense-trials"])
    assert view["orderByKey"] == "metrics.`fid`" and view["orderByAsc"] is True
    assert view["searchFilter"] == "tags.`bdense.kind` = 'trial'"
    assert {"metrics.`fid`", "metrics.`kid`", "params.`K`", "params.`fitted_a`", "params.`fitted_b`",
            "params.`nfe`", "params.`iterations`"} <= set(view["selectedColumns"])
    assert "viewStateShareKey=bdense-trials" in tags["mlflow.note.content"]
    assert tracker.use_experiment("bdense-x") == exp_id  # found again, not duplicated


def test_existing_experiment_gets_missing_tags_and_keeps_a_users_choice(tracker):
    exp_id = tracker.client.create_experiment("old", tags={"mlflow.experimentKind": "genai_development"})
    assert tracker.use_experiment("old") == exp_id
    tags = tracker.client.get_experiment(exp_id).tags
    assert tags["mlflow.experimentKind"] == "genai_development"  # set by someone: kept
    assert "mlflow.sharedViewState.bdense-trials" in tags


def test_deleted_experiment_is_restored_with_its_tags(tracker):
    exp_id = tracker.use_experiment("gone")
    tracker.client.delete_experiment(exp_id)
    assert tracker.use_experiment("gone") == exp_id
    exp = tracker.client.get_experiment(exp_id)
    assert exp.lifecycle_stage == "active" and exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_trial_run_names_lead_with_the_score_and_carry_the_schedule():
    assert trial_run_name(17, 4, 0.9764, 1.2701, 2, 80) == "K=4 a=0.976 b=1.27 NFE2 80it #17"
    assert trial_run_name(17, 4, 0.9764, 1.2701, 2, 80, fid=23.3141) == "FID 23.31 K=4 a=0.976 b=1.27 NFE2 80it #17"
    assert trial_run_name(3, 2, 0.0, 1.0, 3, 40, fid=190.0, kid=0.01234) == "FID 190.00 KID 0.0123 K=2 a=0 b=1 NFE3 40it #3"
    assert trial_run_name(0, 1, 0.0, 1.0, 2, 40, fid=200.5) == "FID 200.50 K=1 baseline NFE2 40it #0"
    assert trial_run_name(5, 2, 0.1, 2.0, 2, 40, weights=[0.5, 2.25]) == "K=2 w=0.5,2.2 NFE2 40it #5"


def test_trial_tags_are_strings_for_search():
    tags = trial_tags(4, 0.976412, 1.2701, 2, 80, "search", teacher_key="abc")
    assert tags == {"K": "4", "a": "0.976412", "b": "1.2701", "nfe": "2", "iterations": "80", "role": "search",
                    "teacher_key": "abc"}


def test_trial_run_is_renamed_with_its_score_and_found_by_its_tags(tracker):
    tracker.use_experiment("s")
    parent = tracker.parent_run("s", None, {"preset": "tiny"})
    from bdense_core.schedule import BranchWeights
    from study.space import TrialPoint

    point = TrialPoint(4, BranchWeights(mode="exp", a=0.5, b=1.0))
    run = tracker.start_trial("s", parent, 0, point, "search", params=dict(nfe=2, iterations=6), teacher_key="t")
    assert tracker.client.get_run(run.run_id).info.run_name == trial_run_name(0, 4, 0.5, 1.0, 2, 6)
    assert tracker.client.get_run(run.run_id).data.tags["role"] == "search"
    run.rename(trial_run_name(0, 4, 0.5, 1.0, 2, 6, fid=12.345))
    run.finish("FINISHED")
    got = tracker.client.get_run(run.run_id)
    assert got.info.run_name == "FID 12.35 K=4 a=0.5 b=1 NFE2 6it #0"
    assert got.data.tags["mlflow.runName"] == got.info.run_name
    [found] = tracker.client.search_runs([tracker.experiment_id], "tags.K = '4' and tags.`bdense.kind` = 'trial'")
    assert found.info.run_id == run.run_id


def test_runs_page_url_opens_the_model_training_view_with_the_saved_columns():
    url = runs_page_url("http://127.0.0.1:5000/", "7")
    assert url == ("http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
                   "&viewStateShareKey=bdense-trials")
    assert tracking.VIEW_TAG.endswith(tracking.VIEW_KEY)
    assert trials_view_state(columns=(("metrics", "kid"),))["selectedColumns"] == ["metrics.`kid`"]
