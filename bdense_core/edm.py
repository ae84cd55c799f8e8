"""EDM formulation (Karras et al. 2022): preconditioning, training loss, sigma grids and ODE solvers.

The solvers are small pure functions in the style of k-diffusion: each one is a loop over a sigma grid and
calls ``denoiser(x, sigma)``. ``sigma`` is a 0-d tensor; the denoiser returns the denoised image ``D(x; sigma)``.
Every solver can also return the states it visits (``return_states=True``), which is how B-DENSE's branch
targets are read off the teacher.

The solvers do their step arithmetic with Python floats read once from the grid and hand the denoiser 0-d
device tensors (the grid moved to the device once, from pinned memory when it lives on the CPU), so a solve
from a CPU grid never waits for the GPU: a compiled denoiser's launches queue up back to back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

SOLVERS = ("euler", "heun", "dpmpp1", "dpmpp2", "dpmpp3")


@dataclass(frozen=True)
class EDMConstants:
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2


class EDMPrecond(nn.Module):
    """``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)`` around a raw network ``F``.

    A branched network returns ``branches * C`` channels; each C-channel group is one branch. ``forward``
    returns the endpoint branch (the last one); ``all_branches`` returns ``[B, K, C, H, W]``.
    """

    def __init__(self, net: nn.Module, channels: int, sigma_data: float = 0.5):
        super().__init__()
        self.net = net
        self.channels = channels
        self.sigma_data = sigma_data

    @property
    def branches(self) -> int:
        return int(getattr(self.net, "out_channels", self.channels) // self.channels)

    def _coefficients(self, x: torch.Tensor, sigma: torch.Tensor):
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        sigma = sigma.reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sigma**2 + sd**2).sqrt()
        c_noise = sigma.log().flatten() / 4
        return c_skip, c_out, c_in, c_noise

    def all_branches(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        c_skip, c_out, c_in, c_noise = self._coefficients(x, sigma)
        f = self.net((c_in * x).to(x.dtype), c_noise)
        f = f.float().reshape(x.shape[0], -1, self.channels, *x.shape[2:])
        return c_skip.unsqueeze(1) * x.float().unsqueeze(1) + c_out.unsqueeze(1) * f

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.all_branches(x, sigma)[:, -1]


def edm_loss(
    denoiser: EDMPrecond, images: torch.Tensor, generator: torch.Generator, const: EDMConstants = EDMConstants()
) -> torch.Tensor:
    """EDM training loss: ``ln sigma ~ N(P_mean, P_std)``, weight ``(sigma^2+sd^2)/(sigma sd)^2``; mean over pixels."""
    rnd, unit_noise = edm_loss_draws(images, generator)
    return edm_loss_from(denoiser, images, rnd, unit_noise, const)


def edm_loss_draws(images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The random draws of one :func:`edm_loss` call, in its order: ``ln sigma``'s normal, then unit noise."""
    rnd = torch.randn(images.shape[0], 1, 1, 1, generator=generator, device=images.device)
    return rnd, torch.randn(images.shape, generator=generator, device=images.device)


def edm_loss_from(denoiser: EDMPrecond, images: torch.Tensor, rnd: torch.Tensor, unit_noise: torch.Tensor,
                  const: EDMConstants = EDMConstants()) -> torch.Tensor:
    """:func:`edm_loss` given its draws (:func:`edm_loss_draws`): the part a compiled training step holds."""
    sigma = (rnd * const.p_std + const.p_mean).exp()
    weight = (sigma**2 + const.sigma_data**2) / (sigma * const.sigma_data) ** 2
    denoised = denoiser(images + unit_noise * sigma, sigma.flatten())
    return (weight * (denoised - images) ** 2).mean()


