"""Analytic checks of the solvers: Gaussian data has a closed-form denoiser and PF-ODE solution."""

import math

import pytest
import torch

from bdense_core.edm import EDMPrecond, karras_sigmas, solve, nfe

MU, S = 0.3, 0.5


def ideal_denoiser(x, sigma):
    """E[x0 | x] for x0 ~ N(MU, S^2 I) and x = x0 + sigma * n."""
    return MU + S**2 / (S**2 + sigma**2) * (x - MU)


def exact_flow(x, sigma_from, sigma_to):
    """The PF-ODE maps x - MU linearly: scale sqrt((S^2 + sigma_to^2) / (S^2 + sigma_from^2))."""
    return MU + (x - MU) * math.sqrt((S**2 + sigma_to**2) / (S**2 + sigma_from**2))


def endpoint_error(solver, n, sigma_max=80.0, sigma_min=0.002):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 4, 4, generator=g, dtype=torch.float64) * sigma_max
    sig = karras_sigmas(n, sigma_min, sigma_max, append_zero=False, dtype=torch.float64)
    out = solve(ideal_denoiser, x, sig, solver)
    return (out - exact_flow(x, sigma_max, sigma_min)).abs().max().item()


@pytest.mark.parametrize("solver,order", [("euler", 1), ("dpmpp1", 1), ("heun", 2), ("dpmpp2", 2), ("dpmpp3", 3)])
def test_solvers_converge_at_their_order(solver, order):
    ns = [32, 64, 128, 256]
    errs = [endpoint_error(solver, n) for n in ns]
    rates = [math.log2(errs[i] / errs[i + 1]) for i in range(len(ns) - 1)]
    assert errs[-1] < errs[0] / 2 ** (order * 3 - 1)
    assert abs(rates[-1] - order) < 0.25, (errs, rates)


def test_higher_order_is_more_accurate_at_equal_steps():
    e = {s: endpoint_error(s, 24) for s in ("euler", "heun", "dpmpp2", "dpmpp3")}
    assert e["dpmpp3"] < e["dpmpp2"] < e["euler"]
    assert e["heun"] < e["euler"]


def test_states_are_the_path_and_match_the_exact_flow_at_every_point():
    x = torch.randn(4, 1, 2, 2, dtype=torch.float64) * 80
    sig = karras_sigmas(256, 0.002, 80.0, append_zero=False, dtype=torch.float64)
    out, states = solve(ideal_denoiser, x, sig, "dpmpp3", return_states=True)
    assert states.shape == (4, 257, 1, 2, 2)
    assert torch.equal(states[:, 0], x) and torch.equal(states[:, -1], out)
    for j in (16, 64, 128, 200):
        exact = exact_flow(x, 80.0, float(sig[j]))
        assert (states[:, j] - exact).abs().max() < 1e-3


def test_grid_contains_coarser_grid():
    fine, coarse = karras_sigmas(12), karras_sigmas(3)
    assert torch.allclose(fine[:-1][::4], coarse[:-1])
    assert fine[0] == pytest.approx(80.0) and fine[-2] == pytest.approx(0.002) and fine[-1] == 0
    with pytest.raises(ValueError):
        karras_sigmas(0)


def test_unknown_solver_and_nfe_counts():
    with pytest.raises(ValueError, match="unknown solver"):
        solve(ideal_denoiser, torch.zeros(1), karras_sigmas(2), "rk4")
    assert nfe("heun", 18) == 35 and nfe("euler", 18) == 18 and nfe("dpmpp3", 10) == 10


def test_precond_with_ideal_network_is_ideal_denoiser():
    """If F outputs the ideal F* = (D* - c_skip x) / c_out, the preconditioned denoiser equals D*."""

    class IdealF(torch.nn.Module):
        out_channels = 1

        def forward(self, x_in, c_noise):
            sigma = torch.exp(4 * c_noise).view(-1, 1, 1, 1)
            sd = 0.5
            x = x_in * (sigma**2 + sd**2).sqrt()
            c_skip = sd**2 / (sigma**2 + sd**2)
            c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
            return (ideal_denoiser(x, sigma) - c_skip * x) / c_out

    pre = EDMPrecond(IdealF(), channels=1)
    x = torch.randn(3, 1, 4, 4) * 5
    for sigma in (0.01, 1.0, 40.0):
        got = pre(x, torch.tensor(sigma))
        assert torch.allclose(got, ideal_denoiser(x, sigma), atol=1e-4)
