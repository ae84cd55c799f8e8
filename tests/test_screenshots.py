"""scripts/dashboard_screenshot.py: optuna-dashboard on a study's storage, photographed in headless Chromium.

The fast tests pin how a storage as study/run.py takes it becomes optuna-dashboard's argument and how bad input
ends (one line, exit 2). The slow one serves a small real Optuna study (journal file and SQLite) and checks that
the PNG shows the dashboard with one history marker per trial.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "dashboard_screenshot.py"
HEADER_BLUE = (33, 150, 243)  # optuna-dashboard's app bar
MARKER_TEAL = (0, 204, 150)  # the history plot's trial markers (plotly's second colour)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _load_script():
    spec = importlib.util.spec_from_file_location("dashboard_screenshot", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _make_study(storage, name: str, n: int) -> None:
    """A real study: TPE over (K, a, b) on a known function, ``n`` complete trials."""
    study = optuna.create_study(study_name=name, storage=storage, sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(lambda t: 20 + t.suggest_categorical("K", [1, 2, 4]) * (t.suggest_float("a", -1, 1) - 0.5) ** 2
                   + abs(np.log(t.suggest_float("b", 0.1, 10, log=True))), n_trials=n)


def _journal(path: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


def test_storage_urls_become_optuna_dashboards_argument(tmp_path):
    mod = _load_script()
    journal = tmp_path / "optuna-journal.log"
    _make_study(_journal(journal), "s", 2)
    db = tmp_path / "optuna.db"
    _make_study(f"sqlite:///{db}", "s", 2)
    assert mod.dashboard_storage(f"journal:{journal}") == str(journal.resolve())
    assert mod.dashboard_storage(str(journal)) == str(journal.resolve())
    assert mod.dashboard_storage(f"sqlite:///{db}") == f"sqlite:///{db}"
    assert mod.dashboard_storage(str(db)) == f"sqlite:///{db.resolve()}"  # a SQLite file given as a path
    assert mod.dashboard_storage("postgresql://u:p@host/db") == "postgresql://u:p@host/db"
    for missing in (f"journal:{tmp_path / 'none.log'}", str(tmp_path / "none.log"), f"sqlite:///{tmp_path / 'x.db'}"):
        with pytest.raises(mod.UsageError, match="run a study first"):
            mod.dashboard_storage(missing)


def test_missing_storage_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--storage", f"journal:{tmp_path / 'none.log'}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: no Optuna journal file") and proc.stderr.count("\n") == 1


def _count(pixels: np.ndarray, rgb: tuple[int, int, int], tol: int = 30) -> int:
    return int((np.abs(pixels - np.array(rgb)) <= tol).all(axis=-1).sum())


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)")
@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_dashboard_screenshot_shows_the_studys_trials(tmp_path, kind):
    from PIL import Image

    n = 12
    if kind == "journal":
        storage = f"journal:{tmp_path / 'optuna-journal.log'}"
        _make_study(_journal(tmp_path / "optuna-journal.log"), "small", n)
        _make_study(_journal(tmp_path / "optuna-journal.log"), "other", 3)
    else:
        storage = f"sqlite:///{tmp_path / 'optuna.db'}"
        _make_study(storage, "small", n)
        _make_study(storage, "other", 3)
    out = tmp_path / "dash.png"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--storage", storage, "--study", "small", "--out", str(out),
                           "--window-size", "1400,900"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert f"'small': {n} trials" in proc.stdout
    image = Image.open(out)
    assert image.size == (1400, 900)
    pixels = np.asarray(image.convert("RGB")).astype(int)
    assert _count(pixels, HEADER_BLUE, 8) > 1400 * 40  # the app bar: the dashboard rendered, not an error page
    assert _count(pixels, MARKER_TEAL) >= 6 * n  # the history plot: a marker (several pixels) per trial

    # an unknown study: one line naming the studies there, exit 2
    bad = subprocess.run([sys.executable, str(SCRIPT), "--storage", storage, "--study", "nope", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "no study 'nope'" in bad.stderr and "small" in bad.stderr
