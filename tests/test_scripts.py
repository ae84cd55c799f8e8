"""scripts/objective_noise.py on the tiny preset: one row per seed, and the summary is the mean and s.d. of them."""

from __future__ import annotations

import importlib.util
import re
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, folder: Path = ROOT / "scripts"):
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_gpu(name: str):
    return _load(name, ROOT / "scripts" / "gpu")


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


def test_a_checkpoint_pulled_in_pieces_is_staged_back_once_all_pieces_are_there(tmp_path):
    """bg.sh pull splits a large file for $OUT; stage.sh, fed its pieces over two calls, rebuilds it (checksum
    checked) as the teacher's checkpoint in the cache, and drops a set whose checksum fails."""
    import os
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    work, out, stage = tmp_path / "work", tmp_path / "out", tmp_path / "stage"
    for d in (work / "scripts" / "gpu", out):
        d.mkdir(parents=True)
    for name in ("bg.sh", "stage.sh"):
        (work / "scripts" / "gpu" / name).write_bytes((repo / "scripts" / "gpu" / name).read_bytes())
    ckpt = work / "checkpoint.pt"
    ckpt.write_bytes(os.urandom(32_000_000))
    (work / "config.json").write_text("{}")
    env = {**os.environ, "OUT": str(out), "BDENSE_STAGE_DIR": str(stage)}
    run = lambda cmd: subprocess.run(["bash", "-c", cmd], cwd=work, env=env, capture_output=True, text=True, check=True).stdout  # noqa: E731
    run("bash scripts/gpu/bg.sh pull checkpoint.pt config.json missing.pt")
    pieces = sorted(p.name for p in out.glob("checkpoint.pt.part.*"))
    assert pieces == ["checkpoint.pt.part.aa", "checkpoint.pt.part.ab", "checkpoint.pt.part.ac"]
    assert (out / "checkpoint.pt.npieces").read_text().strip() == "3" and not (out / "missing.pt").exists()

    carried = work / ".gpu" / "teacher-abc"
    carried.mkdir(parents=True)
    for f in out.iterdir():
        if f.name != "checkpoint.pt.part.ac":  # the first call carries all but one piece
            (carried / f.name).write_bytes(f.read_bytes())
    assert "checkpoint: 2 of 3 pieces" in run("source scripts/gpu/stage.sh")
    # the Inception's path is exported before it is staged, so that a job started now finds it once it is there
    assert run("source scripts/gpu/stage.sh >/dev/null; echo $BDENSE_INCEPTION").strip() == str(stage / "assets" / "inception.pt")
    (carried / "checkpoint.pt.part.ac").write_bytes((out / "checkpoint.pt.part.ac").read_bytes())
    assert "checkpoint is in the cache" in run("source scripts/gpu/stage.sh")
    assert (stage / "cache" / "teachers" / "abc" / "checkpoint.pt").read_bytes() == ckpt.read_bytes()

    bad = work / ".gpu" / "teacher-bad"
    bad.mkdir()
    for f in carried.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "checkpoint.pt.part.ab").write_bytes(os.urandom(10))
    assert "fails its checksum" in run("source scripts/gpu/stage.sh")
    assert not (stage / "cache" / "teachers" / "bad").exists()

    # a compile cache brought back from an earlier machine (compile.tgz of its processes' files) is staged for
    # fast.portable_compile_cache
    import tarfile

    saved = tmp_path / "new"
    saved.mkdir()
    (saved / "123.bin").write_bytes(b"artifacts")
    (work / ".gpu" / "compile").mkdir()
    with tarfile.open(work / ".gpu" / "compile" / "compile.tgz", "w:gz") as tar:
        tar.add(saved / "123.bin", arcname="./123.bin")
    said = run("source scripts/gpu/stage.sh; echo $BDENSE_COMPILE_CACHE")
    assert "compile-cache=1 file(s)" in said and said.split()[-1] == str(stage / "compile")
    assert (stage / "compile" / "123.bin").read_bytes() == b"artifacts"


def test_bg_stop_is_ctrl_c_for_a_study_and_study_sh_still_packs_the_run_folder(tmp_path):
    """`bg.sh stop` sends SIGINT to a job's process group; study.sh passes it on to its studies (each under
    `timeout`, in a process group of its own), waits for them to end their own way and packs the run folder."""
    import os
    import subprocess
    import time

    repo = Path(__file__).resolve().parents[1]
    work, out, stage, fake = tmp_path / "work", tmp_path / "out", tmp_path / "stage", tmp_path / "bin"
    for d in (work / "scripts" / "gpu", out, fake):
        d.mkdir(parents=True)
    for name in ("bg.sh", "stage.sh", "study.sh", "pack.sh"):
        (work / "scripts" / "gpu" / name).write_bytes((repo / "scripts" / "gpu" / name).read_bytes())
    # stands in for `python study/run.py ...`: writes a trial into the run folder, then runs until Ctrl-C, on which
    # it records the interruption there (as the study marks its running trials failed) and exits 130
    (fake / "python").write_text(
        "#!/usr/bin/env bash\n"
        "runs=$3; echo done > $runs/trial-0\n"
        "trap 'echo interrupted > $runs/trial-1; exit 130' INT\n"
        "echo \"study started: $*\"\n"
        "while :; do sleep 0.05; done\n")
    (fake / "python").chmod(0o755)
    (stage / "runs" / "cache").mkdir(parents=True)  # caches stay out of the pack
    (stage / "runs" / "cache" / "bank.pt").write_bytes(b"0" * 100)
    (out / "runs.tgz.part.zz").write_bytes(b"a piece of an earlier pack")
    env = {**os.environ, "OUT": str(out), "BDENSE_STAGE_DIR": str(stage), "PATH": f"{fake}:{os.environ['PATH']}"}
    run = lambda cmd: subprocess.run(["bash", "-c", cmd], cwd=work, env=env, capture_output=True, text=True,  # noqa: E731
                                     check=True, timeout=60).stdout
    assert "started" in run("bash scripts/gpu/bg.sh start screen bash scripts/gpu/study.sh 5 -- --n-trials 3")
    log = out / "study-1.log"
    for _ in range(200):  # until the fake study runs
        if log.exists() and "study started" in log.read_text():
            break
        time.sleep(0.05)
    assert "running" in run("bash scripts/gpu/bg.sh status screen")
    assert "Ctrl-C sent" in run("bash scripts/gpu/bg.sh stop screen")
    status = run("TAIL=40 bash scripts/gpu/bg.sh wait screen 30")
    assert "screen: ended, exit 0" in status
    assert "Ctrl-C passed on to the studies" in status and "study.sh: exit 130" in status
    packed = subprocess.run(f"cat {out}/runs.tgz.part.* | tar -tzf -", shell=True, capture_output=True, text=True,
                            check=True).stdout.split()
    assert {"trial-0", "trial-1"} <= {p.removeprefix("./") for p in packed}  # the interruption was packed too
    assert not any("cache" in p for p in packed) and not (out / "runs.tgz.part.zz").exists()
    joined = b"".join(f.read_bytes() for f in sorted(out.glob("runs.tgz.part.*")))
    import hashlib

    assert (out / "runs.tgz.sha256").read_text().strip() == hashlib.sha256(joined).hexdigest()
    assert (stage / "runs" / "trial-1").read_text().strip() == "interrupted"
    # a job that has ended is not signalled again
    assert "ended" in run("bash scripts/gpu/bg.sh stop screen")


