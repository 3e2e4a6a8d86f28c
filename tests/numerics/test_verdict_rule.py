"""Issue 21: the verdict rule (``numerics/verdict``), the ladder's classification (``verify.classify``)
and ECnoise (``noise.ecnoise``) on hand-made inputs: no cluster, no store, no model."""

import math

import numpy as np
import pytest

from gradjob.model.layout import Layout, Tensor
from gradjob.numerics import verdict, verify
from gradjob.numerics.noise import ecnoise
from gradjob.numerics.reduce import reduce_gradients
from gradjob.numerics.sums import Sums
from gradjob.numerics.verify import Verdict

EPS = float(np.finfo(np.float64).eps)


# --- the rule's pieces ------------------------------------------------------------------------------

def test_thresholds_by_dtype_and_a_threshold_asked_wins():
    assert [verdict.default_threshold(d) for d in ("float64", "float32", "float16", "bfloat16")] == [2e-7, 1e-3, 1e-1,
                                                                                                      2e-7]
    assert verdict.asked_threshold(None, 2e-7) == 2e-7
    assert verdict.asked_threshold(1e-3, 2e-7) == 1e-3


def test_difference_noise_floor_and_resolution():
    assert verdict.relative_difference(1.0, 4.0, 9.0) == 1 / 5
    assert verdict.relative_difference(0.0, 0.0, 0.0) == 0.0
    sums = Sums(gg=4.0, aa=4.0, nn=4e-4)  # ‖g‖ = ‖a‖ = 2, ‖noise‖ = 0.02: floor 5 · 0.02 / 4
    assert verdict.tensor_threshold(2e-7, sums) == pytest.approx(0.025, rel=1e-15)
    assert verdict.tensor_threshold(0.5, sums) == 0.5
    assert verdict.tensor_threshold(2e-7, Sums()) == 2e-7
    assert verdict.tensor_threshold(2e-7, sums, floor2=1e-18) == 2e-7  # a floor of other noise than sums.nn
    assert verdict.resolution(0.25) == pytest.approx(2 / 3, rel=1e-15)
    assert verdict.resolution(1.0) == math.inf


def test_a_verified_suspect_counts_by_its_class():
    """(value, noise, share of the noise floor, in the difference, wrong)."""
    agrees, wrong = Verdict(verify.AGREES, 2.0, 1e-3), Verdict(verify.WRONG, 2.0, 1e-3)
    assert verdict.counted(2.0, 2.5, 1e-6, agrees) == (2.0, 1e-3, 1e-3, True, False)
    assert verdict.counted(2.0, 2.5, 1e-6, agrees, replace=False) == (2.5, 1e-6, 1e-6, True, False)
    # wrong: the settled estimate; in the noise floor its ladder bound never above its first noise bound
    assert verdict.counted(3.0, 2.5, 1e-6, wrong) == (2.0, 1e-3, 1e-6, True, True)
    assert verdict.counted(3.0, 2.5, 1e-2, wrong) == (2.0, 1e-3, 1e-3, True, True)
    assert verdict.counted(3.0, 2.5, 1e-6, wrong, replace=False) == (2.5, 1e-6, 1e-6, True, True)
    for klass in verify.EXCLUDED:
        assert verdict.counted(3.0, 2.5, 1e-6, Verdict(klass, 2.0, 1e-3)) == (2.5, 1e-6, 1e-6, False, False)
    unresolved = Verdict(verify.UNRESOLVED, math.nan, math.nan)
    assert verdict.counted(3.0, 2.5, 1e-6, unresolved) == (2.5, 0.5, 0.5, True, False)


def test_a_tensor_fails_on_wrong_elements_its_difference_or_its_shape():
    b = Tensor("b", (5, 1), 0)
    said = []

    def diagnose():
        said.append(1)
        return "db is 2.00× the numerical gradient"

    assert verdict.tensor_verdict(b, 1e-7, 2e-7, False, diagnose) == (True, None)
    assert said == []  # a passing tensor is not diagnosed
    assert verdict.tensor_verdict(b, 3e-7, 2e-7, False, diagnose) == (False, "db is 2.00× the numerical gradient")
    assert verdict.tensor_verdict(b, 1e-7, 2e-7, True, diagnose) == (False, "db is 2.00× the numerical gradient")
    shaped = Tensor("b", (5, 1), 0, gradient_shape=(5,))
    assert verdict.tensor_verdict(shaped, 1e-7, 2e-7, False, diagnose) == (False, "db has shape (5,) but b is (5, 1)")
    assert verdict.tensor_verdict(shaped, 3e-7, 2e-7, False, diagnose) == (
        False, "db has shape (5,) but b is (5, 1); db is 2.00× the numerical gradient")


