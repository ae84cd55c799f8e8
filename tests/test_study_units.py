"""Fast checks of study/ pieces that need no training: flags, search space, shares (storages: test_storage.py)."""

from __future__ import annotations


import optuna
import pytest
from optuna.trial import TrialState

from study import space
from study.cli import UsageError, parse_config
from study.workers import split_trials

optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("BDENSE_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path / "runs"


def test_defaults_resolve_from_the_preset(runs):
    cfg = parse_config(["--preset", "tiny"])
    assert cfg.preset.name == "tiny" and cfg.framework == "sfd"
    assert cfg.k_choices == (1, 2, 4) and cfg.search_k_choices == (2, 4) and cfg.nfe == cfg.preset.config("sfd").nfe
    assert cfg.objective == "kid"  # 64 FID samples: FID is strongly biased there
    assert cfg.paths == "seed" and cfg.length == "screen" and cfg.students_per_worker >= 1
    assert cfg.storage_url == f"journal:{runs.resolve() / 'optuna-journal.log'}"
    assert cfg.mlflow_uri == f"sqlite:///{runs.resolve() / 'mlflow.db'}"
    assert cfg.artifact_root == runs.resolve() / "mlartifacts"
    assert cfg.study_name == "bdense-tiny-sfd-nfe2-exp-k1-2-4"
    assert cfg.seeds == [0]


def test_settings_a_resumed_study_must_share_name_their_own_study(runs):
    """PD's two distances and an fp32-teacher SFD study get default names apart from the default study's (they
    could not resume it: StudyConfig.compatibility), so one run folder holds them side by side."""
    names = {parse_config(a).study_name for a in (
        ["--preset", "tiny", "--framework", "pd"], ["--preset", "tiny", "--framework", "pd", "--distance", "x"])}
    assert names == {"bdense-tiny-pd-nfe2-exp-k1-2"}
    state = parse_config(["--preset", "tiny", "--framework", "pd", "--distance", "state", "--length", "full"])
    assert state.study_name == "bdense-tiny-pd-nfe2-exp-k1-2-state-full"
    assert parse_config(["--preset", "tiny", "--teacher-fp32"]).study_name == "bdense-tiny-sfd-nfe2-exp-k1-2-4-teacher-fp32"


def test_teacher_substeps_are_the_lcm_and_k1_is_always_searched(runs):
    cfg = parse_config(["--preset", "tiny", "--k", "3", "4", "--seeds-per-trial", "3", "--seed", "5"])
    assert cfg.k_choices == (1, 3, 4)
    assert cfg.settings()["teacher_substeps"] == 12  # lcm(S=4, 3, 4)
    for k in cfg.k_choices:  # every K divides S: the core accepts every trial's config
        assert cfg.trial_config(k, space.BranchWeights(), 0).teacher_substeps == 12
    assert cfg.seeds == [5, 6, 7]


def test_overrides_apply_to_the_preset(runs):
    cfg = parse_config(["--preset", "tiny", "--fid-samples", "16", "--iterations", "3", "--framework", "pd", "--nfe", "4"])
    assert cfg.preset.fid_samples == 16 and cfg.iterations == 3
    assert cfg.k_choices == (1, 2) and cfg.nfe == 4 and cfg.shared["screen"].nfe == 4 and cfg.shared["screen"].rounds == 1


@pytest.mark.parametrize("argv, words", [
    (["--preset", "nope"], "unknown preset"),
    (["--n-trials", "0"], "--n-trials"),
    (["--a-range", "2", "1"], "MIN must be <= MAX"),
    (["--k", "0"], "K choice must be >= 1"),
    (["--b-range", "-1", "2"], "> 0"),
    (["--framework", "pd", "--k", "4"], "K = 1 or 2"),
    (["--framework", "pd", "--nfe", "3"], "NFE must be"),
    (["--seed", "-1"], "--seed must be between"),
    (["--seed", str(2**32)], "--seed must be between"),
    (["--k", "1000000"], "too large"),
    (["--k", "29", "31"], "lcm"),
    (["--k", "1"], "needs a K > 1"),
    (["--n-trials", "0"], "0 only with"),
    (["--device", "cuda:3"], "CUDA is not available"),
])
def test_bad_flags_raise_usage_errors(runs, argv, words):
    with pytest.raises(UsageError, match=words.replace("(", r"\(")):
        parse_config(["--preset", "tiny", *argv] if argv[0] != "--preset" else argv)


def test_ablation_length_defaults_to_the_study_length(runs):
    assert parse_config(["--preset", "tiny", "--ablation", "b"]).ablation_length is None
    assert parse_config(["--preset", "tiny", "--ablation", "nfe"]).ablation_nfe == (2, 3, 4, 5)
    assert parse_config(["--preset", "tiny", "--ablation", "nfe", "--ablation-nfe", "5", "4", "4"]).ablation_nfe == (4, 5)
    with pytest.raises(UsageError, match="every NFE must be >= 1"):
        parse_config(["--preset", "tiny", "--ablation", "nfe", "--ablation-nfe", "0"])
    full = parse_config(["--preset", "tiny", "--ablation", "nfe", "--ablation-length", "full"])
    assert full.ablation_length == "full" and full.length == "screen"
    # the full-length config a trial of that grid trains with is there (without the flag it is not)
    assert full.settings("full")["iterations"] > full.iterations
    with pytest.raises(KeyError):
        parse_config(["--preset", "tiny", "--ablation", "nfe"]).settings("full")


def test_the_uniform_baseline_is_k4_or_the_k_choice_nearest_it(runs):
    assert [space.uniform_baseline_k(ks) for ks in ((1, 2, 3, 4, 6, 8), (1, 6, 8), (1, 2), (1, 3, 5), (1,))] == [
        4, 6, 2, 3, None]
    config = parse_config(["--preset", "fmnist-gpu", "--k", "2", "3", "4", "6", "8", "--device", "cpu"])
    assert space.baseline_params(config)[1] == ("baseline-uniform", {"K": 4, "a": 0.0, "b": 1.0})
    # a study made when the uniform baseline was the largest K (8) gets the K = 4 one on resume, and only once
    study = optuna.create_study()
    attrs = {"fidelity": "screen", "seeds": [0]}
    study.enqueue_trial({"K": 8, "a": 0.0, "b": 1.0}, user_attrs={**attrs, "role": "baseline-uniform"})
    study.enqueue_trial({}, user_attrs={**attrs, "role": "baseline-k1", "K": 1})
    assert space.enqueue_baselines(study, config, attrs) == ["baseline-uniform"]
    assert space.trial_params(study.trials[-1]) == {"K": 4, "a": 0.0, "b": 1.0}
    assert space.enqueue_baselines(study, config, attrs) == []


def test_baselines_and_free_weights(runs):
    exp = parse_config(["--preset", "tiny"])
    assert space.baseline_params(exp) == [
        ("baseline-k1", {"K": 1}), ("baseline-uniform", {"K": 4, "a": 0.0, "b": 1.0}),
    ]
    free = parse_config(["--preset", "tiny", "--weights", "free"])
    study = optuna.create_study()
    attrs = {"fidelity": "screen", "seeds": [0]}
    assert space.enqueue_baselines(study, free, attrs) == ["baseline-k1", "baseline-uniform"]
    assert space.enqueue_baselines(study, free, attrs) == []  # already queued: resume must not queue them twice
    points = []
    for _ in range(2):
        trial = study.ask()
        points.append(space.suggest(trial, free))
        study.tell(trial, 1.0)
    # K = 1 is no point of the search space: it runs without params and carries K = 1 as a user attribute
    assert points[0].branches == 1 and study.trials[0].params == {} and study.trials[0].user_attrs["K"] == 1
    assert points[1].branches == 4 and points[1].weight_values() == [1.0] * 4
    for _ in range(20):  # the search never draws K = 1
        trial = study.ask()
        p = space.suggest(trial, free)
        study.tell(trial, 1.0)
        assert p.branches in (2, 4)
        assert set(trial.params) == {"K", *(f"w{j}" for j in range(1, p.branches + 1))}
        assert all(0.1 <= w <= 10 for w in p.weight_values())


def test_shares_of_trials():
    assert split_trials(4, 2) == [2, 2]
    assert split_trials(5, 2) == [3, 2]
    assert split_trials(2, 4) == [1, 1]


@pytest.mark.parametrize("sampler", ["tpe", "gp", "random"])
@pytest.mark.parametrize("weights", ["exp", "free"])
def test_samplers_and_pruners_work_on_the_space(runs, sampler, weights):
    from study.run import make_pruner, make_sampler

    cfg = parse_config(["--preset", "tiny", "--sampler", sampler, "--weights", weights, "--pruner", "median"])
    study = optuna.create_study(sampler=make_sampler(cfg), pruner=make_pruner(cfg))
    space.enqueue_baselines(study, cfg, {"fidelity": "screen", "seeds": [0]})

    def fake(trial):
        p = space.suggest(trial, cfg)
        return float(sum(p.weight_values())) + p.branches

    study.optimize(fake, n_trials=6)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert {t.params.get("K", t.user_attrs.get("K")) for t in study.trials} <= set(cfg.k_choices)
    assert sum(t.user_attrs.get("K") == 1 for t in study.trials) == 1  # only the baseline runs K = 1


def test_the_best_trial_is_taken_at_the_study_nfe():
    from optuna.distributions import FloatDistribution, IntDistribution

    from study.summary import best_trial

    study = optuna.create_study()
    study.set_user_attr("nfe", 2)
    dists = {"K": IntDistribution(1, 8), "a": FloatDistribution(-1, 1)}
    for value, k, attrs in ((22.6, 1, {}), (22.3, 4, {}), (11.3, 4, {"nfe": 5}), (16.2, 1, {"nfe": 3}),
                            (22.1, 4, {"nfe": 2}), (20.0, 4, {"fidelity": "full"})):
        study.add_trial(optuna.trial.create_trial(params={"K": k, "a": 0.5}, distributions=dists, value=value,
                                                  user_attrs=attrs))
    best = best_trial(study)
    assert best.value == 22.1 and best.number == 4
    study.set_user_attr("nfe", 5)
    assert best_trial(study).value == 11.3


def test_sample_grids_are_greyscale_for_one_channel_and_keep_the_pixels(tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    from study.tracking import save_sample_grid

    images = torch.linspace(-1, 1, 4 * 8 * 8).reshape(4, 1, 8, 8)
    grey = np.asarray(Image.open(save_sample_grid(images, tmp_path / "g.png", nrow=2)))
    assert grey.shape == (2 + 2 * 10, 2 + 2 * 10)  # 2x2 tiles of 8 px with 2 px padding
    assert grey[2, 2] == 0 and grey[-3, -3] == 255 and grey[0, 0] == 255  # darkest, brightest, padding
    colour = Image.open(save_sample_grid(images.repeat(1, 3, 1, 1), tmp_path / "c.png", nrow=2))
    assert colour.mode == "RGB" and np.array_equal(np.asarray(colour)[..., 0], grey)


def test_a_teacher_file_replaces_the_presets_teacher(runs, tmp_path):
    from dataclasses import replace

    from bdense_core.presets import get_preset
    from bdense_core.teacher import save_teacher, train_teacher

    tiny = get_preset("tiny").teacher
    mine = replace(tiny, steps=3, lr=1e-3)
    path = save_teacher(train_teacher(mine, "cpu", root=tmp_path / "cache"), tmp_path / "mine.pt")
    cfg = parse_config(["--preset", "tiny", "--teacher-file", str(path)])
    assert cfg.preset.teacher == mine and cfg.preset.teacher.key != tiny.key
    assert cfg.preset.teacher_file == str(path.resolve()) and cfg.preset.data == tiny.data

    other = replace(mine, data=replace(tiny.data, n_images=256))
    elsewhere = save_teacher(train_teacher(other, "cpu", root=tmp_path / "cache"), tmp_path / "other.pt")
    with pytest.raises(UsageError, match="trained on other data than preset tiny's"):
        parse_config(["--preset", "tiny", "--teacher-file", str(elsewhere)])
    with pytest.raises(UsageError, match="--teacher-file: teacher checkpoint .* not found"):
        parse_config(["--preset", "tiny", "--teacher-file", str(tmp_path / "none.pt")])


def test_workers_build_different_banks_first(runs, tmp_path, monkeypatch):
    """``Banks.prefetch``: a bank another process is building (its lock held) is skipped, the others are built,
    so workers that need the same seeds' banks build different ones at the same time."""
    import fcntl

    from bdense_core.distill.sfd import bank_key
    from bdense_core.schedule import BranchWeights
    from bdense_core.teacher import train_teacher
    from study.workers import Banks

    monkeypatch.setenv("BDENSE_CACHE_DIR", str(tmp_path / "cache"))
    cfg = parse_config(["--preset", "tiny", "--device", "cpu"])
    teacher = train_teacher(cfg.preset.teacher, "cpu")
    banks = Banks(cfg, teacher, keep=4)

    def file(seed):
        grid = cfg.trial_config(max(cfg.k_choices), BranchWeights(), seed, cfg.nfe, cfg.length)
        n = grid.iterations * grid.batch_size
        return cfg.cache_root / "banks" / bank_key(teacher.key, grid, n, seed + Banks.OFFSET, tuple(cfg.k_choices))

    file(0).parent.mkdir(parents=True)
    with open(file(0).with_suffix(".lock"), "a") as other:  # another worker builds seed 0's bank
        fcntl.flock(other, fcntl.LOCK_EX)
        banks.prefetch([(cfg.nfe, cfg.length, 0), (cfg.nfe, cfg.length, 1), (cfg.nfe, cfg.length, 2)])
        assert set(banks.cache) == {(cfg.nfe, cfg.length, 1), (cfg.nfe, cfg.length, 2)}
        assert not file(0).exists() and file(1).exists() and file(2).exists()
    assert banks(cfg.nfe, cfg.length, 0) is not None and file(0).exists()  # asked for: waited for, then built


def test_a_process_keeps_the_banks_of_the_seeds_its_trials_go_round(runs, monkeypatch):
    """Trials go round a phase's seeds (a grid trial trains each seed in turn): a process keeps that many banks
    (at least 2), the least recently used leaves first, so going round three seeds loads each bank once."""
    from study.workers import Banks

    assert Banks.seeds_in_turn(parse_config(["--preset", "tiny"])) == 2
    assert Banks.seeds_in_turn(parse_config(["--preset", "tiny", "--seeds-per-trial", "4"])) == 4
    confirm = parse_config(["--preset", "tiny", "--confirm-top", "2", "--confirm-seeds", "3"])
    assert Banks.seeds_in_turn(confirm) == 3
    assert Banks.seeds_in_turn(parse_config(["--preset", "tiny", "--ablation", "b", "--ablation-seeds", "5"])) == 5

    loads = []
    monkeypatch.setattr(type(confirm.fw), "shared_paths",
                        lambda self, teacher, grid, size, seed, root, k_choices, wait: loads.append(seed) or seed)
    banks = Banks(confirm, teacher=None)
    for seed in (1000, 1001, 1002) * 3:
        assert banks(confirm.nfe, "full", seed) == seed + Banks.OFFSET
    assert loads == [s + Banks.OFFSET for s in (1000, 1001, 1002)]
    two = Banks(confirm, teacher=None, keep=2)
    for seed in (0, 1, 0, 2, 0):  # 1 leaves when 2 comes (0 was used after it): 0 stays
        two(confirm.nfe, "full", seed)
    assert loads[3:] == [s + Banks.OFFSET for s in (0, 1, 2)]


def test_teacher_fp32_is_a_recorded_setting_of_sfd_studies(runs):
    plain = parse_config(["--preset", "tiny"])
    fp32 = parse_config(["--preset", "tiny", "--teacher-fp32"])
    assert plain.shared[plain.length].teacher_bf16 and not fp32.shared[fp32.length].teacher_bf16
    # named in the tables and in what a resumed study must share, only where it is on (older stores read as before)
    assert "teacher_fp32" not in plain.settings() and fp32.settings()["teacher_fp32"] is True
    assert "teacher_fp32" not in plain.compatibility() and fp32.compatibility()["teacher_fp32"] is True
    from study.objective import teacher_paths_label

    assert teacher_paths_label(plain) == "seed bank" and teacher_paths_label(fp32) == "seed bank, teacher in fp32"
    with pytest.raises(UsageError, match="--teacher-fp32 applies to --framework sfd only"):
        parse_config(["--preset", "tiny", "--framework", "pd", "--teacher-fp32"])


@pytest.mark.parametrize("queued", [False, True])
def test_ctrl_c_while_a_trial_is_asked_for_fails_that_trial(runs, tmp_path, monkeypatch, queued):
    """A Ctrl-C that lands after Optuna has made a trial RUNNING but before the loop has labelled it (owner,
    device): the loop still holds the trial, fails it with the reason and lets the interrupt go on. (A trial
    left RUNNING by an interrupted process is what session 12's PD study brought back.) ``queued``: the trial
    comes from the queue the confirmation fills (enqueue_trial), as the PD confirmation's did."""
    import signal
    from types import SimpleNamespace

    import torch

    import study.loop as loop_module
    from study.loop import Loop
    from study.objective import Context
    from study.storage import open_study_storage, record_heartbeats

    storage, _ = open_study_storage(f"journal:{tmp_path / 'j.log'}", "intr")
    study = optuna.load_study(study_name="intr", storage=storage)
    if queued:
        study.enqueue_trial({"k": 1}, user_attrs={"role": "confirm"})
        study.enqueue_trial({"k": 1})  # a second trial the interrupt must not touch

    def interrupted_here():
        signal.raise_signal(signal.SIGINT)  # Python's own handler turns it into KeyboardInterrupt, as in a study

    monkeypatch.setattr(loop_module, "owner_attrs", interrupted_here)
    cfg = parse_config(["--preset", "tiny", "--device", "cpu"])
    ctx = Context(config=cfg, teacher=SimpleNamespace(device=torch.device("cpu")), evaluator=None, tracker=None,
                  parent_run_id="", paths=lambda *a: None)
    with record_heartbeats(storage, study) as beats:
        loop = Loop(study, ctx, storage, beats)
        with pytest.raises(KeyboardInterrupt):
            loop.run(1)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] + [TrialState.WAITING] * queued
    assert trials[0].user_attrs["fail_reason"] == "interrupted"
    assert loop.tally.by_state["FAIL"] == [0] and not loop.running and not loop.pending