def test_study_sh_restores_a_carried_pack_only_when_its_checksum_holds(tmp_path):
    """A run folder carried to a fresh machine as pieces with their checksum: a cut-short piece stops study.sh
    (exit 2, one line) before any study runs; the whole pack is restored."""
    import hashlib
    import io
    import os
    import subprocess
    import tarfile

    repo = Path(__file__).resolve().parents[1]
    work, stage, fake = tmp_path / "work", tmp_path / "stage", tmp_path / "bin"
    for d in (work / "scripts" / "gpu", work / ".gpu" / "runs", fake):
        d.mkdir(parents=True)
    for name in ("stage.sh", "study.sh", "pack.sh"):
        (work / "scripts" / "gpu" / name).write_bytes((repo / "scripts" / "gpu" / name).read_bytes())
    (fake / "python").write_text("#!/usr/bin/env bash\necho \"study ran: $(cat $3/optuna-journal.log)\"\n")
    (fake / "python").chmod(0o755)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"trial 7 complete"
        info = tarfile.TarInfo("./optuna-journal.log")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    pack = buf.getvalue()
    (work / ".gpu" / "runs" / "runs.tgz.sha256").write_text(hashlib.sha256(pack).hexdigest() + "\n")
    env = {**os.environ, "OUT": str(tmp_path / "out"), "BDENSE_STAGE_DIR": str(stage),
           "PATH": f"{fake}:{os.environ['PATH']}"}
    run = lambda: subprocess.run(["bash", "scripts/gpu/study.sh", "1", "--", "--n-trials", "1"], cwd=work, env=env,  # noqa: E731
                                 capture_output=True, text=True, timeout=60)
    (work / ".gpu" / "runs" / "runs.tgz.part.aa").write_bytes(pack[:-10])
    r = run()
    assert r.returncode == 2 and "do not match runs.tgz.sha256" in r.stderr and r.stderr.count("\n") == 1
    assert not (stage / "runs").exists()
    (work / ".gpu" / "runs" / "runs.tgz.part.aa").write_bytes(pack)
    r = run()
    assert r.returncode == 0 and "run folder restored" in r.stdout
    assert "study ran: trial 7 complete" in (tmp_path / "out" / "study-1.log").read_text()
    # study.sh's own pack says how many pieces it has (checksum last): here the one of a small run folder
    assert (tmp_path / "out" / "runs.tgz.npieces").read_text().strip() == "1"

    # a pack too big to carry in one call with the working tree: its pieces come over two calls
    import shutil

    shutil.rmtree(stage)
    for f in (work / ".gpu" / "runs").iterdir():
        f.unlink()
    half = len(pack) // 2
    (work / ".gpu" / "runs" / "runs.tgz.npieces").write_text("2\n")
    (work / ".gpu" / "runs" / "runs.tgz.sha256").write_text(hashlib.sha256(pack).hexdigest() + "\n")
    (work / ".gpu" / "runs" / "runs.tgz.part.aa").write_bytes(pack[:half])
    r = run()  # the first call: one of two pieces, no study yet
    assert r.returncode == 2 and "1 of the run folder pack's 2 pieces" in r.stderr and r.stderr.count("\n") == 1
    assert not (stage / "runs").exists()
    for f in (work / ".gpu" / "runs").iterdir():
        f.unlink()
    (work / ".gpu" / "runs" / "runs.tgz.part.ab").write_bytes(pack[half:])
    r = run()  # the second call carries the other piece alone
    assert r.returncode == 0 and "run folder restored" in r.stdout
    assert "study ran: trial 7 complete" in (tmp_path / "out" / "study-1.log").read_text()


@pytest.fixture
def tiny_teacher_file(tmp_path, monkeypatch):
    from bdense_core.presets import get_preset
    from bdense_core.teacher import save_teacher, train_teacher

    monkeypatch.setenv("BDENSE_CACHE_DIR", str(tmp_path / "cache"))
    teacher = train_teacher(get_preset("tiny").teacher, "cpu")
    return teacher, save_teacher(teacher, tmp_path / "t.pt")