def karras_sigmas(
    n_steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    append_zero: bool = True,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The polynomial (rho) grid of ``n_steps + 1`` points from sigma_max to sigma_min, then 0 if asked.

    Written with intervals rather than points so that the grid of ``m * n`` steps contains the grid of ``n``
    steps at every m-th point (SFD's student grid inside the teacher's, PD's halving rounds).
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    i = torch.arange(n_steps + 1, dtype=torch.float64) / n_steps
    inv_max, inv_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (inv_max + i * (inv_min - inv_max)) ** rho
    if append_zero:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas.to(dtype)


def grid_values(sigmas: torch.Tensor, device: torch.device) -> tuple[list[float], torch.Tensor]:
    """The grid as Python floats (for a solver's arithmetic) and as a tensor on ``device`` (for the denoiser's
    sigma argument). From a CPU grid to CUDA this never synchronises: the copy leaves pinned memory
    asynchronously. (A grid already on CUDA costs one synchronisation, for its float values.)"""
    values = sigmas.tolist()
    if sigmas.device == device:
        return values, sigmas
    if device.type == "cuda" and sigmas.device.type == "cpu":
        return values, sigmas.pin_memory().to(device, non_blocking=True)
    return values, sigmas.to(device)


def _d(denoiser: Denoiser, x: torch.Tensor, sigma: float, sigma_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    denoised = denoiser(x, sigma_t)
    return (x - denoised) / sigma, denoised


def sample_euler(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, return_states: bool = False):
    """Euler on the PF-ODE ``dx/dsigma = (x - D(x; sigma)) / sigma``: one network call per step."""
    vals, dev = grid_values(sigmas, x.device)
    states = [x]
    for i in range(len(vals) - 1):
        s, s_next = vals[i], vals[i + 1]
        d, _ = _d(denoiser, x, s, dev[i])
        x = x + (s_next - s) * d
        states.append(x)
    return (x, torch.stack(states, 1)) if return_states else x


def sample_heun(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, return_states: bool = False):
    """Heun's 2nd-order method (EDM Algorithm 1 without churn); Euler on a final step to sigma = 0."""
    vals, dev = grid_values(sigmas, x.device)
    states = [x]
    for i in range(len(vals) - 1):
        s, s_next = vals[i], vals[i + 1]
        d, _ = _d(denoiser, x, s, dev[i])
        x_euler = x + (s_next - s) * d
        if s_next > 0:
            d_next, _ = _d(denoiser, x_euler, s_next, dev[i + 1])
            x = x + (s_next - s) * 0.5 * (d + d_next)
        else:
            x = x_euler
        states.append(x)
    return (x, torch.stack(states, 1)) if return_states else x


def sample_dpmpp(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, order: int = 2, return_states: bool = False
):
    """Multistep DPM-Solver++ of order 1 to 3 (Lu et al. 2022) in EDM's sigma parameterisation.

    In ``lambda = -ln sigma`` the data-prediction ODE is exact for constant D; order 1 is DDIM. Higher orders
    reuse earlier denoised outputs (one network call per step) and fall back to lower order at the start and
    on the final step to sigma = 0, as the reference multistep solver does.

    Third order: with ``D2 ~ h^2 D''/2`` (the divided difference below) the exact exponential integral needs
    ``-2 phi_3 D2``; the coefficient ``-phi_3 D2`` seen in some implementations measures only second order on
    the Gaussian test problem (tests/test_edm.py pins the order at 3).
    """
    if order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver++ order must be 1, 2 or 3, got {order}")
    vals, dev = grid_values(sigmas, x.device)
    states = [x]
    history: list[tuple[torch.Tensor, float]] = []  # (denoised, lambda) of earlier steps, newest last
    n = len(vals) - 1
    for i in range(n):
        s, s_next = vals[i], vals[i + 1]
        denoised = denoiser(x, dev[i])
        lam = -math.log(s)
        if s_next == 0:
            x = denoised
        else:
            h = -math.log(s_next) - lam
            # lower order at the start (no history) and, on short grids, at the end ("lower_order_final")
            step_order = min(order, len(history) + 1, n - i if n < 10 else order)
            phi_1 = math.expm1(-h)
            x = (s_next / s) * x - phi_1 * denoised
            if step_order >= 2:
                d_p, lam_p = history[-1]
                r0 = (lam - lam_p) / h
                d1_0 = (denoised - d_p) / r0
                if step_order == 2:
                    x = x - 0.5 * phi_1 * d1_0
                else:
                    d_pp, lam_pp = history[-2]
                    r1 = (lam_p - lam_pp) / h
                    d1_1 = (d_p - d_pp) / r1
                    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                    d2 = (d1_0 - d1_1) / (r0 + r1)
                    phi_2 = phi_1 / h + 1
                    phi_3 = phi_2 / h - 0.5
                    x = x + phi_2 * d1 - 2 * phi_3 * d2
        history = (history + [(denoised, lam)])[-2:]
        states.append(x)
    return (x, torch.stack(states, 1)) if return_states else x


def solve(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, solver: str = "heun", return_states: bool = False
):
    """Dispatch by name: ``euler``, ``heun``, ``dpmpp1``, ``dpmpp2`` or ``dpmpp3``."""
    if solver == "euler":
        return sample_euler(denoiser, x, sigmas, return_states)
    if solver == "heun":
        return sample_heun(denoiser, x, sigmas, return_states)
    if solver.startswith("dpmpp") and solver[5:] in ("1", "2", "3"):
        return sample_dpmpp(denoiser, x, sigmas, int(solver[5:]), return_states)
    raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")


def nfe(solver: str, n_steps: int, ends_at_zero: bool = True) -> int:
    """Network evaluations a solver spends on ``n_steps`` steps (Heun's last step to 0 is Euler)."""
    if solver == "heun":
        return 2 * n_steps - (1 if ends_at_zero else 0)
    return n_steps
