"""The core's end-to-end job on the tiny preset: teacher, K = 4 student, K = 1 baseline, FIDs printed."""

import re

import pytest

from bdense_core import demo


@pytest.mark.slow
def test_demo_job_prints_fid_of_teacher_bdense_and_baseline(tmp_path, capsys):
    assert demo.main(["--preset", "tiny", "--k", "2", "--a", "0.5", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^(teacher.*?|B-DENSE K=2.*?|baseline K=1.*?)\s+(\d+\.\d+)\s+\d+\.\d+$", out, re.M))
    assert len(rows) == 3, out
    assert all(0 < float(v) < 1000 for v in rows.values())


def test_demo_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert demo.main(["--preset", "tiny", "--k", "3", "--nfe", "0", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "NFE must be >= 1" in err
