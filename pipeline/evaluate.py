"""Central differences for one chunk of θ: the numerics, free of Dask and Zarr.

θ is perturbed in place, one element at a time, and restored to its exact original value; the
forward reads it through views (see ``layout.Layout.views``), so nothing is copied per parameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np


class PerturbationFailure(Exception):
    """The forward raised, or gave a non-finite cost, at θ[index] ± step."""

    def __init__(self, index: int, sign: str, detail: str):
        super().__init__(index, sign, detail)
        self.index, self.sign, self.detail = index, sign, detail


@dataclass
class ChunkResult:
    cost_plus: np.ndarray
    cost_minus: np.ndarray
    step: np.ndarray
    gradapprox: np.ndarray


def step_size(value: float, epsilon: float | None, dtype: np.dtype) -> float:
    """The step for one parameter: ``epsilon`` if fixed, else cbrt(machine eps)·max(1, |θᵢ|).

    The cube root balances truncation error (∝ h²) against round-off (∝ eps/h) for central
    differences, and scaling by |θᵢ| keeps the step meaningful for large parameters.
    """
    if epsilon is not None:
        return epsilon
    return float(np.cbrt(np.finfo(dtype).eps)) * max(1.0, abs(value))


def central_differences(cost: Callable[[], float], theta: np.ndarray, start: int, stop: int,
                        epsilon: float | None) -> ChunkResult:
    """J(θ ± hᵢeᵢ) and (J⁺ − J⁻)/2h for i in [start, stop).

    With a fixed ``epsilon`` the quotient divides by 2ε exactly as the seed does; with automatic
    steps it divides by the step actually taken, (θᵢ+h) − (θᵢ−h) as represented in θ's dtype.
    """
    size = stop - start
    result = ChunkResult(*(np.empty(size) for _ in range(4)))
    kind = theta.dtype.type
    for k, i in enumerate(range(start, stop)):
        original = theta[i]
        h = step_size(float(original), epsilon, theta.dtype)
        plus, minus = kind(original + h), kind(original - h)
        try:
            theta[i] = plus
            j_plus = _evaluate(cost, i, "+")
            theta[i] = minus
            j_minus = _evaluate(cost, i, "-")
        finally:
            theta[i] = original
        width = 2 * epsilon if epsilon is not None else float(plus) - float(minus)
        result.cost_plus[k], result.cost_minus[k] = j_plus, j_minus
        result.step[k] = width / 2
        result.gradapprox[k] = (j_plus - j_minus) / width
    return result


def _evaluate(cost: Callable[[], float], index: int, sign: str) -> float:
    try:
        value = cost()
    except Exception as exc:
        raise PerturbationFailure(index, sign, f"{type(exc).__name__}: {exc}") from None
    if not math.isfinite(value):
        raise PerturbationFailure(index, sign, f"the cost is {value}")
    return value