def test_along_directions_only_a_factor_sign_or_missing_gradient_is_said():
    w = Tensor("W1", (3, 2), 0)
    assert verdict.tensor_verdict(w, 1.0, 2e-7, False, lambda: "dW1 is 2.00× the numerical gradient",
                                  directional=True) == (False, "dW1 is 2.00× the numerical gradient")
    assert verdict.tensor_verdict(w, 1.0, 2e-7, False, lambda: "dW1 is wrong at W1[0, 1] only",
                                  directional=True) == (
        False, "dW1 disagrees with the numerical derivative along random directions")
    assert verdict.check_passed([True, True]) and not verdict.check_passed([True, False])


# --- the reducer applies the rule -------------------------------------------------------------------

def _reduce(grad, approx, noise, verdicts, threshold=2e-7, screened=None):
    n = len(grad)
    name = screened.tensors[0].name if screened else "W"  # a screen's numbers: one per direction, its tensor's name
    layout = Layout((Tensor(name, (n,), 0),), "float64")
    arrays = {"theta": np.linspace(0.1, 0.4, n), "grad": np.array(grad, dtype=float),
              "gradapprox": np.array(approx, dtype=float), "noise": np.full(n, noise), "step": np.full(n, 1e-5)}
    arrays["cost_plus"] = 1.0 + arrays["gradapprox"] * 1e-5
    arrays["cost_minus"] = 1.0 - arrays["gradapprox"] * 1e-5
    return reduce_gradients(layout, lambda a, b: [{k: v[a:b] for k, v in arrays.items()}], threshold, 1.0, None,
                            verdicts, EPS, screened=screened)


def test_a_wrong_elements_ladder_bound_does_not_raise_its_tensors_threshold():
    """One element 1 % off, found wrong by a ladder that knows it only to 1e-2: the tensor is judged
    against 2e-7, as it would be with a correct backward, not against 5 × that bound (4.6e-3)."""
    grad, approx = [1.0, 2.0, 3.0, 4.04], [1.0, 2.0, 3.0, 4.04]
    reduction = _reduce(grad, approx, 1e-10, {3: Verdict(verify.WRONG, 4.0, 1e-2)})
    w = reduction.tensors[0]
    assert (reduction.passed, reduction.failing, w.wrong_elements) == (False, ["W"], [[3]])
    assert w.threshold == 2e-7
    assert w.noise_norm == pytest.approx(math.sqrt(3e-20 + 1e-4), rel=1e-12)  # its bound is reported, not a floor
    assert w.difference == pytest.approx(0.04 / (math.sqrt(14 + 4.04 ** 2) + math.sqrt(30)), rel=1e-12)


def test_an_agreeing_suspect_counts_its_ladder_bound_and_an_unresolved_one_its_disagreement():
    agrees = _reduce([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.4], 1e-10, {3: Verdict(verify.AGREES, 4.0, 1e-2)})
    w = agrees.tensors[0]
    assert (agrees.passed, w.difference, w.suspects.agrees) == (True, 0.0, 1)
    assert w.threshold == pytest.approx(5 * math.sqrt(3e-20 + 1e-4) / (2 * math.sqrt(30)), rel=1e-12)
    unresolved = _reduce([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.4], 1e-10,
                         {3: Verdict(verify.UNRESOLVED, math.nan, math.nan)})
    w = unresolved.tensors[0]
    assert (unresolved.passed, w.suspects.unresolved) == (True, 1)
    assert w.threshold == pytest.approx(5 * math.sqrt(3e-20 + 0.4 ** 2) / (math.sqrt(30) + math.sqrt(14 + 4.4 ** 2)),
                                        rel=1e-12)
    kink = _reduce([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.4], 1e-10, {3: Verdict(verify.KINK, 4.0, 1e-2)})
    w = kink.tensors[0]
    assert (kink.passed, w.difference, w.threshold, w.kinks, w.checked) == (True, 0.0, 2e-7, 1, 3)


