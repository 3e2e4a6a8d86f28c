"""The pure numerics: central differences for a chunk, against the seed's numbers."""

import numpy as np

from gradjob.model import networks
from gradjob.model.cases import seed_case
from gradjob.model.layout import Layout
from gradjob.model.spec import Model, cost_function
from gradjob.numerics.evaluate import PerturbationFailure, in_place_costs, numerical_gradient, step_sizes
from gradjob.types import Calibration, TensorNoise


def fixed(n, h=1e-7):
    """Arguments for one fixed step h over n elements, no noise."""
    return np.full(n, h), np.zeros(n)


def seed_setup(forward=networks.forward_propagation_n):
    case = seed_case()
    layout = Layout.of(case.parameters)
    theta = layout.flatten(case.parameters)
    cost = cost_function(Model(forward, None), case.X, case.Y, layout.views(theta))
    return case, layout, theta, in_place_costs(cost, theta)


def test_seed_loop_parity_element_by_element():
    """Each gradapprox element is bit-identical to the seed's copy-the-vector loop."""
    case, layout, theta, cost = seed_setup()
    result = numerical_gradient(cost, theta.copy(), 0, *fixed(47), fixed=True)
    for i in range(layout.n_parameters):
        plus, minus = theta.copy(), theta.copy()
        plus[i] += 1e-7
        minus[i] -= 1e-7
        j_plus, _ = networks.forward_propagation_n(case.X, case.Y, layout.views(plus))
        j_minus, _ = networks.forward_propagation_n(case.X, case.Y, layout.views(minus))
        assert result.gradapprox[i] == (j_plus - j_minus) / (2 * 1e-7)


def test_theta_is_restored_bit_for_bit():
    _, layout, theta, cost = seed_setup()
    before = theta.copy()
    numerical_gradient(cost, theta[3:40].copy(), 3, *fixed(37, 1e-5))
    assert theta.tobytes() == before.tobytes()


def test_chunk_results_do_not_depend_on_chunk_boundaries():
    _, layout, theta, cost = seed_setup()
    calibration = Calibration(tuple(TensorNoise(t.name, 1e-15, 3e-5 + 1e-6 * k, 4, 0.5)
                                    for k, t in enumerate(layout.tensors)), 0)

    def chunk(a, b):
        original = theta[a:b].copy()
        return numerical_gradient(cost, original, a, step_sizes(original, layout, a, calibration, None),
                                  np.full(b - a, 1e-15)).gradapprox

    whole = chunk(0, 47)
    parts = np.concatenate([chunk(a, min(a + 7, 47)) for a in range(0, 47, 7)])
    assert whole.tobytes() == parts.tobytes()


def test_automatic_step_is_the_tensors_calibrated_scale_times_magnitude():
    layout = Layout.of({"a": np.zeros(2), "b": np.zeros(1)})
    calibration = Calibration((TensorNoise("a", 1e-16, 2e-5, 4), TensorNoise("b", 1e-16, 3e-4, 1)), 0)
    steps = step_sizes(np.array([0.5, -8.0, 2.0]), layout, 0, calibration, None)
    assert steps.tolist() == [2e-5, 2e-5 * 8.0, 3e-4 * 2.0]
    assert step_sizes(np.array([-8.0]), layout, 2, calibration, None).tolist() == [3e-4 * 8.0]
    assert step_sizes(np.array([-8.0, 1.0]), layout, 1, calibration, 1e-7).tolist() == [1e-7, 1e-7]


def test_failing_forward_names_the_index_and_restores_theta():
    theta = np.array([1.0, 2.0, 3.0])

    def cost():
        if theta[1] > 2.0:
            raise FloatingPointError("overflow in exp")
        return float(theta.sum())

    try:
        numerical_gradient(in_place_costs(cost, theta), theta[:3].copy(), 0, *fixed(3, 1e-3))
    except PerturbationFailure as failure:
        assert (failure.index, failure.sign, failure.detail) == (1, "+", "FloatingPointError: overflow in exp")
    else:
        raise AssertionError("no failure raised")
    assert theta.tolist() == [1.0, 2.0, 3.0]


def test_non_finite_cost_is_a_failure():
    theta = np.array([1.0])
    try:
        numerical_gradient(in_place_costs(lambda: float("nan"), theta), theta[:1].copy(), 0, *fixed(1, 1e-3))
    except PerturbationFailure as failure:
        assert failure.detail == "the cost is nan"
    else:
        raise AssertionError("no failure raised")
