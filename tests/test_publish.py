"""analysis.publish: a run folder's stores, compacted and made relocatable, still open in MLflow and Optuna."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from analysis.publish import main, publish, relative_artifact_uri


def _make_runs(root: Path) -> tuple[str, Path]:
    import mlflow
    import optuna

    runs = root / "runs"
    runs.mkdir(parents=True)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(runs / "optuna-journal.log")))
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(lambda t: t.suggest_float("a", -1, 1) ** 2, n_trials=3)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")
    exp = client.create_experiment("s", artifact_location=(runs / "mlartifacts" / "s").as_uri())
    run = client.create_run(exp, run_name="trial-0000")
    for step in range(500):
        client.log_metric(run.info.run_id, "loss", 1.0 / (step + 1), step=step)
    client.log_metric(run.info.run_id, "fid", 22.5)
    grey = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
    png = root / "samples.png"
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(png)
    client.log_artifact(run.info.run_id, str(png))
    client.set_terminated(run.info.run_id)
    return run.info.run_id, runs


def test_relative_artifact_uris():
    assert relative_artifact_uri("file:///tmp/bd/runs/mlartifacts/e/r/artifacts") == "mlartifacts/e/r/artifacts"
    assert relative_artifact_uri("/home/x/mlartifacts") == "mlartifacts"
    assert relative_artifact_uri("s3://bucket/run") == "s3://bucket/run"
    assert relative_artifact_uri(None) is None


def test_published_store_is_compact_and_opens_from_its_folder(tmp_path, monkeypatch):
    import mlflow
    import optuna

    run_id, runs = _make_runs(tmp_path)
    out = tmp_path / "published"
    done = publish(runs, out, max_points=40)
    assert done.runs == 1 and done.metric_rows_before == 501
    shutil.rmtree(runs)  # the published folder must not point back at the run folder

    steps = [r[0] for r in sqlite3.connect(out / "mlflow.db").execute(
        "SELECT step FROM metrics WHERE key = 'loss' ORDER BY step")]
    assert 40 <= len(steps) <= 41 and steps[0] == 0 and steps[-1] == 499
    assert len(set(np.diff(steps[:-1]))) == 1  # evenly spaced

    monkeypatch.chdir(out)
    client = mlflow.MlflowClient(tracking_uri="sqlite:///mlflow.db")
    run = client.get_run(run_id)
    assert run.data.metrics == {"loss": pytest.approx(1 / 500), "fid": 22.5}
    assert run.info.artifact_uri.startswith("mlartifacts/")
    local = Path(client.download_artifacts(run_id, "samples.png", dst_path=str(tmp_path / "dl")))
    with Image.open(local) as im:
        assert im.mode == "L" and np.asarray(im)[0, 15] == 240

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend("optuna-journal.log"))
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 3


def test_a_folder_without_stores_is_one_line_error(tmp_path, capsys):
    assert main(["--runs", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--runs-dir" in err and "\n" not in err
