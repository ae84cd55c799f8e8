"""B-DENSE distillation: targets on an analytic toy, training on real (procedural) images, configs, teacher cache."""

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bdense_core.data import load_images
from bdense_core.distill import (
    DivergenceError, PDConfig, SFDConfig, build_trajectory_bank, cached_trajectory_bank, distill, endpoint_error,
    make_student, needed_points,
)
from bdense_core.distill.progressive import branch_losses, pd_endpoint_error
from bdense_core.distill.sfd import TrajectoryBank, teacher_trajectories
from bdense_core.presets import PRESETS, get_preset
from bdense_core.schedule import BranchWeights
from bdense_core.teacher import Teacher, TeacherConfig, draw_noise, load_teacher, save_teacher, train_teacher

TINY = get_preset("tiny")
MU, S = -0.2, 0.5


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return train_teacher(TINY.teacher, "cpu", root=tmp_path_factory.mktemp("cache"))


class GaussianDenoiser(torch.nn.Module):
    """The ideal denoiser of N(MU, S^2 I) data."""

    def forward(self, x, sigma):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return MU + S**2 / (S**2 + sigma**2) * (x - MU)


def test_branch_targets_equal_analytic_intermediate_states():
    cfg = SFDConfig(nfe=2, branches=4, teacher_substeps=64, afs=True, teacher_solver="dpmpp3")
    toy = Teacher(GaussianDenoiser(), TeacherConfig(), key="gaussian")
    x_T = torch.randn(4, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * cfg.sigma_max
    states = teacher_trajectories(toy, x_T, cfg)
    grid = cfg.teacher_grid().double()
    assert states.shape[1] == cfg.intervals * 64 + 1
    for interval in range(cfg.intervals):
        idx = cfg.branch_indices(interval)
        assert idx[-1] == (interval + 1) * 64  # the last branch is the student's next timestamp
        for j in idx:
            exact = MU + (x_T - MU) * math.sqrt((S**2 + grid[j] ** 2) / (S**2 + cfg.sigma_max**2))
            assert (states[:, j] - exact).abs().max() < 2e-3 * (1 + exact.abs().max())


def test_branch_indices_split_each_interval_evenly():
    cfg = SFDConfig(nfe=3, branches=2, teacher_substeps=4, afs=False)
    assert [cfg.branch_indices(i) for i in range(cfg.intervals)] == [[2, 4], [6, 8], [10, 12]]
    assert SFDConfig(branches=1, teacher_substeps=4).branch_indices(1) == [8]


def test_sfd_lowers_endpoint_error_and_records_branch_losses(teacher):
    cfg = replace(TINY.config("sfd"), branches=4, iterations=30, weights=BranchWeights(a=0.3, b=0.5))
    before = endpoint_error(make_student(teacher.denoiser, 4).eval(), teacher, cfg)
    result = distill(teacher, cfg)
    after = endpoint_error(result.student, teacher, cfg)
    assert after < 0.85 * before, (before, after)
    assert len(result.history) == 30
    rec = result.history[0]
    w = cfg.weights.weights(4)
    assert set(rec) >= {"step", "loss", "endpoint_l1"} | {f"loss_branch_{k}" for k in range(1, 5)}
    weighted = sum(float(w[k]) * rec[f"loss_branch_{k + 1}"] for k in range(4))
    assert rec["loss"] == pytest.approx(weighted, rel=1e-5)
    imgs = result.sample(10, seed=0)
    assert imgs.shape == (10, 1, 16, 16) and imgs.min() >= -1 and imgs.max() <= 1
    assert torch.equal(imgs, result.sample(10, seed=0))  # seeded


def test_sfd_baseline_k1_also_learns(teacher):
    cfg = replace(TINY.config("sfd"), branches=1, iterations=30)
    before = endpoint_error(make_student(teacher.denoiser, 1).eval(), teacher, cfg)
    after = endpoint_error(distill(teacher, cfg).student, teacher, cfg)
    assert after < 0.85 * before


def test_trajectory_bank_matches_fresh_teacher_paths(teacher):
    cfg = replace(TINY.config("sfd"), branches=2, iterations=3)
    bank = build_trajectory_bank(teacher, 8, cfg, seed=3, batch_size=4)
    x_T = draw_noise(8, teacher.image_shape, cfg.sigma_max, seed=3, device="cpu")
    assert torch.allclose(bank.states, teacher_trajectories(teacher, x_T, cfg), atol=1e-5)
    # path i starts from noise row i whatever the batch size
    assert torch.allclose(build_trajectory_bank(teacher, 8, cfg, seed=3, batch_size=8).states, bank.states, atol=1e-5)
    result = distill(teacher, cfg, bank=bank)
    assert len(result.history) == 3
    with pytest.raises(ValueError, match="another grid"):
        distill(teacher, replace(cfg, nfe=3), bank=bank)


def test_bank_keeps_only_the_branch_targets_and_is_cached(teacher, tmp_path):
    """A bank for K in {1, 2, 4} holds x_T and the targets of those K only; a second process loads it from
    disk; a student trained from it equals one trained from the full bank (same batches, same targets)."""
    cfg = replace(TINY.config("sfd"), branches=4, iterations=3)
    pts = needed_points(cfg, (1, 2, 4))
    # S = 4, NFE 2 with AFS: intervals 1 and 2 are trained; K = 4 targets every sub-step of them
    assert pts == (0, 5, 6, 7, 8, 9, 10, 11, 12)
    assert needed_points(cfg, (1, 2)) == (0, 6, 8, 10, 12)
    full = build_trajectory_bank(teacher, 8, cfg, seed=3, batch_size=4)
    small = cached_trajectory_bank(teacher, 8, cfg, seed=3, root=tmp_path, k_choices=(1, 2, 4),
                                   dtype=torch.float32)
    assert small.points == pts and torch.equal(small.states, full.states[:, list(pts)])
    assert len(list((tmp_path / "banks").glob("bank-*.pt"))) == 1
    again = cached_trajectory_bank(teacher, 8, cfg, seed=3, root=tmp_path, k_choices=(1, 2, 4),
                                   dtype=torch.float32)
    assert torch.equal(again.states, small.states) and again.points == pts
    a, b = distill(teacher, cfg, bank=full), distill(teacher, cfg, bank=small)
    assert [r["loss"] for r in a.history] == pytest.approx([r["loss"] for r in b.history], rel=1e-6)
    narrow = cached_trajectory_bank(teacher, 8, cfg, seed=3, root=tmp_path, k_choices=(1, 2))
    with pytest.raises(ValueError, match="no teacher state at grid point 5"):
        distill(teacher, cfg, bank=narrow)  # K = 4 needs sub-step targets a K in {1, 2} bank lacks


def _resident_bytes() -> int:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads resident memory from Linux's /proc")
def test_a_cached_bank_is_mapped_from_its_file_not_read_in_whole(teacher, tmp_path):
    """A study's worker loads its banks (14.1 GiB each at NFE 3) by mapping the file: loading costs next to no
    resident memory (its pages come from the page cache as rows are drawn, one copy for every worker of a
    machine), and the rows are the saved ones."""
    from bdense_core.distill.sfd import bank_path

    cfg = replace(TINY.config("sfd"), branches=4)
    pts = needed_points(cfg, (1, 2, 4))
    row = len(pts) * math.prod(teacher.image_shape) * 2
    n = (256 * 2**20) // row
    states = torch.randn(n, len(pts), *teacher.image_shape).to(torch.float16)
    path = bank_path(teacher, n, cfg, 7, tmp_path, (1, 2, 4))
    path.parent.mkdir(parents=True)
    torch.save({"states": states, "grid": cfg.teacher_grid(), "points": list(pts)}, path)
    before = _resident_bytes()
    bank = cached_trajectory_bank(teacher, n, cfg, seed=7, root=tmp_path, k_choices=(1, 2, 4))
    grew = _resident_bytes() - before
    assert grew < states.nbytes / 8, (grew, states.nbytes)  # read in whole it grows by 256 MiB
    assert bank.points == pts and torch.equal(bank.states, states)


def test_a_bank_another_process_is_building_is_waited_for_not_built_twice(teacher, tmp_path):
    """The builder of a bank holds a lock on its .lock file: ``wait=False`` then returns None without building,
    and once the lock is free the bank is built (or loaded) as usual. flock locks belong to an open file, so a
    second open of the lock file here stands for another process."""
    import fcntl

    from bdense_core.distill.sfd import bank_key

    cfg = replace(TINY.config("sfd"), branches=4, iterations=3)
    path = tmp_path / "banks" / bank_key(teacher.key, cfg, 8, 5, (1, 2, 4))
    path.parent.mkdir(parents=True)
    with open(path.with_suffix(".lock"), "a") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        assert cached_trajectory_bank(teacher, 8, cfg, seed=5, root=tmp_path, k_choices=(1, 2, 4), wait=False) is None
        assert not path.exists()
        fcntl.flock(other, fcntl.LOCK_UN)
    bank = cached_trajectory_bank(teacher, 8, cfg, seed=5, root=tmp_path, k_choices=(1, 2, 4), wait=False)
    assert bank is not None and path.exists() and bank.states.shape[0] == 8


def test_noise_from_a_later_chunk_is_the_same_rows_of_the_whole_draw():
    from bdense_core.teacher import NOISE_CHUNK, generator, noise_batches

    whole = torch.cat([x for x, _ in noise_batches(1300, (1, 2, 2), 80.0, generator(7, "cpu"), 300)])
    tail = torch.cat([x for x, _ in noise_batches(1300, (1, 2, 2), 80.0, generator(7, "cpu"), 300, first=NOISE_CHUNK)])
    assert torch.equal(tail, whole[NOISE_CHUNK:])
    with pytest.raises(ValueError, match="multiple of"):
        next(noise_batches(1300, (1, 2, 2), 80.0, generator(7, "cpu"), 300, first=7))


def test_a_bank_solved_in_parts_is_the_bank_solved_whole(teacher, tmp_path):
    """Parts solved apart (several GPUs) and joined give the very file one process would have solved: the
    same rows under the same key, loaded without solving again."""
    from bdense_core.distill import sfd

    cfg = replace(TINY.config("sfd"), branches=4, iterations=3)
    n = 1100
    assert [sfd.part_rows(n, i, 2) for i in range(2)] == [(0, 500), (500, 1100)]
    assert [sfd.part_rows(200_064, i, 2) for i in range(2)] == [(0, 100_000), (100_000, 200_064)]
    with pytest.raises(ValueError, match="too small"):
        sfd.part_rows(n, 0, 3)
    whole = cached_trajectory_bank(teacher, n, cfg, seed=4, root=tmp_path / "whole", k_choices=(1, 2, 4))
    root = tmp_path / "parts"
    assert "1 part(s) still to come" in sfd.cached_bank_part(teacher, n, cfg, 4, root, 1, 2, k_choices=(1, 2, 4))
    said = sfd.cached_bank_part(teacher, n, cfg, 4, root, 0, 2, k_choices=(1, 2, 4))
    assert "2 parts joined" in said
    files = sorted(p.name for p in (root / "banks").iterdir() if not p.name.endswith(".lock"))
    assert files == [sfd.bank_path(teacher, n, cfg, 4, root, (1, 2, 4)).name]  # the parts are gone
    assert "already" in sfd.cached_bank_part(teacher, n, cfg, 4, root, 0, 2, k_choices=(1, 2, 4))

    def solve(*args, **kwargs):
        raise AssertionError("solved again")

    original, sfd.build_trajectory_bank = sfd.build_trajectory_bank, solve
    try:
        joined = cached_trajectory_bank(teacher, n, cfg, seed=4, root=root, k_choices=(1, 2, 4))
    finally:
        sfd.build_trajectory_bank = original
    assert joined.points == whole.points and torch.equal(joined.states, whole.states)


def test_an_fp32_teacher_bank_has_its_own_key_and_bf16_keys_are_unchanged():
    from bdense_core.distill.sfd import bank_key

    cfg = TINY.config("sfd")
    fp32 = replace(cfg, teacher_bf16=False)
    assert bank_key("t", fp32, 8, 0, None, fast=True) != bank_key("t", cfg, 8, 0, None, fast=True)
    # the eager path never runs the compiled teacher: the switch changes nothing there
    assert bank_key("t", fp32, 8, 0, None, fast=False) == bank_key("t", cfg, 8, 0, None, fast=False)
    # the key of a bf16 bank is what it was before the switch existed (banks cached on disk stay valid)
    import hashlib
    what = ("v2", "t", cfg.intervals, cfg.teacher_substeps, cfg.teacher_solver, cfg.sigma_min, cfg.sigma_max,
            cfg.rho, cfg.amp, True, 8, 0, None)
    assert bank_key("t", cfg, 8, 0, None, fast=True) == "bank-" + hashlib.sha256(repr(what).encode()).hexdigest()[:16] + ".pt"


def test_large_banks_live_in_host_memory_by_a_fixed_size_rule():
    from bdense_core.distill.sfd import BANK_GPU_BYTES, bank_device

    assert bank_device("cuda:1", BANK_GPU_BYTES) == torch.device("cuda:1")
    assert bank_device("cuda:1", BANK_GPU_BYTES + 1) == torch.device("cpu")
    assert bank_device("cpu", 10 * BANK_GPU_BYTES) == torch.device("cpu")


def test_draws_from_a_host_bank_equal_indexing_it_and_keep_what_they_returned(teacher):
    """PathDraws gathers a host-memory bank's rows into two reused buffers: every batch equals the bank indexed
    at the stream's rows (passes crossed, two seeds), and a batch already handed out is not overwritten."""
    from bdense_core.distill.sfd import PathDraws, PathStream

    cfg = TINY.config("sfd")
    states = torch.randn(20, 3, 1, 4, 4).half()  # 20 paths of 3 points: a batch of 8 crosses a pass every 2.5 draws
    banks = [TrajectoryBank(s, cfg.teacher_grid(), (0, 4, 8)) for s in (states, states + 1)]
    draws = PathDraws([PathStream(7, banks[0], teacher.device), PathStream(8, banks[1], teacher.device)], teacher,
                      cfg, batch=8, fast=False)
    again = [PathStream(7, banks[0], teacher.device), PathStream(8, banks[1], teacher.device)]
    assert draws.host
    got, want = [], []
    for _ in range(6):
        got.append(draws())
        want.append(torch.stack([st.bank.states[st.rows(8)] for st in again]))
    for g, w in zip(got, want):  # compared after all six draws: the reused buffers left earlier batches alone
        assert g.shape == (2, 8, 3, 1, 4, 4) and g.dtype == torch.float16
        assert torch.equal(g, w)


def test_a_group_trains_alike_from_its_banks_subset_and_streams_keep_their_rows(teacher):
    """A host bank's GPU copy holds only the columns its group needs (bank_subset at group_points): students of
    K = 1 and K = 4 with two seeds' banks train exactly as from the whole banks, and a stream moved to the
    subset (serve_from) draws the rows it would have drawn from the whole bank, across passes."""
    from bdense_core.distill.sfd import PathStream, bank_subset, group_points, train_sfd_many

    cfg = replace(TINY.config("sfd"), iterations=3)
    k = (1, 2, 4)
    banks = [build_trajectory_bank(teacher, 8, cfg, seed=s, batch_size=4, k_choices=k) for s in (3, 4)]
    configs = [replace(cfg, branches=1, seed=3), replace(cfg, branches=2, seed=4)]
    pts = group_points(configs)
    assert pts == (0, 6, 8, 10, 12) and len(pts) < len(banks[0].points)  # K = 4's sub-step targets left out
    subs = [bank_subset(b, pts, torch.device("cpu"), chunk_bytes=1) for b in banks]  # one row a chunk
    assert subs[0].points == pts and torch.equal(subs[0].states, banks[0].states[:, banks[0].columns(list(pts))])
    whole, part = train_sfd_many(teacher, configs, banks), train_sfd_many(teacher, configs, subs)
    for a, b in zip(whole, part):
        assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]
    with pytest.raises(ValueError, match="no teacher state at grid point 5"):
        distill(teacher, replace(cfg, branches=4, seed=3), bank=subs[0])
    moved, kept = PathStream(9, banks[0], teacher.device), PathStream(9, banks[0], teacher.device)
    got = [moved.rows(5)]
    moved.serve_from(subs[0])
    got += [moved.rows(5) for _ in range(4)]  # 25 rows of a bank of 8: three passes crossed
    assert torch.equal(torch.cat(got), torch.cat([kept.rows(5) for _ in range(5)]))
    with pytest.raises(ValueError, match="same rows"):
        moved.serve_from(TrajectoryBank(subs[0].states[:4], subs[0].grid, pts))


