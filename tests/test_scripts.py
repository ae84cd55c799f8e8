"""scripts/objective_noise.py on the tiny preset: one row per seed, and the summary is the mean and s.d. of them."""

from __future__ import annotations

import importlib.util
import re
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # trains the tiny teacher and three students: about a minute on 2 quiet cores
def test_objective_noise_prints_each_seed_and_their_spread(tmp_path, capsys):
    noise = _load("objective_noise")
    assert noise.main(["--preset", "tiny", "--seeds", "0", "1", "2", "--iterations", "2", "--fid-samples", "16",
                       "--fid-reference", "32", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\s+(\d+)\s+(\d+\.\d+)\s+(-?\d+\.\d+)\s+\d+\.\d\s+\d+\.\d$", out, re.M)
    assert [int(r[0]) for r in rows] == [0, 1, 2]
    fids = [float(r[1]) for r in rows]
    assert len(set(fids)) == 3  # the seeds train different students
    mean, sd = re.search(r"^FID: mean (\d+\.\d+), s\.d\. (\d+\.\d+)", out, re.M).groups()
    assert float(mean) == pytest.approx(statistics.fmean(fids), abs=0.01)
    assert float(sd) == pytest.approx(statistics.stdev(fids), abs=0.01)
    assert "16 samples vs 32 reference images" in out and "over 3 seeds" in out


def test_objective_noise_bad_input_is_one_line_exit_2(tmp_path, capsys):
    noise = _load("objective_noise")
    assert noise.main(["--preset", "nope", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown preset 'nope'") and err.count("\n") == 1
