"""How a failing tensor's gradient is wrong, in one sentence, where a simple pattern fits.

Real backwards are ``data term + λ·θ``. The residual r = grad − gradapprox is fitted, by running
sums over the tensor, against the numerical gradient a and θ:

- r = α·a: the whole gradient is (1 + α)× too large (−1: the wrong sign);
- r = β·θ: a regularisation term is missing (β < 0) or counted again (β > 0);
- r = α·a + β·θ: the data term is (1 + α)× its numerical value, the λ·θ term (λ = −β/α) right;
- for square matrices, r = α·(aᵀ − a) + β·(θᵀ − θ): the (data term of the) gradient is transposed.

A fit counts when what it leaves of r is within 1 % of r plus the tensor's noise and its
coefficients are beyond what the noise could make; of those that count, the one that leaves least
wins, and a simpler one (a factor before a λ·θ term before both) when it leaves about as little.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from gradjob.model.layout import Tensor
from gradjob.model.naming import element_name
from gradjob.numerics.sums import Sums

ISOLATED_MAX = 3     # at most this many wrong elements (and at most half) reads as "isolated"
TRANSPOSE_MAX = 1 << 20  # square tensors up to this size are read whole to test for a transpose
FIT = 1e-2


def gradient_name(tensor: str) -> str:
    """``dW1`` for W1; ``the gradient of weights[0]`` where ``d`` + the name would not read."""
    return f"d{tensor}" if tensor.isidentifier() else f"the gradient of {tensor}"


def times(factor: float) -> str:
    """``2.00×``, with as many decimals as it takes not to read as 1.00× or 0.00×."""
    digits = 2
    while digits < 8 and round(factor, digits) in (0.0, 1.0):
        digits += 1
    return f"{factor:.{digits}f}×"


def wrong_sign(grad: str) -> str:
    return f"{grad} has the wrong sign (it is -1.00× the numerical gradient)"


def _fit(rr: float, columns: list[tuple[float, ...]], rhs: list[float]) -> tuple[np.ndarray, float]:
    """Least squares of r on the given regressors from their Gram matrix; (coefficients, residual²)."""
    gram, b = np.array(columns, dtype=np.float64), np.array(rhs, dtype=np.float64)
    try:
        coef = np.linalg.solve(gram, b)
    except np.linalg.LinAlgError:
        return np.full(len(b), np.nan), math.inf
    return coef, max(0.0, rr - float(coef @ b))


def diagnose(tensor: Tensor, sums: Sums, worst: list[dict], wrong_elements: list,
             whole: Callable[[], dict[str, np.ndarray]]) -> str:
    name, grad = tensor.name, gradient_name(tensor.name)
    if sums.gg == 0.0:
        return f"{grad} is all zeros: the gradient is missing"
    if sums.aa == 0.0:
        return f"{grad} is non-zero but the cost does not depend on {name}"
    if tensor.size == 1 and worst:
        g, a = worst[0]["analytic"], worst[0]["numerical"]
        if abs(g + a) <= FIT * abs(a) + 3 * math.sqrt(sums.nn):
            return wrong_sign(grad)
        return f"{grad} is {g:.6g} but the numerical derivative is {a:.6g}"
    rr = sums.dd
    close = (FIT ** 2) * rr + 9 * sums.nn
    fits = [fit for fit in _pattern_fits(sums, grad, name) if fit[0] <= close]
    if fits:  # the best fit; a simpler one (listed earlier) wins when it leaves about as little of r
        best = min(left for left, _ in fits)
        return next(text for left, text in fits if left <= 4 * best + 9 * sums.nn)
    transposed = _transposed(tensor, whole, close)
    if transposed:
        return transposed
    wrong = len(wrong_elements)
    if 0 < wrong <= ISOLATED_MAX and 2 * wrong <= tensor.size:
        where = ", ".join(element_name(name, index) for index in wrong_elements)
        return f"{wrong} isolated wrong element(s) in {grad}: {where}"
    if wrong:
        return f"{wrong} of {tensor.size} elements of {grad} are wrong; no simple pattern"
    return f"{grad} disagrees with the numerical gradient beyond its noise; no simple pattern"


def _pattern_fits(sums: Sums, grad: str, name: str) -> list[tuple[float, str]]:
    """(what the fit leaves of |r|², its sentence) for each pattern whose coefficients the noise
    could not make, simplest first: a factor, a λ·θ term, both."""
    significant = lambda coef, square: coef * coef * square > 9 * sums.nn  # noqa: E731
    ra = sums.ga - sums.aa
    fits = []
    (alpha,), left = _fit(sums.dd, [(sums.aa,)], [ra])
    if significant(alpha, sums.aa):
        fits.append((left, wrong_sign(grad) if abs(alpha + 2) < 1e-2
                     else f"{grad} is {times(1 + alpha)} the numerical gradient"))
    if sums.tt > 0:
        (beta,), left = _fit(sums.dd, [(sums.tt,)], [sums.dt])
        if significant(beta, sums.tt):
            fits.append((left, f"{grad} lacks a {-beta:.4g}·{name} term (the L2 regularisation gradient λ·{name}?)"
                         if beta < 0 else
                         f"{grad} has an extra {beta:.4g}·{name} term (the L2 regularisation gradient counted twice?)"))
        (alpha, beta), left = _fit(sums.dd, [(sums.aa, sums.at), (sums.at, sums.tt)], [ra, sums.dt])
        if significant(alpha, sums.aa) and significant(beta, sums.tt):
            fits.append((left, _data_term(grad, name, alpha, beta)))
    return fits


def _data_term(grad: str, name: str, alpha: float, beta: float) -> str:
    """r = α·a + β·θ: the data term is (1 + α)× its value and λ·θ (λ = −β/α) is right."""
    if abs(1 + alpha) < FIT:
        return f"{grad} is only a {beta:.4g}·{name} term: its data term is missing"
    data = "has the wrong sign" if abs(alpha + 2) < 1e-2 else f"is {times(1 + alpha)} its numerical value"
    return f"the data term of {grad} {data} (its regularisation term {-beta / alpha:.4g}·{name} is right)"


def _transposed(tensor: Tensor, whole: Callable[[], dict[str, np.ndarray]], close: float) -> str | None:
    """Is the gradient, or its data term, of a square matrix transposed?"""
    if len(tensor.shape) != 2 or tensor.shape[0] != tensor.shape[1] or tensor.size > TRANSPOSE_MAX:
        return None
    w = whole()
    r = (w["grad"] - w["gradapprox"]).ravel()
    u = (w["gradapprox"].T - w["gradapprox"]).ravel()
    v = (w["theta"].T - w["theta"]).ravel()
    rr = float(r @ r)
    (alpha,), left = _fit(rr, [(float(u @ u),)], [float(r @ u)])
    if left <= close and abs(alpha - 1) < 1e-2:
        return f"{gradient_name(tensor.name)} is the transpose of the numerical gradient"
    (alpha, beta), left = _fit(rr, [(float(u @ u), float(u @ v)), (float(u @ v), float(v @ v))],
                               [float(r @ u), float(r @ v)])
    if left <= close and abs(alpha - 1) < 1e-2:
        return f"the data term of {gradient_name(tensor.name)} is transposed (its regularisation term {-beta:.4g}·{tensor.name} is right)"
    return None