def test_a_screen_is_judged_by_its_parameters_shapes_and_said_along_directions():
    """Three direction numbers of a (2, 1) bias whose gradient came back (2,): it fails on its shape,
    whatever its numbers say; numbers that disagree are said along directions."""
    screened = Layout((Tensor("b", (2, 1), 0, gradient_shape=(2,)),), "float64")
    agree = _reduce([1.0, -2.0, 0.5], [1.0, -2.0, 0.5], 1e-10, {}, screened=screened)
    assert (agree.passed, agree.tensors[0].diagnosis) == (False, "db has shape (2,) but b is (2, 1)")
    plain = Layout((Tensor("b", (2, 1), 0),), "float64")
    double = _reduce([2.0, -4.0, 1.0], [1.0, -2.0, 0.5], 1e-10, {}, screened=plain)
    assert (double.passed, double.tensors[0].diagnosis) == (False, "db is 2.00× the numerical gradient")
    one_off = _reduce([1.0, -2.0, 0.7], [1.0, -2.0, 0.5], 1e-10, {}, screened=plain)
    assert (one_off.passed, one_off.tensors[0].diagnosis) == (
        False, "db disagrees with the numerical derivative along random directions")


# --- the ladder's classification from slopes alone (a forward not traced) ----------------------------

THETA, SLOPE = 0.3, 0.7


def _ladder(J, h=1e-4):
    plus, minus, step_plus, step_minus = verify.ladder(np.array([THETA]), np.array([h]))
    return J(np.float64(THETA)), J(plus[0]), J(minus[0]), step_plus[0], step_minus[0]


def smooth(t):
    return 1 + SLOPE * (t - THETA) + 0.2 * (t - THETA) ** 2 + 0.05 * (t - THETA) ** 3


def kinked(t):  # slopes 0.7 left of θ and 1.2 right of it
    return 1 + SLOPE * (t - THETA) + 0.5 * np.maximum(0.0, t - THETA)


@pytest.mark.parametrize("J, grad, klass, estimate", [
    (smooth, SLOPE, verify.AGREES, SLOPE),
    (smooth, 1.01 * SLOPE, verify.WRONG, SLOPE),
    (smooth, 1.002 * SLOPE, verify.WRONG, SLOPE),
    (kinked, 1.2, verify.KINK, 1.2),          # the right side
    (kinked, SLOPE, verify.KINK, SLOPE),      # the left side
    (kinked, 0.95, verify.KINK, 0.95),        # their midpoint: sign(0) = 0, a tie split
    (kinked, 2.2, verify.WRONG, 1.2),         # none of them, the sides settled
])
def test_classify_from_slopes(J, grad, klass, estimate):
    got = verify.classify(grad, *_ladder(J), EPS, EPS)
    assert verify.CLASSES[got.klass] == verify.CLASSES[klass]
    assert 0 < got.tolerance <= 3 * verify.RESOLUTION * abs(estimate)  # settled to a few 0.1 % at worst
    assert abs(got.estimate - estimate) <= got.tolerance


def test_classify_is_unresolved_where_no_rung_is_quiet_enough():
    got = verify.classify(SLOPE, *_ladder(smooth), 1e-3, EPS)
    assert verify.CLASSES[got.klass] == "unresolved" and math.isnan(got.estimate)


# --- ECnoise ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_ecnoise_measures_uniform_noise_within_a_factor_of_two(seed):
    """A smooth f plus uniform noise of amplitude 1e-6: its standard deviation is 1e-6/√3."""
    t = (np.arange(7) - 3) * 1e-2
    f = smooth(THETA + t) + np.random.default_rng(seed).uniform(-1e-6, 1e-6, 7)
    level, inform = ecnoise(f)
    assert inform == 1
    assert 0.5 < level / (1e-6 / math.sqrt(3)) < 2


@pytest.mark.parametrize("spacing", [1e-2, 1e-4, 1e-6])
def test_ecnoise_of_a_noiseless_polynomial_is_round_off(spacing):
    level, inform = ecnoise(smooth(THETA + (np.arange(7) - 3) * spacing))
    assert inform == 1 and 0 < level <= EPS  # round-off of values near 1


def test_ecnoise_says_when_the_spacing_is_too_small_or_too_large():
    assert ecnoise(np.full(7, 1.0)) == (0.0, 2)                    # no change at all: too small
    assert ecnoise(smooth(THETA + (np.arange(7) - 3) * 1.0)) == (0.0, 3)  # values 10 % apart: too large
