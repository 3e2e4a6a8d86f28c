"""The verdict rule, in one place: pure functions of numbers, for a full check and a directional
screen alike.

difference = ‖grad − gradapprox‖₂ / (‖grad‖₂ + ‖gradapprox‖₂) per tensor and overall, over the
elements not at a kink. A tensor fails iff its gradient is shaped unlike its parameter, it has
*wrong* elements (see ``verify``), or its difference exceeds its threshold: the asked threshold
or, where the forward's measured noise cannot resolve that, ``NOISE_MARGIN`` times the difference
its noise alone would give. The check passes iff no tensor fails. Each tensor's *resolution* is the
smallest relative error of its gradient the check would flag: 2T/(1 − T) for its threshold T.

A verified suspect counts by its class (``counted``): a kink is left out; one that agrees counts
with its settled estimate and the ladder's bound; one that is wrong with its settled estimate and
the ladder's bound, but in the tensor's noise floor with its first noise bound at most, since a
wrong value's bound says how exactly the error is known, not how noisy the tensor is (it must not
raise the threshold that judges the rest); one the ladder could not resolve counts its whole
disagreement as noise: it cannot fail the tensor, and the tensor's resolution says how much that
costs.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, NamedTuple

from gradjob.model.layout import Tensor
from gradjob.numerics import verify
from gradjob.numerics.diagnose import gradient_name
from gradjob.numerics.sums import Sums

NOISE_MARGIN = 5.0   # a tensor's threshold is at least this many times its noise-only difference

# The seed's 2e-7 for float64; float32 round-off is ~1e9 times larger, so its differences are too.
DEFAULT_THRESHOLDS = {"float64": 2e-7, "float32": 1e-3, "float16": 1e-1}


def default_threshold(dtype: str) -> float:
    """The threshold for a check computed in ``dtype`` when none is asked."""
    return DEFAULT_THRESHOLDS.get(dtype, DEFAULT_THRESHOLDS["float64"])


def asked_threshold(asked: float | None, otherwise: float) -> float:
    """A threshold asked now wins (over the dtype's default, or over the one a store was made with)."""
    return asked if asked is not None else otherwise


def relative_difference(error2: float, grad2: float, approx2: float) -> float:
    """‖g − a‖ / (‖g‖ + ‖a‖) from sums of squares; 0 when both gradients are exactly zero."""
    denominator = math.sqrt(grad2) + math.sqrt(approx2)
    return math.sqrt(error2) / denominator if denominator else 0.0


def tensor_threshold(threshold: float, sums: Sums, floor2: float | None = None) -> float:
    """The asked threshold, or the difference the tensor's noise alone could reach, if higher.
    ``floor2``: the squared noise of that floor where it is not ``sums.nn`` (see ``counted``)."""
    scale = math.sqrt(sums.gg) + math.sqrt(sums.aa)
    noise2 = sums.nn if floor2 is None else floor2
    floor = NOISE_MARGIN * math.sqrt(noise2) / scale if scale else 0.0
    return max(threshold, floor)


def resolution(threshold: float) -> float:
    """The smallest relative error e of a gradient (g = (1 + e)·true) that gives a difference above
    ``threshold``: e/(2 + e) > T ⇔ e > 2T/(1 − T)."""
    return 2 * threshold / (1 - threshold) if threshold < 1 else math.inf


class Counted(NamedTuple):
    value: float   # the numerical value in the difference
    noise: float   # its error bound (the noise norm, the diagnosis's fits)
    floor: float   # its share of the tensor's noise floor
    kept: bool     # in the difference (not at a kink)
    wrong: bool


def counted(grad: float, approx: float, noise: float, verdict: verify.Verdict, replace: bool = True) -> Counted:
    """How a verified suspect counts in its tensor. With ``replace`` a settled estimate stands in for
    the first one; a fixed ``--epsilon`` asks for that step's numbers, so there the classes count but
    the numbers stay."""
    if verdict.klass in verify.EXCLUDED:
        return Counted(approx, noise, noise, False, False)
    if verdict.klass == verify.AGREES:
        if replace:
            return Counted(verdict.estimate, verdict.tolerance, verdict.tolerance, True, False)
        return Counted(approx, noise, noise, True, False)
    if verdict.klass == verify.WRONG:
        if replace:
            return Counted(verdict.estimate, verdict.tolerance, min(noise, verdict.tolerance), True, True)
        return Counted(approx, noise, noise, True, True)
    unresolved = max(noise, abs(grad - approx))  # uncertainty, not error
    return Counted(approx, unresolved, unresolved, True, False)


def shape_mismatch(tensor: Tensor) -> str | None:
    """``db1 has shape (5,) but b1 is (5, 1)``, where the backward's gradient is shaped unlike its
    parameter (see ``Layout.with_gradient_shapes``); None where the shapes are equal."""
    if tensor.gradient_shape is None:
        return None
    return f"{gradient_name(tensor.name)} has shape {tensor.gradient_shape} but {tensor.name} is {tensor.shape}"


def tensor_verdict(tensor: Tensor, difference: float, threshold: float, wrong: bool,
                   diagnose: Callable[[], str], directional: bool = False) -> tuple[bool, str | None]:
    """(passed, diagnosis) of one tensor. A gradient shaped unlike its parameter fails whatever its
    numbers say. ``directional``: the numbers are a screen's, along random directions, where only
    a factor, a sign or a missing gradient holds; anything said of elements does not."""
    numbers_pass = not wrong and difference <= threshold
    said = None if numbers_pass else diagnose()
    if said is not None and directional and not _names_a_factor(said):
        said = f"{gradient_name(tensor.name)} disagrees with the numerical derivative along random directions"
    mismatch = shape_mismatch(tensor)
    if mismatch is not None:
        return False, mismatch + (f"; {said}" if said else "")
    return numbers_pass, said


def check_passed(tensors_passed: Iterable[bool]) -> bool:
    """The check passes iff no tensor fails."""
    return all(tensors_passed)


def _names_a_factor(diagnosis: str) -> bool:
    """Factor, sign and missing-gradient diagnoses hold along directions too; element ones do not."""
    return "×" in diagnosis or "wrong sign" in diagnosis or "all zeros" in diagnosis
