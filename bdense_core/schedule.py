"""B-DENSE branch weights: the exponential schedule ``w_k = b * exp(a * k)`` and free per-branch weights.

``a`` is the growth rate (a > 0 weighs later branches more, a = 0 is uniform) and ``b`` the intercept. Free
weights are K independent positive numbers; :func:`fit_exponential` reads an (a, b) pair off them by least
squares on ``ln w_k``, which is one reading of the paper's "fitted (a, b) pairs".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

WEIGHT_MODES = ("exp", "free")


@dataclass(frozen=True)
class BranchWeights:
    """Weights of the K branch losses. ``mode="exp"`` uses (a, b); ``mode="free"`` uses ``values``."""

    mode: str = "exp"
    a: float = 0.0
    b: float = 1.0
    values: tuple[float, ...] = ()

    def __post_init__(self):
        if self.mode not in WEIGHT_MODES:
            raise ValueError(f"unknown weight mode {self.mode!r}; choose one of {', '.join(WEIGHT_MODES)}")
        if self.mode == "exp":
            if not (math.isfinite(self.a) and math.isfinite(self.b)):
                raise ValueError(f"branch-weight a and b must be finite, got a={self.a}, b={self.b}")
            if self.b <= 0:
                raise ValueError(f"branch-weight intercept b must be > 0, got {self.b}")
        else:
            object.__setattr__(self, "values", tuple(float(v) for v in self.values))
            if not self.values:
                raise ValueError("free branch weights need one value per branch (values=...)")
            if not all(math.isfinite(v) and v > 0 for v in self.values):
                raise ValueError(f"free branch weights must be finite and > 0, got {self.values}")

    def weights(self, branches: int) -> torch.Tensor:
        """The K weights as a float32 tensor, branch 1 first."""
        if branches < 1:
            raise ValueError(f"K must be >= 1, got {branches}")
        if self.mode == "exp":
            return exponential_weights(branches, self.a, self.b)
        if len(self.values) != branches:
            raise ValueError(f"{len(self.values)} free weights given for K={branches} branches")
        return torch.tensor(self.values, dtype=torch.float32)

    def fitted_ab(self, branches: int) -> tuple[float, float]:
        """(a, b) of these weights: exact for the exponential mode, least squares for free weights."""
        if self.mode == "exp":
            return self.a, self.b
        return fit_exponential(self.weights(branches))


def exponential_weights(branches: int, a: float, b: float) -> torch.Tensor:
    k = torch.arange(1, branches + 1, dtype=torch.float64)
    return (b * torch.exp(a * k)).float()


def fit_exponential(weights) -> tuple[float, float]:
    """Least-squares fit of ``ln w_k = ln b + a k``; returns (a, b). One weight gives a = 0."""
    w = np.asarray(weights, dtype=np.float64).ravel()
    if w.size == 0 or np.any(~np.isfinite(w)) or np.any(w <= 0):
        raise ValueError("fit_exponential needs finite positive weights")
    k = np.arange(1, w.size + 1, dtype=np.float64)
    if w.size == 1:
        return 0.0, float(w[0])
    a, ln_b = np.polyfit(k, np.log(w), 1)
    return float(a), float(math.exp(ln_b))