def test_progressive_distillation_lowers_error_against_teacher(teacher):
    data = load_images(TINY.teacher.data)
    for k in (1, 2):
        cfg = replace(TINY.config("pd"), branches=k, iterations=30)
        s0 = make_student(teacher.denoiser, k).eval()
        before = pd_endpoint_error(s0, teacher.denoiser, cfg, cfg.nfe, cfg.teacher_steps, teacher.image_shape)
        result = distill(teacher, cfg, data=data)
        after = pd_endpoint_error(result.student, teacher.denoiser, cfg, cfg.nfe, cfg.teacher_steps, teacher.image_shape)
        assert after < 0.9 * before, (k, before, after)
        assert len(result.history) == cfg.rounds * cfg.iterations
        assert [r["student_steps"] for r in result.history[:: cfg.iterations]] == [4.0, 2.0]
        if k == 2:  # branch 1's target is the teacher's own first Euler sub-step: zero loss at init
            assert result.history[0]["loss_branch_1"] < 1e-8 < result.history[0]["loss_branch_2"]


def test_pd_state_distance_at_initialisation(teacher):
    """The student starts as the teacher: branch 1's jump to the midpoint is the teacher's first step (zero
    loss), and branch 2's error is only the teacher's second step's change of slope, (s - mid)(d_mid - d_t)."""
    cfg = replace(TINY.config("pd"), branches=2, distance="state")
    student = make_student(teacher.denoiser, 2).eval()
    fine = cfg.grid(cfg.teacher_steps)  # round 1: the student's N steps inside the teacher's 2N
    i = torch.arange(cfg.teacher_steps // 2)
    t, mid, s = (fine[2 * i + j].view(-1, 1, 1, 1) for j in range(3))
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand((len(i), *teacher.image_shape), generator=g) * 2 - 1
    z = x0 + t * torch.randn(x0.shape, generator=g)
    d = teacher.denoiser
    with torch.no_grad():
        per = branch_losses(student, d, z, t, mid, s, cfg)
        d_t = (z - d(z, t.flatten())) / t
        z_mid = z + (mid - t) * d_t
        d_mid = (z_mid - d(z_mid, mid.flatten())) / mid
        expected = ((1 + 1 / t.flatten()) * ((s - mid) * (d_mid - d_t)).pow(2).flatten(1).mean(1)).mean()
    assert per.shape == (2,)
    assert float(per[0]) < 1e-10 and float(per[1]) > 1e-4
    assert float(per[1]) == pytest.approx(float(expected), rel=1e-4)
    with torch.no_grad():  # gamma = 0: unweighted squared error of the same states
        flat = branch_losses(student, d, z, t, mid, s, replace(cfg, gamma=0.0))
    assert float(flat[1]) == pytest.approx(float(((s - mid) * (d_mid - d_t)).pow(2).mean()), rel=1e-4)


def test_pd_state_distance_trains_and_reports_every_round(teacher):
    """PD with the authors' state distance lowers the student's error against the teacher; ``on_round`` is
    called once per round with that round's student, which samples at the round's step count."""
    from bdense_core.distill import get_framework

    data = load_images(TINY.teacher.data)
    cfg = replace(TINY.config("pd"), branches=2, iterations=30, distance="state")
    shape = teacher.image_shape
    before = pd_endpoint_error(make_student(teacher.denoiser, 2).eval(), teacher.denoiser, cfg, cfg.nfe,
                               cfg.teacher_steps, shape)
    seen, errors = [], []

    def on_round(index, steps, res):
        seen.append((index, steps, res.nfe, len(res.history)))
        imgs = res.sample(4, seed=0)
        assert imgs.shape == (4, *shape) and torch.equal(imgs, res.sample(4, seed=0))
        errors.append(pd_endpoint_error(res.student, teacher.denoiser, cfg, steps, cfg.teacher_steps, shape))

    result = get_framework("pd").train(teacher, cfg, data=data, on_round=on_round)
    assert seen == [(1, 4, 4, 30), (2, 2, 2, 60)]
    after = pd_endpoint_error(result.student, teacher.denoiser, cfg, cfg.nfe, cfg.teacher_steps, shape)
    assert after < 0.9 * before, (before, after)
    assert errors[-1] == pytest.approx(after, rel=1e-5)  # the last round's student is the one returned
    assert result.history[0]["loss_branch_1"] < 1e-10 < result.history[0]["loss_branch_2"]


def test_pd_runs_in_fp32_because_bf16_rounding_swamps_its_first_updates():
    """The shipped fmnist-gpu teacher on the CPU: a PD student that starts as its teacher has an x-distance loss
    at fp32 rounding level on branch 1 and a small one on branch 2; a bf16 student multiplies branch 2's by more
    than 10 (the truncated-SNR weight amplifies its rounding), so no preset trains PD under bf16 autocast."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from pd_precision import init_losses

    preset = get_preset("fmnist-gpu")
    teacher = load_teacher(preset.teacher_file, "cpu")
    images = load_images(preset.data).images
    cfg = replace(preset.config("pd"), branches=2, batch_size=64)
    fp32 = init_losses(teacher, cfg, images, "fp32", batches=1)
    bf16 = init_losses(teacher, cfg, images, "bf16 student", batches=1)
    assert fp32[0] < 1e-8 < fp32[1] < 1e-3
    assert bf16[1] > 10 * fp32[1] and bf16[0] > 1e3 * fp32[0]
    assert not any(get_preset(name).config("pd").amp for name in PRESETS)


def test_pd_records_read_in_blocks_equal_records_read_every_update(teacher):
    """The fast path reads PD's records from the device every 20 updates; blocks (the last one short, at each
    round's end) deliver the same records, in order, as reading every update, and the same student."""
    data = load_images(TINY.teacher.data)
    cfg = replace(TINY.config("pd"), branches=2, iterations=7, distance="state", weights=BranchWeights(a=0.5))
    seen = []
    every = distill(teacher, replace(cfg, log_every=1), data=data)
    blocks = distill(teacher, replace(cfg, log_every=3), data=data, callback=seen.append)
    assert blocks.history == every.history == seen and len(seen) == 2 * 7
    assert [r["step"] for r in seen] == list(map(float, range(1, 15))) and seen[7]["round"] == 2.0
    x = torch.randn(3, *teacher.image_shape) * cfg.sigma_max
    with torch.no_grad():
        assert torch.equal(blocks.sampler(x), every.sampler(x))
        assert torch.equal(blocks.solve_with(blocks.student, x), blocks.sampler(x))  # what the fast sampler runs


def test_pd_engine_copies_each_rounds_teacher_into_its_slot(teacher):
    """The teacher slot after ``load_teacher(student)`` is the student's endpoint branch, and the student that
    ``start`` hands out is the teacher's network with a widened head (a second trial starts afresh)."""
    from bdense_core.distill.progressive import PDEngine

    cfg = replace(TINY.config("pd"), branches=2)
    engine = PDEngine(teacher, cfg, fast=False)
    student = engine.start(teacher)
    z, t = torch.randn(4, *teacher.image_shape), torch.full((4,), 2.0)
    with torch.no_grad():
        assert torch.allclose(engine.slot(z, t), teacher.denoiser(z, t), atol=1e-6)
        assert torch.allclose(student(z, t), teacher.denoiser(z, t), atol=1e-6)
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
        engine.load_teacher(student)
        assert torch.allclose(engine.slot(z, t), student(z, t), atol=1e-5)
        assert not torch.allclose(engine.slot(z, t), teacher.denoiser(z, t), atol=1e-3)
        again = engine.start(teacher)
        assert again is student and torch.allclose(again(z, t), teacher.denoiser(z, t), atol=1e-6)


def test_divergence_is_reported(teacher):
    cfg = replace(TINY.config("sfd"), branches=2, iterations=2, weights=BranchWeights(a=0.0, b=1e39))
    with pytest.raises(DivergenceError, match="became (nan|inf) at step 1"):
        distill(teacher, cfg)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: SFDConfig(branches=0), "K .* must be >= 1"),
        (lambda: SFDConfig(nfe=0), "NFE must be >= 1"),
        (lambda: SFDConfig(branches=3, teacher_substeps=4), r"K=3 does not divide .* S=4"),
        (lambda: SFDConfig(weights=BranchWeights(a=float("inf"))), "finite"),
        (lambda: SFDConfig(teacher_solver="rk45"), "unknown solver"),
        (lambda: PDConfig(branches=3), "K = 1 or 2"),
        (lambda: PDConfig(teacher_steps=12, rounds=3), "cannot be halved"),
        (lambda: PDConfig(distance="eps"), "unknown PD distance"),
        (lambda: TeacherConfig(sampler="ddpm"), "unknown solver"),
    ],
)
def test_bad_configs_raise_one_clear_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_pd_needs_data(teacher):
    with pytest.raises(ValueError, match="data="):
        distill(teacher, TINY.config("pd"))


