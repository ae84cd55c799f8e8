import math

import numpy as np
import pytest
import torch

from bdense_core.schedule import BranchWeights, exponential_weights, fit_exponential


def test_exponential_schedule_values():
    w = exponential_weights(4, a=0.5, b=2.0)
    expected = [2.0 * math.exp(0.5 * k) for k in (1, 2, 3, 4)]
    assert torch.allclose(w, torch.tensor(expected, dtype=torch.float32))
    assert torch.allclose(BranchWeights(a=0.0, b=1.5).weights(3), torch.full((3,), 1.5))
    # a > 0 weighs later branches more, a < 0 earlier ones
    assert torch.all(torch.diff(exponential_weights(5, 0.3, 1.0)) > 0)
    assert torch.all(torch.diff(exponential_weights(5, -0.3, 1.0)) < 0)


def test_fit_recovers_exact_exponential_and_least_squares_on_noise():
    for a, b in [(0.7, 0.2), (-1.3, 5.0), (0.0, 1.0)]:
        fa, fb = fit_exponential(exponential_weights(6, a, b).double().numpy())
        assert fa == pytest.approx(a, abs=1e-5) and fb == pytest.approx(b, rel=1e-5)
    rng = np.random.default_rng(0)
    k = np.arange(1, 9)
    w = 0.5 * np.exp(0.4 * k) * np.exp(rng.normal(0, 0.05, k.size))
    fa, fb = fit_exponential(w)
    slope, icpt = np.polyfit(k, np.log(w), 1)
    assert fa == pytest.approx(slope) and fb == pytest.approx(math.exp(icpt))
    assert abs(fa - 0.4) < 0.05


def test_free_weights_and_their_fitted_pair():
    bw = BranchWeights(mode="free", values=(1.0, 2.0, 4.0))
    assert torch.equal(bw.weights(3), torch.tensor([1.0, 2.0, 4.0]))
    a, b = bw.fitted_ab(3)
    assert a == pytest.approx(math.log(2)) and b == pytest.approx(0.5)
    with pytest.raises(ValueError, match="3 free weights given for K=4"):
        bw.weights(4)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(a=float("nan")), "finite"),
        (dict(b=float("inf")), "finite"),
        (dict(b=0.0), "b must be > 0"),
        (dict(mode="linear"), "unknown weight mode"),
        (dict(mode="free"), "one value per branch"),
        (dict(mode="free", values=(1.0, -1.0)), "finite and > 0"),
    ],
)
def test_bad_weights_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BranchWeights(**kwargs)


def test_k_below_one_rejected():
    with pytest.raises(ValueError, match="K must be >= 1"):
        BranchWeights().weights(0)
