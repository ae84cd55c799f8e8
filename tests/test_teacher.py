"""get_teacher with a shipped teacher file: the file is used when it holds the preset's config; a missing, damaged
or outdated file is one clear error naming the fix (never a silent long training); a damaged *cached* teacher is
retrained with one line saying so. Also pins the shipped cpu teacher to the cpu preset's config."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bdense_core.presets import get_preset
from bdense_core.teacher import TeacherFileError, build_denoiser, get_teacher, load_teacher, save_teacher, train_teacher

TINY = replace(get_preset("tiny").teacher, steps=6)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A tiny teacher saved as a shipped file (fp16), and the cache folder it was trained in."""
    root = tmp_path_factory.mktemp("cache")
    teacher = train_teacher(TINY, "cpu", root=root)
    return save_teacher(teacher, root.parent / "teacher-tiny.pt", half=True), teacher


def _teachers_in(root: Path) -> list[Path]:
    return sorted((root / "teachers").glob("*/teacher.pt"))


def _same_weights(a, b) -> bool:
    return all(torch.allclose(p, q, atol=1e-2) for p, q in zip(a.denoiser.parameters(), b.denoiser.parameters()))


def test_shipped_file_of_the_config_is_used_without_training(shipped, tmp_path):
    path, trained = shipped
    teacher = get_teacher(TINY, path, "cpu", root=tmp_path)
    assert teacher.from_cache and teacher.key == TINY.key and _same_weights(teacher, trained)
    assert _teachers_in(tmp_path) == []  # nothing was trained into the cache


@pytest.mark.parametrize("damage", ["missing", "truncated", "text", "other-format", "nan-weights"])
def test_unusable_shipped_file_is_one_line_naming_the_fix(shipped, tmp_path, damage, capsys):
    good, _ = shipped
    path = tmp_path / "teacher-tiny.pt"
    if damage == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif damage == "text":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    elif damage == "other-format":
        torch.save({"state_dict": {}}, path)
    elif damage == "nan-weights":
        payload = torch.load(good, weights_only=False)
        payload["weights"] = {k: v.clone().fill_(float("nan")) if v.is_floating_point() else v
                              for k, v in payload["weights"].items()}
        torch.save(payload, path)
    with pytest.raises(TeacherFileError) as info:
        get_teacher(TINY, path, "cpu", root=tmp_path / "cache")
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "restore the shipped file" in message and "--train-teacher" in message
    assert _teachers_in(tmp_path / "cache") == []  # no training was started
    assert capsys.readouterr().err == ""


def test_restore_command_is_repo_relative_for_a_file_in_the_project(tmp_path):
    cpu = get_preset("cpu")
    with pytest.raises(TeacherFileError, match=r"git -C \S+ checkout -- results/teachers/missing-teacher\.pt"):
        get_teacher(cpu.teacher, Path(cpu.teacher_file).with_name("missing-teacher.pt"), "cpu",
                    root=tmp_path)


def test_shipped_file_of_another_config_names_both_keys(shipped, tmp_path):
    path, trained = shipped
    other = replace(TINY, steps=7)
    with pytest.raises(TeacherFileError, match=f"holds teacher {trained.key}.*config is {other.key}"):
        get_teacher(other, path, "cpu", root=tmp_path)
    assert _teachers_in(tmp_path) == []