def test_teacher_cache_resume_and_file_roundtrip(tmp_path):
    cfg = replace(TINY.teacher, steps=20)
    full = train_teacher(cfg, "cpu", root=tmp_path / "a")
    again = train_teacher(cfg, "cpu", root=tmp_path / "a")
    assert again.from_cache and not full.from_cache and again.key == full.key == cfg.key

    class Stop(Exception):
        pass

    def interrupt(step, loss):
        if step == 15:
            raise Stop

    with pytest.raises(Stop):
        train_teacher(cfg, "cpu", root=tmp_path / "b", callback=interrupt, checkpoint_every=10)
    resumed = train_teacher(cfg, "cpu", root=tmp_path / "b", checkpoint_every=10)
    assert resumed.loss_history == full.loss_history  # resumed from step 10 with the same RNG state

    path = save_teacher(full, tmp_path / "teacher.pt", half=True)
    loaded = load_teacher(path, "cpu")
    assert loaded.key == full.key and loaded.config == full.config
    x = torch.randn(4, 1, 16, 16) * 5
    with torch.no_grad():
        assert torch.allclose(loaded.denoiser(x, torch.tensor(2.0)), full.denoiser(x, torch.tensor(2.0)), atol=2e-2)
    with pytest.raises(FileNotFoundError, match="train one"):
        load_teacher(tmp_path / "missing.pt")