@pytest.mark.slow  # seven 64-sample FIDs on the CPU's Inception: about 90 s on 2 cores
def test_teacher_script_scores_a_teacher_file_at_other_step_counts(tmp_path, tiny_teacher_file):
    """`scripts/gpu/teacher.py --score FILE --steps N`: the record of a given teacher file without training it,
    with an FID for each step count; on the CPU the compiled samplers do not run, so the fp32 score is the eager
    one, and the bf16 and fp32 scores at N steps are equal."""
    import json

    teacher, file = tiny_teacher_file
    script = _load_gpu("teacher")
    assert script.main(["--preset", "tiny", "--score", str(file), "--steps", "4", "--out", str(tmp_path / "o"),
                        "--device", "cpu"]) == 0
    record = json.loads((tmp_path / "o" / f"score-{teacher.key}.json").read_text())
    assert record["key"] == teacher.key and "gpus" not in record and "file" not in record
    assert record["fid_fast_fp32"] == pytest.approx(record["fid_eager_fp32"], rel=1e-4)
    (row,) = record["by_steps"]
    assert row["steps"] == 4 and row["nfe"] == 7 and row["bf16"]["fid"] == pytest.approx(row["fp32"]["fid"], rel=1e-4)
    assert row["fp32"]["fid"] != pytest.approx(record["fid_eager_fp32"], rel=1e-3)  # 4 steps are not the 8-step sampler


