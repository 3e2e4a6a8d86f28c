"""Numerical derivatives for one chunk of θ: the numerics, free of Dask and Zarr.

θ is perturbed in place, one element at a time, and restored to its exact original value; the
forward reads it through views (see ``layout.Layout.views``), so nothing is copied per parameter.

Methods: ``central`` (J⁺ − J⁻)/2h; ``five-point`` (−J(+2h) + 8J(+h) − 8J(−h) + J(−2h))/12h,
fourth order; ``complex-step`` Im J(θ + ih)/h, free of cancellation but only for forwards that
are complex-safe. Each element also gets an estimate of its unavoidable round-off (``noise``),
so the verdict can tell noise from a bug whatever the method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

METHODS = ("central", "five-point", "complex-step")
STEP_EXPONENT = {"central": 1 / 3, "five-point": 1 / 5}
# The optimal step balances truncation against the forward's round-off, which for a sum over a
# batch is several machine epsilons, not one: 4·cbrt(eps) measured best on the seed network.
STEP_SCALE = 4.0
COMPLEX_STEP = 1e-20


class PerturbationFailure(Exception):
    """The forward raised, or gave a non-finite cost, at θ[index] ± step."""

    def __init__(self, index: int, sign: str, detail: str):
        super().__init__(index, sign, detail)
        self.index, self.sign, self.detail = index, sign, detail


@dataclass
class ChunkResult:
    cost_plus: np.ndarray   # J(θ + hᵢeᵢ) (complex step: Re J(θ + ihᵢeᵢ))
    cost_minus: np.ndarray  # J(θ − hᵢeᵢ) (complex step: the same as cost_plus)
    step: np.ndarray        # hᵢ as actually taken
    gradapprox: np.ndarray
    noise: np.ndarray       # estimated round-off of gradapproxᵢ


def step_size(value: float, epsilon: float | None, dtype: np.dtype, method: str = "central") -> float:
    """The step for one parameter: ``epsilon`` if fixed, else a multiple of eps^(1/3) (central) or
    eps^(1/5) (five-point) of θ's dtype, scaled by max(1, |θᵢ|) so large parameters move too."""
    if epsilon is not None:
        return epsilon
    if method == "complex-step":
        return COMPLEX_STEP * max(1.0, abs(value))
    real = np.finfo(dtype)
    return STEP_SCALE * float(real.eps) ** STEP_EXPONENT[method] * max(1.0, abs(value))


def numerical_gradient(cost: Callable[[], float], theta: np.ndarray, start: int, stop: int,
                       epsilon: float | None, method: str = "central") -> ChunkResult:
    """The numerical gradient for i in [start, stop) by ``method``.

    With a fixed ``epsilon``, central differences divide by 2ε exactly as the seed does; with
    automatic steps they divide by the step actually taken, (θᵢ+h) − (θᵢ−h) in θ's dtype.
    For complex step ``theta`` must be a complex array holding real values.
    """
    size = stop - start
    result = ChunkResult(*(np.empty(size) for _ in range(5)))
    kind = theta.dtype.type
    eps = float(np.finfo(theta.dtype).eps)
    for k, i in enumerate(range(start, stop)):
        original = theta[i]
        h = step_size(float(original.real), epsilon, theta.dtype, method)

        def at(value, sign):
            theta[i] = value
            return _evaluate(cost, i, sign)

        try:
            if method == "complex-step":
                j = at(original + 1j * h, "+ i·")
                j_plus = j_minus = j.real
                result.gradapprox[k] = j.imag / h
                result.noise[k] = eps * abs(j.imag / h)
            else:
                plus, minus = kind(original + h), kind(original - h)
                j_plus, j_minus = at(plus, "+"), at(minus, "-")
                if epsilon is None:
                    h = (float(plus) - float(minus)) / 2
                if method == "central":
                    result.gradapprox[k] = (j_plus - j_minus) / (2 * h)
                    result.noise[k] = eps * (abs(j_plus) + abs(j_minus)) / (2 * h)
                else:
                    j_plus2, j_minus2 = at(kind(original + 2 * h), "+ 2×"), at(kind(original - 2 * h), "- 2×")
                    result.gradapprox[k] = (-j_plus2 + 8 * j_plus - 8 * j_minus + j_minus2) / (12 * h)
                    result.noise[k] = eps * (abs(j_plus2) + 8 * abs(j_plus) + 8 * abs(j_minus) + abs(j_minus2)) / (12 * h)
        finally:
            theta[i] = original
        result.cost_plus[k], result.cost_minus[k], result.step[k] = j_plus, j_minus, h
    return result


def _evaluate(cost: Callable[[], float], index: int, sign: str):
    try:
        value = cost()
    except Exception as exc:
        raise PerturbationFailure(index, sign, f"{type(exc).__name__}: {exc}") from None
    if not np.isfinite(value):
        raise PerturbationFailure(index, sign, f"the cost is {value}")
    return value
