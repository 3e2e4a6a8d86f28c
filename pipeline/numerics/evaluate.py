"""Numerical derivatives for one chunk of θ: the numerics, free of Dask and Zarr.

θ is perturbed in place, one element at a time, and restored to its exact original value; the
forward reads it through views (see ``layout.Layout.views``), so nothing is copied per parameter.

Methods: ``central`` (J⁺ − J⁻)/2h; ``five-point`` (−J(+2h) + 8J(+h) − 8J(−h) + J(−2h))/12h,
fourth order; ``complex-step`` Im J(θ + ih)/h, free of cancellation but only for forwards that
are complex-safe. Steps and each element's error bound (``noise``) come from the forward's
measured noise (see ``noise``), so the verdict can tell noise from a bug whatever the method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from gradjob.model.layout import Layout
from gradjob.model.usercode import with_frames
from gradjob.types import Calibration


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


Costs = Callable[[np.ndarray, np.ndarray, str], np.ndarray]
"""``costs(indices, values, sign)``: J at θ with θ[indices[p]] = values[p], one perturbation at a time."""


def step_sizes(values: np.ndarray, layout: Layout, start: int, calibration: Calibration,
               epsilon: float | None) -> np.ndarray:
    """The step of each θᵢ from ``start``: ``epsilon`` if fixed, else its tensor's calibrated
    scale times max(1, |θᵢ|), so large parameters move in proportion."""
    if epsilon is not None:
        return np.full(len(values), float(epsilon))
    scales = per_element(layout, start, len(values), [t.step_scale for t in calibration.tensors])
    return scales * np.maximum(1.0, np.abs(np.asarray(values, dtype=np.complex128).real))


def per_element(layout: Layout, start: int, count: int, per_tensor) -> np.ndarray:
    """A per-tensor value spread over θ[start:start+count]."""
    out = np.empty(count)
    for t, value in zip(layout.tensors, per_tensor):
        lo, hi = max(t.offset, start), min(t.stop, start + count)
        if lo < hi:
            out[lo - start:hi - start] = value
    return out


def in_place_costs(cost: Callable[[], float], theta: np.ndarray) -> Costs:
    """The generic path: set θ[i], call the forward, restore θ[i] to its exact original value."""

    def costs(indices: np.ndarray, values: np.ndarray, sign: str) -> np.ndarray:
        complex_step = np.iscomplexobj(values)
        out = np.empty(len(indices), dtype=np.complex128 if complex_step else np.float64)
        for p, (i, value) in enumerate(zip(indices, values)):
            original = theta[i]
            theta[i] = value
            try:
                out[p] = _evaluate(cost, int(i), sign, complex_step)
            finally:
                theta[i] = original
        return out

    return costs


def numerical_gradient(costs: Costs, original: np.ndarray, start: int, steps: np.ndarray,
                       cost_noise: np.ndarray, method: str = "central", fixed: bool = False,
                       curvature: np.ndarray | float = 0.0) -> ChunkResult:
    """The numerical gradient for i in [start, start + len(original)) by ``method``, where
    ``original`` is θ[start:stop] (a copy: only the chunk, never all of θ, is needed here),
    ``steps`` the step of each element and ``cost_noise`` the measured noise ε_f of J there.

    With a ``fixed`` step, central differences divide by 2ε exactly as the seed does; with
    automatic steps they divide by the step actually taken, (θᵢ+h) − (θᵢ−h) in θ's dtype.
    For complex step θ must be a complex array holding real values.

    ``noise`` bounds each element's error: twice the noise of the difference quotient, plus the
    truncation ``curvature``·h²/6 of central differences (``curvature`` is |J‴|, see ``noise``).
    """
    index = np.arange(start, start + len(original))
    h = np.asarray(steps, dtype=np.float64)
    if method == "complex-step":
        j = costs(index, original + 1j * h, "+ i·")
        gradapprox = j.imag / h
        eps = float(np.finfo(original.dtype).eps)
        return ChunkResult(j.real, j.real.copy(), h, gradapprox, eps * np.abs(gradapprox))
    kind = original.dtype.type
    plus, minus = (original + h).astype(kind), (original - h).astype(kind)
    j_plus, j_minus = costs(index, plus, "+"), costs(index, minus, "-")
    if not fixed:
        h = (plus.astype(np.float64) - minus.astype(np.float64)) / 2
    if method == "central":
        gradapprox = (j_plus - j_minus) / (2 * h)
        noise = central_noise(cost_noise, h, curvature)
    else:
        j_plus2 = costs(index, (original + 2 * h).astype(kind), "+ 2×")
        j_minus2 = costs(index, (original - 2 * h).astype(kind), "- 2×")
        gradapprox = (-j_plus2 + 8 * j_plus - 8 * j_minus + j_minus2) / (12 * h)
        noise = 2 * cost_noise * math.sqrt(130) / (12 * h)
    return ChunkResult(j_plus, j_minus, h, gradapprox, noise)


def central_noise(cost_noise, h, curvature):
    """The error bound of a central difference: twice the noise of the quotient, plus its
    truncation |J‴|·h²/6 (the full check and the directional screen use the same bound)."""
    return 2 * cost_noise / (math.sqrt(2) * h) + curvature * h * h / 6


def _evaluate(cost: Callable[[], float], index: int, sign: str, complex_ok: bool = False):
    try:
        value = cost()
    except Exception as exc:
        raise with_frames(PerturbationFailure(index, sign, f"{type(exc).__name__}: {exc}"), exc) from None
    if isinstance(value, complex) and not complex_ok:  # real at θ but not here: a failure, not a crash
        raise PerturbationFailure(index, sign, f"the cost is complex ({value}); the cost must be a real number")
    if not np.isfinite(value):
        raise PerturbationFailure(index, sign, f"the cost is {value}")
    return value