def test_teacher_script_bad_input_is_one_line_exit_2(tmp_path, tiny_teacher_file, capsys):
    _, file = tiny_teacher_file
    script = _load_gpu("teacher")
    for argv, says in ((["--score", str(tmp_path / "none.pt")], "not found"),
                       (["--preset", "cpu", "--score", str(file)], "other data than preset cpu"),
                       (["--preset", "nope", "--score", str(file)], "unknown preset 'nope'")):
        with pytest.raises(SystemExit) as e:
            script.main(["--preset", "tiny", *argv, "--out", str(tmp_path / "o"), "--device", "cpu"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and says in err and err.count("\n") == 1, err


def test_banks_script_solves_the_banks_a_study_then_loads_without_solving(tmp_path, tiny_teacher_file, monkeypatch):
    """`scripts/gpu/banks.py`: the banks named on the command line land in the cache under the keys the study's
    workers ask for, so a study with the same options loads them (solving again would fail here)."""
    from bdense_core.distill import sfd
    from study.cli import parse_config
    from study.run import prepare_teacher
    from study.workers import Banks

    monkeypatch.setenv("BDENSE_RUNS_DIR", str(tmp_path / "runs"))
    _, file = tiny_teacher_file
    opts = ["--preset", "tiny", "--teacher-file", str(file), "--k", "2", "3", "--confirm-top", "1", "--device", "cpu"]
    script = _load_gpu("banks")
    assert script.main(["--bank", "2:screen:0", "--bank", "2:full:1000", "--", *opts]) == 0
    assert len(list((tmp_path / "cache" / "banks").glob("bank-*.pt"))) == 2

    def solve(*args, **kwargs):
        raise AssertionError("the study solved a bank that banks.py had solved")

    monkeypatch.setattr(sfd, "build_trajectory_bank", solve)
    config = parse_config(opts)
    banks = Banks(config, prepare_teacher(config, "cpu", announce=False))
    for length, seed in (("screen", 0), ("full", 1000)):
        shared = config.shared[length]
        assert len(banks(2, length, seed)) == shared.iterations * shared.batch_size
    with pytest.raises(AssertionError, match="solved a bank"):
        banks(2, "screen", 1)  # a seed banks.py was not asked for


def test_banks_script_solves_a_bank_in_parts_that_a_study_then_loads(tmp_path, tiny_teacher_file, monkeypatch):
    """`--bank NFE:LENGTH:SEED:I/M` (one part on each GPU): the last part joins them into the bank file a
    study's workers load, with the rows of the bank solved whole."""
    import torch

    from bdense_core.distill import sfd
    from study.cli import parse_config
    from study.run import prepare_teacher
    from study.workers import Banks

    monkeypatch.setenv("BDENSE_RUNS_DIR", str(tmp_path / "runs"))
    _, file = tiny_teacher_file
    opts = ["--preset", "tiny", "--teacher-file", str(file), "--k", "2", "--iterations", "70", "--device", "cpu"]
    script = _load_gpu("banks")
    assert script.main(["--bank", "2:screen:0:2/2", "--", *opts]) == 0
    assert len(list((tmp_path / "cache" / "banks").glob("bank-*.pt.part1of2"))) == 1
    assert script.main(["--bank", "2:screen:0:1/2", "--", *opts]) == 0
    files = [p.name for p in (tmp_path / "cache" / "banks").glob("bank-*") if not p.name.endswith(".lock")]
    assert len(files) == 1 and files[0].endswith(".pt")  # the parts joined, and gone
    config = parse_config(opts)
    teacher = prepare_teacher(config, "cpu", announce=False)
    whole = sfd.build_trajectory_bank(teacher, 70 * 16, **{k: v for k, v in Banks(config, teacher).spec(
        (2, "screen", 0)).items() if k in ("config", "seed", "k_choices")}, dtype=torch.float16)

    def solve(*args, **kwargs):
        raise AssertionError("the study solved a bank that banks.py had solved")

    monkeypatch.setattr(sfd, "build_trajectory_bank", solve)
    bank = Banks(config, teacher)(2, "screen", 0)
    assert len(bank) == 70 * 16 and torch.equal(bank.states, whole.states)


def test_banks_script_bad_input_is_one_line_exit_2(tmp_path, tiny_teacher_file, monkeypatch, capsys):
    monkeypatch.setenv("BDENSE_RUNS_DIR", str(tmp_path / "runs"))
    _, file = tiny_teacher_file
    script = _load_gpu("banks")
    with pytest.raises(SystemExit) as e:
        script.main(["--bank", "2:full", "--", "--preset", "tiny"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "NFE:LENGTH:SEED" in err
    assert script.main(["--bank", "2:full:1000", "--", "--preset", "tiny", "--teacher-file", str(file)]) == 2
    err = capsys.readouterr().err
    assert "trains nothing at length 'full'" in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit) as e:
        script.main(["--bank", "2:full:1000:3/2", "--", "--preset", "tiny"])
    assert e.value.code == 2 and "I/M" in capsys.readouterr().err
    # the tiny preset's bank (96 paths) is too small to split: one line, nothing solved
    assert script.main(["--bank", "2:screen:0:1/2", "--", "--preset", "tiny", "--teacher-file", str(file),
                        "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "too small to solve in 2 parts" in err and err.count("\n") == 1, err
    assert not (tmp_path / "cache" / "banks").exists()


@pytest.mark.parametrize("script", ["bench_core.py", "pd_precision.py"])
def test_benchmarks_refuse_an_unknown_preset_in_one_line(script):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(repo / "benchmarks" / script), "--preset", "nope", "--device", "cpu"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown preset 'nope'; choose one of" in r.stderr


def test_bench_core_times_the_campaigns_iteration_at_each_nfe(tmp_path):
    """--campaign-nfe times the SFD iteration of the campaign's shape (1 and 3 students) at each NFE: a student
    trains one interval more at NFE 3 than at NFE 2, and each row's per-interval figure divides by that count.
    (Which NFE's step is slower is not asserted: on a 2-core CPU the quick preset's step is overhead, and CI once
    timed NFE 3 below NFE 2.)"""
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(repo / "benchmarks" / "bench_core.py"), "--quick", "--no-fid",
                        "--campaign-nfe", "2", "3", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    t = json.loads(out.read_text())["campaign_iteration_s"]
    assert sorted(t) == ["nfe2_n1", "nfe2_n3", "nfe3_n1", "nfe3_n3"] and all(v > 0 for v in t.values())
    intervals = json.loads(out.read_text())["campaign_trained_intervals"]
    assert intervals["nfe3"] == intervals["nfe2"] + 1 >= 2  # one more jump, each trained
    assert r.stdout.count("SFD iteration as the campaign trains") == 2 * 4  # each row, then the aligned table
    for nfe in (2, 3):
        for n in (1, 3):  # "x ms = y ms per student and interval" with y = x / (n * intervals)
            shown = re.search(rf"NFE {nfe}, {n} students?\s*\|?\s*([\d.]+) ms = ([\d.]+) ms per student", r.stdout)
            assert shown, r.stdout[-3000:]
            step_ms, per_ms = map(float, shown.groups())
            assert step_ms == pytest.approx(1e3 * t[f"nfe{nfe}_n{n}"], abs=0.006)
            assert per_ms == pytest.approx(step_ms / (n * intervals[f"nfe{nfe}"]), abs=0.006)


@pytest.mark.slow
def test_bench_fallback_times_both_compile_modes_and_prints_each_row_as_measured(tmp_path):
    """bench_fallback times the SFD step and the PD update in both modes (CUDA graphs, then 'default'), prints each
    mode's row as it is measured and each ratio as without / with, and its JSON holds the same numbers. (On the
    CPU both modes are the eager path, so no ratio is asserted.)"""
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "fallback.json"
    r = subprocess.run([sys.executable, "-u", str(repo / "benchmarks" / "bench_fallback.py"), "--quick",
                        "--iterations", "21", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(out.read_text())
    assert set(d["modes"]) == {"reduce-overhead", "default"} and d["fast"] is False
    lines = r.stdout.splitlines()
    for key, what in (("sfd_iteration_s", "SFD iteration"), ("pd_update_s", "PD update")):
        a, b = d["modes"]["reduce-overhead"][key], d["modes"]["default"][key]
        assert a > 0 and b > 0 and d[f"{key}_ratio"] == pytest.approx(b / a)
        rows = [i for i, line in enumerate(lines) if line.lstrip().startswith(what)]
        assert len(rows) == 3, lines  # the two modes as measured, then the ratio
        shown = re.search(r"([\d.]+) ms / ([\d.]+) ms = x([\d.]+)", lines[rows[2]])
        assert shown and float(shown.group(1)) == pytest.approx(1e3 * b, abs=0.006)
        assert float(shown.group(2)) == pytest.approx(1e3 * a, abs=0.006)
    assert [line.split("mode ")[1].split(":")[0] for line in lines if ", mode '" in line] == \
        ["'reduce-overhead'", "'default'"] * 2


@pytest.mark.slow
def test_bench_compile_cache_runs_a_cold_then_a_warm_process_and_writes_what_it_printed(tmp_path):
    """bench_compile_cache runs two fresh processes one after the other, the second told of the first's saved
    artifacts, and prints and writes each one's first and second sampler call. (On the CPU nothing is compiled:
    no file is saved or loaded and no ratio is printed.)"""
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "cc.json"
    r = subprocess.run([sys.executable, "-u", str(repo / "benchmarks" / "bench_compile_cache.py"), "--device", "cpu",
                        "--preset", "cpu", "--batch", "2", "--out", str(out)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(out.read_text())
    lines = r.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["cold", "warm"]
    for name, line in zip(("cold", "warm"), lines):
        assert d[name]["loaded"] == [] and d[name]["saved_bytes"] == 0
        assert f"first sampler call {d[name]['first_s']:.1f} s" in line and d[name]["process_s"] > d[name]["first_s"]
    assert lines[2].startswith("CPU: the sampler runs eagerly")


@pytest.mark.slow
def test_bench_gpus_times_overlapping_windows_and_tracks_every_record(tmp_path):
    """bench_gpus's side-by-side processes time windows that overlap (they wait for each other after compiling),
    and --track logs each student's every record into the phase's shared MLflow store, as a study's workers do."""
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "gpus.json"
    r = subprocess.run([sys.executable, str(repo / "benchmarks" / "bench_gpus.py"), "--devices", "cpu,cpu", "--preset",
                        "tiny", "--iterations", "6", "--students", "2", "--track", "--out", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(out.read_text())
    assert d["alone"]["logged_loss_steps"] == [6, 6] and d["alone"]["students"] == 2
    together = d["together"]
    assert len(together) == 2 and all(x["logged_loss_steps"] == [6, 6] and x["step_ms"] > 0 for x in together)
    assert max(x["window"][0] for x in together) < min(x["window"][1] for x in together)
    assert d["ratio"] == pytest.approx(sum(x["student_iterations_per_s"] for x in together)
                                       / d["alone"]["student_iterations_per_s"])


def test_bench_core_cut_short_keeps_what_it_measured(tmp_path):
    """A GPU call can end (its time limit, the machine taken back) before the benchmark does: bench_core prints each
    figure as it is measured and rewrites its JSON after each section, so a run killed midway has shown them."""
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "bench.json"
    p = subprocess.Popen([sys.executable, "-u", str(repo / "benchmarks" / "bench_core.py"), "--quick", "--no-fid",
                          "--device", "cpu", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True)
    seen = []
    try:
        for line in p.stdout:
            seen.append(line)
            if line.startswith("fast SFD iteration"):  # the next section's first row: the eager one is written
                break
    finally:
        p.kill()
        p.wait(timeout=60)
    assert seen and seen[-1].startswith("fast SFD iteration"), seen
    assert any(s.startswith("head overhead K=4") for s in seen)
    assert any(s.startswith("eager SFD iteration, trajectory bank") for s in seen)
    assert "section times" not in "".join(seen)  # killed well before its end
    numbers = json.loads(out.read_text())
    assert numbers["sfd_iter_s_bank_K4"] > 0 and "eager iterations" in numbers["section_s"]
    assert "students_per_process" not in numbers


def test_pack_sh_snapshots_a_run_folder_that_studies_are_writing(tmp_path):
    """scripts/gpu/pack.sh packs what a wait call brings back mid-session: the journal up to its last complete
    line (an operation half written is dropped and the study loads), SQLite through its backup API, no caches, locks
    or SQLite side files; pieces, count and checksum as study.sh restores them."""
    import hashlib
    import io
    import sqlite3
    import subprocess
    import tarfile

    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    repo = Path(__file__).resolve().parents[1]
    runs, dest = tmp_path / "runs", tmp_path / "out"
    (runs / "cache" / "banks").mkdir(parents=True)
    (runs / "cache" / "banks" / "bank.pt").write_bytes(b"x" * 1000)
    (runs / "mlartifacts" / "1").mkdir(parents=True)
    (runs / "mlartifacts" / "1" / "samples.png").write_bytes(b"png")
    journal = runs / "optuna-journal.log"
    study = optuna.create_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(journal))))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    with journal.open("ab") as f:
        f.write(b'{"op_code": 6, "worker_id": "w", "trial_id": 3, "halfw')  # a write caught halfway
    (runs / "optuna-journal.log.lock").write_text("held")
    with sqlite3.connect(runs / "mlflow.db") as db:
        db.execute("create table runs (id text)")
        db.executemany("insert into runs values (?)", [("a",), ("b",)])
    (runs / "mlflow.db-wal").write_bytes(b"")

    subprocess.run(["bash", str(repo / "scripts" / "gpu" / "pack.sh"), str(runs), str(dest)], check=True, timeout=60)
    pieces = sorted(dest.glob("runs.tgz.part.*"))
    pack = b"".join(p.read_bytes() for p in pieces)
    assert (dest / "runs.tgz.npieces").read_text().strip() == str(len(pieces)) == "1"
    assert (dest / "runs.tgz.sha256").read_text().strip() == hashlib.sha256(pack).hexdigest()
    back = tmp_path / "back"
    with tarfile.open(fileobj=io.BytesIO(pack)) as tar:
        tar.extractall(back, filter="data")
    assert sorted(p.name for p in back.iterdir()) == ["mlartifacts", "mlflow.db", "optuna-journal.log"]
    assert (back / "mlartifacts" / "1" / "samples.png").read_bytes() == b"png"
    text = (back / "optuna-journal.log").read_bytes()
    assert text.endswith(b"\n") and b'halfw' not in text and journal.read_bytes().startswith(text)
    storage = JournalStorage(JournalFileBackend(str(back / "optuna-journal.log")))
    restored = optuna.load_study(study_name="s", storage=storage)
    assert [t.params for t in restored.trials] == [t.params for t in study.trials]
    with sqlite3.connect(back / "mlflow.db") as db:
        assert db.execute("select id from runs order by id").fetchall() == [("a",), ("b",)]
    # a wait call before the run folder exists (study.sh restores it once the banks are solved): one line, no pack
    said = subprocess.run(["bash", str(repo / "scripts" / "gpu" / "pack.sh"), str(tmp_path / "none"),
                           str(tmp_path / "out2")], capture_output=True, text=True, timeout=60)
    assert said.returncode == 0 and said.stdout.startswith("pack.sh: no run folder") and not said.stderr
    assert not (tmp_path / "out2").exists()


def test_monitor_sh_samples_gpus_cpu_and_processes_until_stopped(tmp_path):
    """scripts/gpu/monitor.sh: a header (CPUs, quota, GPUs), then one sample every SECONDS with the load, each
    GPU's line from nvidia-smi, memory and the busiest processes; a busy process here shows at the top."""
    import os
    import subprocess
    import sys
    import time

    fake = tmp_path / "bin"
    fake.mkdir()
    # stands in for the GPU machine's nvidia-smi: one line per query, as `--format=csv,noheader` prints them
    (fake / "nvidia-smi").write_text(
        "#!/usr/bin/env bash\n"
        "case \"$*\" in *compute-apps*) echo '00000000:19:00.0, 4242, 33000 MiB';;\n"
        "  *utilization*) echo '0, 97 %, 41000 MiB, 350.1 W, 1980 MHz';;\n"
        "  *) echo '0, NVIDIA H100 80GB HBM3, 00000000:19:00.0, 1980 MHz, 700.00 W';; esac\n")
    (fake / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    mon = subprocess.Popen(["bash", str(ROOT / "scripts" / "gpu" / "monitor.sh"), str(tmp_path / "mon"), "1"], env=env)
    try:
        time.sleep(7)
    finally:
        mon.terminate()
        busy.kill()
        mon.wait(10)
        busy.wait(10)
    log = (tmp_path / "mon" / "monitor.log").read_text()
    assert log.startswith("== ") and f"cpus: nproc {os.cpu_count()}" in log
    assert "0, NVIDIA H100 80GB HBM3, 00000000:19:00.0" in log
    samples = re.findall(r"^== \d\d:\d\d:\d\d load [\d.]+ [\d.]+ [\d.]+ \d+/\d+$", log, re.M)
    assert len(samples) >= 2
    assert log.count("0, 97 %, 41000 MiB, 350.1 W, 1980 MHz") == len(samples)
    assert log.count("00000000:19:00.0, 4242, 33000 MiB") == len(samples)
    first = log.split(samples[0])[1].split("== ")[0]
    assert re.search(rf"^\s*{busy.pid} .*python\S* -c while True: pass", first, re.M)  # the busiest process


def test_bench_tracking_times_writers_logging_into_one_sqlite_store_with_backups(tmp_path, capsys):
    """Two writer processes log the campaign's record blocks into one new MLflow SQLite store while it is backed up;
    each writer's line gives its record count, mean and worst time a record; bad options: one line, exit 2."""
    bench = _load("bench_tracking", ROOT / "benchmarks")
    assert bench.main(["--writers", "2", "--seconds", "2", "--backup-every", "1"]) == 0
    out = capsys.readouterr().out
    assert re.match(r"2 writers, 2 s each, [1-9]\d* backups of the store \(a new store\):", out)
    rows = re.findall(r"^  K=(\d): ([\d,]+) records, mean ([\d.]+) ms, worst (\d+) ms a record$", out, re.M)
    assert [k for k, *_ in rows] == ["1", "4"]
    for _, n, mean, worst in rows:
        assert int(n.replace(",", "")) >= 2 * bench.BLOCK  # a block a second for 2 s
        assert 0 < float(mean) <= float(worst) + 1
    assert bench.main(["--store", str(tmp_path / "none.db")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bench_tracking.py: error: no store at")


def test_bench_trials_warms_up_as_many_trials_as_a_worker_trains_together():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_trials import students_per_worker

    assert students_per_worker(["--preset", "fmnist-gpu", "--students-per-worker", "3", "--length", "full"]) == 3
    assert students_per_worker(["--students-per-worker=4"]) == 4
    assert students_per_worker(["--preset", "fmnist-gpu"]) == 1
    assert students_per_worker(["--students-per-worker"]) == 1  # the study itself then refuses the option


def test_bench_trials_steady_rate_leaves_out_the_first_group_and_its_start_up():
    import sys
    from datetime import datetime, timedelta
    from types import SimpleNamespace

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_core import steady_rate

    t0 = datetime(2026, 11, 28, 12, 0, 0)
    # one worker, groups of 3: the first ends after 170 s (start-up paid), the next two 60 s apart
    ends = [170.0, 170.2, 170.4, 230.0, 230.1, 230.3, 290.0, 290.2, 290.4]
    done = [SimpleNamespace(datetime_complete=t0 + timedelta(seconds=e)) for e in ends]
    r = steady_rate(done)
    assert r["steady_trials"] == 6 and r["steady_span_s"] == pytest.approx(120.4)
    assert r["steady_trials_per_hour"] == pytest.approx(3600 * 6 / 120.4)
    assert steady_rate(done[:3])["steady_trials"] == 0  # one group: no steady rate to give


def _chain_dir(tmp_path) -> Path:
    """A working tree with only the chain scripts: a checkout's own .gpu/ parts (prepare.sh's, in a developer's
    tree) would be staged, and their wheels installed into /tmp/site, by every stage.sh these tests source."""
    repo = Path(__file__).resolve().parents[1]
    work = tmp_path / "work"
    (work / "scripts" / "gpu").mkdir(parents=True)
    for name in ("deadline.sh", "stage.sh"):
        (work / "scripts" / "gpu" / name).write_bytes((repo / "scripts" / "gpu" / name).read_bytes())
    return work


def test_a_chains_deadline_never_gives_a_study_zero_minutes(tmp_path):
    """scripts/gpu/deadline.sh: `timeout 0` would never stop a study, so `lane` and `left` give at least 1."""
    import subprocess

    work = _chain_dir(tmp_path)
    run = lambda minutes: subprocess.run(  # noqa: E731
        ["bash", "-c", "source scripts/gpu/deadline.sh >/dev/null; echo $(left) $(lane) $BDENSE_NUM_THREADS"], cwd=work,
        env={"PATH": "/usr/bin:/bin", "MINUTES": str(minutes), "BDENSE_STAGE_DIR": str(tmp_path / "stage")},
        capture_output=True, text=True, check=True).stdout.split()
    left, lane, threads = map(int, run(26))
    assert left in (25, 26) and lane == left - 1 and threads == 2  # a minute kept for the pack after the study
    assert run(1) == ["1", "1", "2"] and run(0) == ["1", "1", "2"]


def test_a_chain_has_the_staged_environment_whatever_started_it(tmp_path):
    """scripts/gpu/deadline.sh sources stage.sh: a chain's Python finds the staged wheels, cache and Inception even
    when the call that started it exported none of them (session 12: `source stage.sh | tail` lost them all)."""
    import subprocess

    work = _chain_dir(tmp_path)
    stage = tmp_path / "stage"
    out = subprocess.run(
        ["bash", "-c", "source scripts/gpu/deadline.sh >/dev/null; echo $PYTHONPATH; echo $BDENSE_CACHE_DIR; "
         "echo $BDENSE_INCEPTION"], cwd=work,
        env={"PATH": "/usr/bin:/bin", "MINUTES": "5", "BDENSE_STAGE_DIR": str(stage)},
        capture_output=True, text=True, check=True).stdout.split()
    assert out[0].split(":")[:2] == ["/tmp/site", str(work)]
    assert out[1] == str(stage / "cache") and (stage / "cache").is_dir()
    assert out[2] == str(stage / "assets" / "inception.pt")


def test_a_chain_stops_with_one_line_when_an_asset_is_not_staged(tmp_path):
    """need_assets (deadline.sh): session 17's first chain started without the data's part and every study in it
    stopped at loading the images; a chain now stops at once, with the stage's status, and status 2."""
    import subprocess

    work = _chain_dir(tmp_path)
    run = lambda: subprocess.run(  # noqa: E731
        ["bash", "-c", "source scripts/gpu/deadline.sh >/dev/null; need_assets; echo went-on"], cwd=work,
        env={"PATH": "/usr/bin:/bin", "MINUTES": "5", "BDENSE_STAGE_DIR": str(tmp_path / "stage")},
        capture_output=True, text=True)
    proc = run()
    assert proc.returncode == 2 and "went-on" not in proc.stdout
    assert proc.stdout.count("\n") == 1 and "data=no wheels=no inception=0/" in proc.stdout
    for done in ("data.done", "test.done", "wheels.done"):  # what stage.sh marks once an asset is unpacked
        (tmp_path / "stage" / done).touch()
    (tmp_path / "stage" / "assets").mkdir(parents=True, exist_ok=True)
    (tmp_path / "stage" / "assets" / "inception.pt").write_bytes(b"staged")
    proc = run()
    assert proc.returncode == 0 and proc.stdout.strip() == "went-on"


def test_a_chain_started_in_the_first_call_waits_for_the_assets_later_calls_stage(tmp_path):
    """wait_assets SECONDS (deadline.sh): a chain whose banks need only the teacher starts in the first call and waits
    for the data and the Inception that later calls stage; it goes on as soon as they are there, and stops with
    need_assets' line and status 2 when they are still missing after SECONDS."""
    import subprocess
    import threading
    import time

    work = _chain_dir(tmp_path)
    stage = tmp_path / "stage"
    run = lambda seconds: subprocess.run(  # noqa: E731
        ["bash", "-c", f"source scripts/gpu/deadline.sh >/dev/null; wait_assets {seconds}; echo went-on"], cwd=work,
        env={"PATH": "/usr/bin:/bin", "MINUTES": "5", "BDENSE_STAGE_DIR": str(stage)}, capture_output=True, text=True)
    t0 = time.monotonic()
    proc = run(2)
    assert proc.returncode == 2 and "went-on" not in proc.stdout and "data=no" in proc.stdout
    assert time.monotonic() - t0 >= 2

    def staged_later():  # what the staging calls leave, 3 s after the chain started waiting
        time.sleep(3)
        (stage / "assets").mkdir(parents=True, exist_ok=True)
        for done in ("data.done", "test.done", "wheels.done"):
            (stage / done).touch()
        (stage / "assets" / "inception.pt").write_bytes(b"staged")

    later = threading.Thread(target=staged_later)
    t0 = time.monotonic()
    later.start()
    proc = run(60)
    later.join()
    assert proc.returncode == 0 and proc.stdout.strip().endswith("went-on")
    assert 3 <= time.monotonic() - t0 < 30


def _run_call_20(tmp_path, gpus: int, minutes: int, nfes: str = "4 5", disk_gib: int = 500):
    """results/fmnist-campaign/call-20.sh with its device work stubbed: a fake ``nvidia-smi`` naming ``gpus`` GPUs,
    ``bg.sh`` and ``study.sh`` that only write down how they were called, a fake ``df`` with ``disk_gib`` free,
    the assets already staged. Returns
    the calls, in order."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    work = _chain_dir(tmp_path)
    (work / "results" / "fmnist-campaign").mkdir(parents=True)
    chain = work / "results" / "fmnist-campaign" / "call-20.sh"
    chain.write_bytes((repo / "results" / "fmnist-campaign" / "call-20.sh").read_bytes())
    log, stage, bin_ = tmp_path / "calls.log", tmp_path / "stage", tmp_path / "bin"
    bin_.mkdir()
    for name, body in (("scripts/gpu/bg.sh", f'echo "bg $*" >> {log}'),
                       ("scripts/gpu/study.sh", f'echo "study $*" >> {log}'),
                       ("scripts/gpu/monitor.sh", "true")):
        (work / name).write_text(body + "\n")
    df = bin_ / "df"  # the disk under the stage folder: DISK_GIB free (the banks' files)
    df.write_text(f"#!/bin/sh\necho Avail\necho {disk_gib}\n")
    df.chmod(0o755)
    smi = bin_ / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + "".join(f'echo "GPU {g}: NVIDIA H200 (UUID: GPU-{g})"\n' for g in range(gpus)))
    smi.chmod(0o755)
    (stage / "assets").mkdir(parents=True)
    for done in ("data.done", "test.done", "wheels.done"):
        (stage / done).touch()
    (stage / "assets" / "inception.pt").write_bytes(b"staged")
    (stage / "cache").mkdir()
    (stage / "cache" / "bank-0123456789abcdef.pt").write_bytes(b"an earlier NFE's bank")
    proc = subprocess.run(["bash", str(chain)], cwd=work, capture_output=True, text=True, env={
        "PATH": f"{bin_}:/usr/bin:/bin", "MINUTES": str(minutes), "NFES": nfes, "BDENSE_STAGE_DIR": str(stage)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return log.read_text().splitlines(), proc.stdout, stage


def test_the_nfe_chain_solves_each_bank_in_one_part_a_gpu_then_runs_one_worker_a_gpu(tmp_path):
    """call-20.sh (the NFE-4 and NFE-5 headline on whatever machine is lent): with 2 GPUs each of an NFE's three
    banks is solved in two parts, one on each GPU, before its study starts with two workers; with 4, four parts and
    three workers (three trials); with 1, whole banks. The study options are the banks' (the same bank keys)."""
    calls, out, stage = _run_call_20(tmp_path / "two", gpus=2, minutes=30, nfes="4")
    banks = [c for c in calls if "banks.py" in c]
    assert len(banks) == 2 and all(f"--bank 4:full:{s}:{g}/2" in banks[g - 1] for g in (1, 2)
                                   for s in (1000, 1001, 1002))
    assert banks[0].endswith("--device cuda:0") and banks[1].endswith("--device cuda:1")
    study = [c for c in calls if c.startswith("study")]
    assert calls.index(study[0]) > max(calls.index(b) for b in banks)
    assert "--ablation nfe --ablation-length full --ablation-nfe 4 --workers 2 --devices cuda:0,cuda:1" in study[0]
    options = "--preset fmnist-gpu --k 2 3 4 6 8 --confirm-top 5 --confirm-seeds 3"
    assert options in study[0] and banks[0].split(" -- ")[1].startswith(options)
    assert study[-1] == "study 1"  # the pack with every trial

    calls, _, _ = _run_call_20(tmp_path / "four", gpus=4, minutes=30, nfes="4")
    banks = [c for c in calls if "banks.py" in c]
    assert len(banks) == 4 and "--bank 4:full:1002:4/4" in banks[3] and banks[3].endswith("cuda:3")
    assert "--workers 3 --devices cuda:0,cuda:1,cuda:2" in [c for c in calls if "--ablation-nfe" in c][0]

    calls, _, _ = _run_call_20(tmp_path / "one", gpus=1, minutes=30, nfes="4")
    banks = [c for c in calls if "banks.py" in c]
    assert len(banks) == 1 and "--bank 4:full:1000 --bank 4:full:1001 --bank 4:full:1002 --" in banks[0]
    assert "--workers 1 --devices cuda:0" in [c for c in calls if "--ablation-nfe" in c][0]


def test_the_nfe_chain_starts_the_next_nfe_only_with_time_left_and_without_the_last_ones_banks(tmp_path):
    calls, out, stage = _run_call_20(tmp_path / "room", gpus=2, minutes=30)
    nfes = [c.split("--ablation-nfe ")[1].split()[0] for c in calls if "--ablation-nfe" in c]
    assert nfes == ["4", "5"] and any("--bank 5:full:1000:1/2" in c for c in calls)
    assert not list((stage / "cache").glob("bank-*.pt"))  # deleted before NFE 5's banks
    calls, out, stage = _run_call_20(tmp_path / "short", gpus=2, minutes=10)
    assert [c for c in calls if "--ablation-nfe" in c][0].count("--ablation-nfe 4") == 1
    assert not any("--ablation-nfe 5" in c or "--bank 5:" in c for c in calls)
    assert "NFE 5 not started" in out and list((stage / "cache").glob("bank-*.pt"))
    # what the next NFE needs left depends on the GPUs that share its banks: 18 minutes are too few on two, enough on four
    calls, out, _ = _run_call_20(tmp_path / "two-18", gpus=2, minutes=18)
    assert "NFE 5 not started" in out and not any("--ablation-nfe 5" in c for c in calls)
    calls, out, _ = _run_call_20(tmp_path / "four-18", gpus=4, minutes=18)
    assert any("--ablation-nfe 5 --workers 3" in c for c in calls) and any("--bank 5:full:1002:4/4" in c for c in calls)


def test_bench_trials_rates_of_a_file_that_is_not_a_kept_study_is_one_line_and_status_2(tmp_path):
    import subprocess
    import sys

    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_trials.py"
    (tmp_path / "empty.journal").write_text("")
    (tmp_path / "junk.journal").write_text("not a journal\n")
    for name, words in (("empty.journal", "completed no trial"), ("junk.journal", "not an Optuna journal"),
                        ("missing.journal", "no journal at")):
        proc = subprocess.run([sys.executable, str(bench), "--rates-of", str(tmp_path / name)],
                              capture_output=True, text=True)
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and words in last, proc.stderr


def test_bench_trials_names_the_error_line_of_a_failed_study_not_its_shutdown_warnings():
    """Session 17's two-worker study ended with failed trials, and the last line of its stderr was the resource
    tracker's warning at shutdown; the row must name the error instead."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_core import error_line

    stderr = ("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
              "RuntimeError: TODO: graph recording observed an input tensor deallocate during graph  recording\n"
              "/usr/lib/python3.12/multiprocessing/resource_tracker.py:279: UserWarning: resource_tracker: There "
              "appear to be 1 leaked semaphore objects to clean up at shutdown\n"
              "  warnings.warn('resource_tracker: There appear to be %d '\n")
    assert error_line(stderr).startswith("RuntimeError: TODO: graph recording observed")
    assert error_line("one line\n\n") == "one line" and error_line("") == "(no stderr)"


def test_the_nfe_chain_starts_no_nfe_whose_banks_the_disk_cannot_hold(tmp_path):
    """A bank holds 12 NFE + 1 points of 200,064 fp16 images (14.1 GiB at NFE 3): one H200's 64 GiB disk holds NFE
    4's three (56 GiB) when 59 GiB are free, never NFE 5's (70 GiB); solved in parts, one bank more at the peak."""
    calls, out, _ = _run_call_20(tmp_path / "one-4", gpus=1, minutes=60, nfes="4", disk_gib=59)
    assert any("--ablation-nfe 4" in c for c in calls) and "(59 GiB of the 59 free)" in out
    calls, out, _ = _run_call_20(tmp_path / "one-5", gpus=1, minutes=60, nfes="5", disk_gib=60)
    assert not any("banks.py" in c or "--ablation-nfe" in c for c in calls)
    assert "NFE 5 not started: its banks need about 72 GiB" in out and "60 GiB are free" in out
    calls, out, _ = _run_call_20(tmp_path / "two-5", gpus=2, minutes=60, nfes="5", disk_gib=96)
    assert "--bank 5:full:1000:1/2" in " ".join(calls) and "(96 GiB of the 96 free)" in out
    assert calls[-1] == "study 1"