def test_teacher_training_pauses_at_its_budget_and_resumes_identically(tmp_path):
    from bdense_core.teacher import TrainingPaused

    cfg = replace(TINY.teacher, steps=12)
    full = train_teacher(cfg, "cpu", root=tmp_path / "a")
    with pytest.raises(TrainingPaused) as info:
        train_teacher(cfg, "cpu", root=tmp_path / "b", time_budget_s=0.0)
    assert info.value.step == 1
    resumed = train_teacher(cfg, "cpu", root=tmp_path / "b")
    assert resumed.loss_history == full.loss_history


def test_shipped_teacher_file_is_used_only_for_its_own_config(tmp_path):
    from bdense_core.teacher import get_teacher

    cfg = replace(TINY.teacher, steps=5)
    trained = train_teacher(cfg, "cpu", root=tmp_path / "a")
    shipped = save_teacher(trained, tmp_path / "shipped.pt")
    used = get_teacher(cfg, shipped, "cpu", root=tmp_path / "b")
    assert used.key == cfg.key and used.from_cache
    assert not (tmp_path / "b" / "teachers" / cfg.key / "teacher.pt").exists()  # nothing was trained
    other = replace(cfg, seed=1)  # the file holds another config: an error naming the fix, unless asked to train
    from bdense_core.teacher import TeacherFileError

    with pytest.raises(TeacherFileError, match="--train-teacher"):
        get_teacher(other, shipped, "cpu", root=tmp_path / "b")
    fresh = get_teacher(other, shipped, "cpu", root=tmp_path / "b", train=True)
    assert fresh.key == other.key != cfg.key and not fresh.from_cache


