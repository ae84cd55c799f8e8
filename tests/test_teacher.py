"""get_teacher with a shipped teacher file: the file is used when it holds the preset's config; a missing, damaged
or outdated file is one clear error naming the fix (never a silent long training); a damaged *cached* teacher is
retrained with one line saying so. Also pins the shipped cpu teacher to the cpu preset's config."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bdense_core.presets import get_preset
from bdense_core.teacher import TeacherFileError, get_teacher, load_teacher, save_teacher, train_teacher

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
