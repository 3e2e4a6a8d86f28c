"""Calibration's lines driven together (``noise.in_step``): the same numbers as one line at a time,
in one call of the evaluator per round instead of one per element (a replay walks its whole graph
per call: a naive conv's calibration took 52 s of a 92 s check), and an element whose evaluation
fails left out alone."""

import numpy as np

from gradjob.model.layout import Layout
from gradjob.numerics import noise
from gradjob.numerics.evaluate import PerturbationFailure


def quartic(theta):
    """J(θ) = Σ θ⁴/4 + a ripple of 1e-13 (noise ECnoise can measure), evaluated per perturbation."""
    def costs(indices, values, sign=""):
        calls.append(indices.size)
        out = np.empty(indices.size)
        for k, (i, v) in enumerate(zip(indices, values)):
            moved = theta.copy()
            moved[i] = v
            if moved[i] > 50:
                raise PerturbationFailure(int(i), sign, "the cost is nan")
            out[k] = np.sum(moved ** 4) / 4 + 1e-13 * np.sin(1e9 * moved[i])
        return out
    calls = []
    return costs, calls


def test_lines_driven_together_give_each_lines_own_numbers_in_one_call_per_round():
    theta = np.array([0.3, -1.2, 2.0, 0.7, 1.5])
    costs, calls = quartic(theta)
    alone = {i: noise.along(noise.noise_steps(1e-8 * max(1.0, abs(theta[i]))), lambda o, i=i: costs(
        np.full(o.size, i), theta[i] + o)) for i in range(5)}
    calls_alone = len(calls)
    calls.clear()
    together = noise.in_step(costs, {i: (noise.noise_steps(1e-8 * max(1.0, abs(theta[i]))), float(theta[i]))
                                     for i in range(5)}, theta.dtype)
    assert together == alone
    assert len(calls) < calls_alone and len(calls) == max(spent for _, spent in alone.values()) // noise.POINTS


def test_an_element_whose_evaluation_fails_is_left_out_and_the_others_measured():
    theta = np.array([0.3, 49.9999, 2.0])
    costs, _ = quartic(theta)
    layout = Layout.of({"w": theta})
    calibration = noise.calibrate(costs, layout, theta, float(np.sum(theta ** 4) / 4), "central", np.float64)
    assert calibration.tensors[0].measured == 2


def test_suspects_own_noise_is_the_same_measured_together_with_their_switches_asked_once_a_round():
    """``own_noise_steps`` of several suspects: switches (a kink at θ = 1 for element 0) and costs each
    asked in one call per round, the levels each suspect's own."""
    theta = np.array([1.0 + 1e-7, -1.2, 2.0])
    costs, calls = quartic(theta)
    asked = []

    def flips(indices, values):
        asked.append(indices.size)
        return ((values > 1.0) != (theta[indices] > 1.0)).astype(np.int64)

    cost = float(np.sum(theta ** 4) / 4)
    alone = {i: noise.noise_along(costs, i, theta[i], cost, flips, 1e-4) for i in range(3)}
    rounds_alone = len(asked)
    asked.clear()
    together = noise.in_step(costs, {i: (noise.own_noise_steps(theta.dtype, cost, float(theta[i]), True, 1e-4),
                                         float(theta[i])) for i in range(3)}, theta.dtype, flips, drop_failures=False)
    assert together == alone
    assert len(asked) < rounds_alone