def test_gpu_preset_ships_its_teacher():
    from bdense_core.teacher import load_teacher

    preset = get_preset("fmnist-gpu")
    teacher = load_teacher(preset.teacher_file, "cpu")
    assert teacher.key == preset.teacher.key
    assert len(teacher.loss_history) == preset.teacher.steps


def test_pace_splits_a_window_into_waiting_delivering_and_the_rest(caplog):
    """A pace line: iterations done, ms an iteration over the window, and the shares of the window the host
    waited for the device and delivered records; at most one line a window, and one at the end."""
    from bdense_core.distill.common import Pace

    now = [0.0]
    pace = Pace("SFD, 3 students at NFE 3", total=100, every=60.0, clock=lambda: now[0])
    with caplog.at_level("INFO", logger="bdense_core.distill"):
        now[0] = 20.0
        pace.waiting(15.0)
        assert pace.done(20) is None  # inside the window: nothing yet
        now[0] = 80.0
        pace.waiting(33.0)
        pace.delivering(12.0)
        line = pace.done(40)
        assert line == ("SFD, 3 students at NFE 3: iteration 40/100, 2000.0 ms an iteration over the last 80 s "
                        "(host waiting for the device 60 %, delivering records 15 %)")
        now[0] = 81.0
        last = pace.done(100)  # the end is logged whatever the window
        assert last.startswith("SFD, 3 students at NFE 3: iteration 100/100, 16.7 ms an iteration over the last 1 s")
        assert "waiting for the device 0 %" in last
    assert [r.getMessage() for r in caplog.records] == [line, last]


def test_training_loops_log_their_pace(teacher, caplog, monkeypatch):
    """SFD and PD training log pace lines (every block here, the window being 0 s) with their own iteration
    counts, whatever the records' interval."""
    from bdense_core.distill import common

    monkeypatch.setattr(common, "PACE_EVERY_S", 0.0)
    data = load_images(TINY.teacher.data)
    with caplog.at_level("INFO", logger="bdense_core.distill"):
        distill(teacher, replace(TINY.config("sfd"), branches=2, iterations=6, log_every=3))
        distill(teacher, replace(TINY.config("pd"), branches=2, iterations=4, log_every=2), data=data)
    lines = [r.getMessage() for r in caplog.records]
    rounds = TINY.config("pd").rounds
    assert [line.split(",")[0] for line in lines] == ["SFD"] * 2 + ["PD"] * (2 * rounds)
    assert "iteration 3/6," in lines[0] and "iteration 6/6," in lines[1]
    assert f"iteration {4 * rounds}/{4 * rounds}," in lines[-1]
    assert all(" ms an iteration over the last " in line and "delivering records" in line for line in lines)