def test_train_flag_trains_with_one_line_and_a_cached_teacher_serves_a_missing_file(tmp_path, capsys):
    missing = tmp_path / "gone.pt"
    teacher = get_teacher(TINY, missing, "cpu", root=tmp_path, train=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert not teacher.from_cache and teacher.key == TINY.key and len(teacher.loss_history) == TINY.steps
    assert len(err) == 1 and "is missing; training the teacher" in err[0]
    again = get_teacher(TINY, missing, "cpu", root=tmp_path)  # the cache now holds exactly this config
    assert again.from_cache and _same_weights(again, teacher)
    assert capsys.readouterr().err == ""


def test_corrupt_cached_teacher_is_retrained_with_one_line(tmp_path, capsys):
    first = train_teacher(TINY, "cpu", root=tmp_path)
    [cached] = _teachers_in(tmp_path)
    cached.write_bytes(cached.read_bytes()[:100])
    again = train_teacher(TINY, "cpu", root=tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is unusable" in err[0] and "training it again" in err[0]
    assert not again.from_cache and again.loss_history == first.loss_history
    assert load_teacher(cached, "cpu").key == TINY.key  # rewritten whole


def test_corrupt_checkpoint_restarts_training_with_one_line(tmp_path, capsys):
    cfg = replace(TINY, steps=8)
    reference = train_teacher(cfg, "cpu", root=tmp_path / "a")
    folder = tmp_path / "b" / "teachers" / cfg.key
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"not a checkpoint")
    resumed = train_teacher(cfg, "cpu", root=tmp_path / "b")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint" in err[0] and "starting from step 0" in err[0]
    assert resumed.loss_history == reference.loss_history


def test_the_shipped_cpu_teacher_is_the_cpu_presets_teacher(tmp_path):
    cpu = get_preset("cpu")
    assert cpu.teacher_file and Path(cpu.teacher_file).is_file()
    assert Path(cpu.teacher_file).stat().st_size < 2 * 2**20  # small, fp16
    teacher = get_teacher(cpu.teacher, cpu.teacher_file, "cpu", root=tmp_path)
    assert teacher.from_cache and teacher.key == cpu.teacher.key
    assert len(teacher.loss_history) == cpu.teacher.steps


def test_losses_read_in_blocks_give_the_same_teacher_and_callbacks(tmp_path):
    """The fast path reads losses every 100 steps; on the CPU the same block reading is asked for by log_every."""
    cfg = replace(TINY, steps=20)
    seen = {1: [], 7: []}
    step_by_step = train_teacher(cfg, "cpu", root=tmp_path / "a", callback=lambda s, l: seen[1].append((s, l)))
    in_blocks = train_teacher(cfg, "cpu", root=tmp_path / "b", log_every=7,
                              callback=lambda s, l: seen[7].append((s, l)))
    assert in_blocks.loss_history == step_by_step.loss_history and len(in_blocks.loss_history) == 20
    assert seen[7] == seen[1] and [s for s, _ in seen[7]] == list(range(1, 21))
    assert _same_weights(in_blocks, step_by_step)

    class Stop(Exception):
        pass

    def interrupt(step, loss):
        if step == 15:
            raise Stop

    with pytest.raises(Stop):  # step 15 is delivered with the block read at step 17, before the step-20 checkpoint
        train_teacher(cfg, "cpu", root=tmp_path / "c", log_every=7, checkpoint_every=10, callback=interrupt)
    resumed = train_teacher(cfg, "cpu", root=tmp_path / "c", log_every=7, checkpoint_every=10)
    assert resumed.loss_history == step_by_step.loss_history  # resumed from step 10's checkpoint


def test_a_diverging_teacher_names_the_step_when_losses_are_read_in_blocks(tmp_path):
    cfg = replace(TINY, steps=12, lr=1e12, warmup_steps=1)
    with pytest.raises(FloatingPointError, match=r"teacher loss became nan at step \d+; lower the teacher lr"):
        train_teacher(cfg, "cpu", root=tmp_path, log_every=5)


_RANK_SCRIPT = """
import sys, torch, torch.distributed as dist
from dataclasses import replace
from bdense_core.presets import get_preset
from bdense_core.teacher import train_teacher
dist.init_process_group("gloo")
cfg = replace(get_preset("tiny").teacher, steps=int(sys.argv[2]), lr_rampdown=0.5)
teacher = train_teacher(cfg, "cpu", root=sys.argv[1], log_every=3, checkpoint_every=4)
torch.save(dict(history=teacher.loss_history, weights=teacher.denoiser.state_dict()), f"{sys.argv[1]}/rank{dist.get_rank()}.pt")
dist.destroy_process_group()
"""


def _train_data_parallel(folder: Path, steps: int, world: int = 2) -> list[dict]:
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen([sys.executable, "-c", _RANK_SCRIPT, str(folder), str(steps)],
                         env={**os.environ, "RANK": str(r), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
                              "MASTER_PORT": str(port), "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in range(world)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    return [torch.load(folder / f"rank{r}.pt") for r in range(world)]


def test_data_parallel_teacher_is_the_single_process_teacher_at_the_same_global_batch(tmp_path):
    """Two processes (gloo, CPU) that split each global batch train the teacher one process trains with the whole
    batch: the same loss history, the same EMA weights in both processes and in the single run; the cached
    teacher is written once."""
    steps = 8
    cfg = replace(get_preset("tiny").teacher, steps=steps, lr_rampdown=0.5)
    alone = train_teacher(cfg, "cpu", root=tmp_path / "alone")
    ranks = _train_data_parallel(tmp_path / "dp", steps)
    g = torch.Generator().manual_seed(0)
    x, sigma = torch.randn(8, 1, 16, 16, generator=g), torch.logspace(-2, 1.5, 8)
    with torch.no_grad():
        expected = alone.denoiser(x, sigma)
    for got in ranks:
        assert len(got["history"]) == steps
        assert got["history"] == pytest.approx(alone.loss_history, rel=1e-5)
        # compared by what the network computes: a conv bias just before a GroupNorm has no gradient but float
        # noise, which Adam turns into steps of either sign, so those (inert) weights differ between the runs
        twin = build_denoiser(cfg.unet)
        twin.load_state_dict(got["weights"])
        with torch.no_grad():
            torch.testing.assert_close(twin(x, sigma), expected, atol=1e-5, rtol=1e-4)
        assert not torch.equal(twin(x, sigma), build_denoiser(cfg.unet)(x, sigma))  # it did train
    assert ranks[0]["history"] == ranks[1]["history"]
    assert all(torch.equal(v, ranks[1]["weights"][k]) for k, v in ranks[0]["weights"].items())
    assert len(_teachers_in(tmp_path / "dp")) == 1 and not list((tmp_path / "dp").rglob("checkpoint.pt"))


def test_lr_ramp_down_falls_linearly_to_the_last_step_and_leaves_old_keys_alone():
    cfg = replace(get_preset("tiny").teacher, steps=100, warmup_steps=10, lr=1.0, lr_rampdown=0.2)
    lrs = [cfg.lr_at(s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9:80] == [1.0] * 71
    assert lrs[80] == pytest.approx(20 / 21) and lrs[99] == pytest.approx(1 / 21)
    assert all(a > b for a, b in zip(lrs[80:], lrs[81:]))
    assert replace(cfg, lr_rampdown=0.0).key == replace(get_preset("tiny").teacher, steps=100, warmup_steps=10,
                                                         lr=1.0).key != cfg.key
    with pytest.raises(ValueError, match="lr_rampdown"):
        replace(cfg, lr_rampdown=1.0)
