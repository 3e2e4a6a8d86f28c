"""Replay rules that keep a perturbation's change where it is: a reshape that leaves an axis alone,
a max that no perturbation of the batch moves, a gather of single elements (``probs[np.arange(N),
y]``) and the smooth elementwise node before it evaluated at those elements alone. Each is checked
against the real forward and shown to take its path."""

import numpy as np
import pytest
from test_trace import check, small_case

from gradjob.model.layout import Layout
from gradjob.trace import Replay
from gradjob.trace.replay import Plan

N, T, V = 2, 4, 5


def softmax_rows(X, Y, p):
    """cs231n's temporal softmax: scores (N*T, V) reshaped to (N, T, V) and back, a stable softmax,
    the probabilities of the labels gathered; and the rows' maxima themselves."""
    scores = (X.T @ p["W"].T).reshape(N, T, V) + p["b"].reshape(V)
    flat = scores.reshape(N * T, V)
    top = np.max(flat, axis=1, keepdims=True)
    probs = np.exp(flat - top)
    probs /= np.sum(probs, axis=1, keepdims=True)
    return -np.sum(np.log(probs[np.arange(N * T), Y])) / N + 0.3 * np.sum(top ** 2)


def log_softmax(X, Y, p):
    """cs231n's softmax_loss: log-probabilities, the labels' gathered."""
    scores = X.T @ p["W"].T + p["b"].T
    shifted = scores - np.max(scores, axis=1, keepdims=True)
    log_probs = shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))
    return -np.sum(log_probs[np.arange(N * T), Y]) / N


def case():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((3, N * T))
    Y = rng.integers(0, V, N * T)
    return X, Y, {"W": rng.standard_normal((V, 3)), "b": 0.1 * rng.standard_normal((V, 1))}


def forward_costs(forward, X, Y, layout, theta, indices, values):
    costs = []
    for i, v in zip(indices, values):
        moved = theta.copy()
        moved[i] = v
        costs.append(forward(X, Y, layout.views(moved)))
    return np.array(costs)


def test_softmax_losses_replay_as_the_forward_and_divide_only_at_the_labels():
    X, Y, params = case()
    for forward, deferred in ((softmax_rows, np.divide), (log_softmax, np.subtract)):
        replay = check(forward, X, Y, params)
        plan = Plan(replay.graph, replay.graph.params["W"])
        assert [replay.graph.nodes[e].attrs.function for e in plan.deferred] == [deferred]


def test_moves_of_a_column_that_is_no_rows_max_stay_in_that_column_up_to_the_gather():
    """Class c is nowhere the largest score: moving W[c, :] and b[c] a little leaves every max alone,
    so the scores' moved column goes through the reshapes, the max and the exponential as one column
    (kinds P), and is gathered from there."""
    X, Y, params = case()
    scores = X.T @ params["W"].T + params["b"].T
    c = int(np.setdiff1d(np.arange(V), scores.argmax(axis=1))[0])
    layout = Layout.of(params)
    theta = layout.flatten(params)
    replay = Replay.of(softmax_rows, X, Y, layout, theta)
    indices = np.array([3 * c, 3 * c + 1, 3 * c + 2, 3 * V + c])
    for step in (1e-9, -1e-7):
        values = theta[indices] + step
        np.testing.assert_allclose(replay.costs(indices, values),
                                   forward_costs(softmax_rows, X, Y, layout, theta, indices, values), rtol=1e-13)


def test_moves_that_leave_the_max_alone_and_moves_that_do_not_give_the_forwards_costs_in_one_batch():
    """The batch is split by whether the max moved: W[0, 0] moved by 1e-9 leaves it, by 5 it does not."""
    X, Y, params = case()
    layout = Layout.of(params)
    theta = layout.flatten(params)
    replay = Replay.of(softmax_rows, X, Y, layout, theta)
    indices = np.array([0, 0, 0, 1, 1, 5, 3 * V])
    values = theta[indices] + np.array([1e-9, 5.0, -1e-9, 1e-9, -5.0, 1e-9, 4.0])
    np.testing.assert_allclose(replay.costs(indices, values),
                               forward_costs(softmax_rows, X, Y, layout, theta, indices, values), rtol=1e-13)


def naive_conv(X, Y, p):
    """cs231n's conv_forward_naive: a filter taken by an integer (``w[f]``) and a window by slices, per
    output element; then b[f] by an integer. A filter moved stays one element of that filter: the
    other filters' outputs keep θ's values."""
    out = np.zeros((2, 3, 3))
    for f in range(2):
        for i in range(3):
            for j in range(3):
                out[f, i, j] = np.sum(X[:, i:i + 2, j:j + 2] * p["w"][f, :, ::-1][:, 1:]) + p["b"][f]
    return np.sum(np.tanh(out) ** 2) + np.sum(p["w"][None, -1, ..., 0] ** 3)


def test_a_moved_filter_indexed_by_integers_and_slices_replays_as_the_forward():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((2, 4, 4))
    params = {"w": rng.standard_normal((2, 2, 3)), "b": rng.standard_normal(2)}
    check(naive_conv, X, None, params)


def wide_softmax(X, Y, p):
    """A softmax over 40 classes, its max kept, and a plain max term: sums over long rows, whose
    order differs between a row held in full and one changed at a single column."""
    flat = X.T @ p["W"].T + p["b"].T
    top = np.max(flat, axis=1, keepdims=True)
    probs = np.exp(flat - top)
    probs /= np.sum(probs, axis=1, keepdims=True)
    return -np.sum(np.log(probs[np.arange(flat.shape[0]), Y])) + np.sum(np.sin(top))


def test_each_elements_cost_is_the_same_to_the_last_bit_alone_and_in_any_batch():
    """Whether a perturbation moves a row's max decides its path (θ's max kept, or the moved one), per
    perturbation, never by the rest of its batch: chunks of any size give bit-identical numbers."""
    rng = np.random.default_rng(7)
    X, Y = rng.standard_normal((6, 9)), rng.integers(0, 40, 9)
    params = {"W": rng.standard_normal((40, 6)), "b": rng.standard_normal((40, 1))}
    layout = Layout.of(params)
    theta = layout.flatten(params)
    replay = Replay.of(wide_softmax, X, Y, layout, theta)
    indices = np.arange(theta.size)
    for scale in (1e-6, 0.3, 3.0):
        values = theta + scale * rng.standard_normal(theta.size)
        together = replay.costs(indices, values)
        alone = np.array([replay.costs(indices[k:k + 1], values[k:k + 1])[0] for k in indices])
        assert np.count_nonzero(together != alone) == 0, scale


SLICED_TO_ONE = {  # a moved axis sliced to one position or none (found in review: a wrong max, crashes)
    "max over a one-row slice": lambda X, Y, p: np.sum(np.max(p["W"][0:1], axis=0) * np.array([1.0, 2.0, 3.0])),
    "max of a one-element slice": lambda X, Y, p: np.max(p["v"][1:2]) + np.sum(p["v"] ** 2),
    "min over a reversed one-row slice": lambda X, Y, p: np.sum(np.min(p["W"][-1:-2:-1], axis=0) ** 3),
    "nanmin over a one-column slice": lambda X, Y, p: np.sum(np.nanmin(p["W"][:, 1:2], axis=1) * X[0, :4]),
    "one row reshaped": lambda X, Y, p: np.sum(np.tanh(p["W"][0:1].reshape(3)) * X[:, 0]),
    "one column raveled": lambda X, Y, p: np.sum(np.ravel(p["W"][:, 1:2]) ** 3),
    "an empty slice": lambda X, Y, p: np.sum(p["W"][4:]) + np.sum(p["W"] ** 2),
    "a boolean key": lambda X, Y, p: np.sum(np.tanh(p["W"][True]) * 2.0),
}


@pytest.mark.parametrize("name", list(SLICED_TO_ONE))
def test_a_moved_axis_sliced_to_one_position_replays_as_the_forward(name):
    X, Y, params = small_case()
    check(SLICED_TO_ONE[name], X, Y, params)


def test_a_product_of_a_moved_weight_and_an_infinite_operand_is_the_forwards():
    """exp(1000 x) overflows to inf; times W with W[0, 2] moved across zero the forward gives -inf
    where θ's product plus the moved element's share would give inf - inf = NaN."""
    rng = np.random.default_rng(1)
    X = np.abs(rng.standard_normal((3, 5))) + 1
    W = -0.01 * np.abs(rng.standard_normal((4, 3)))
    W[0] = [1.0, 1.0, 1e-3]
    layout = Layout.of({"W": W})
    theta = layout.flatten({"W": W})

    def forward(X, Y, p):
        return np.sum(np.exp(np.minimum(np.exp(1000 * (X.T @ p["W"].T)) @ p["W"], 0)))

    with np.errstate(over="ignore", invalid="ignore"):
        replay = Replay.of(forward, X, None, layout, theta)
        moved = theta.copy()
        moved[2] = -1e-3
        assert replay.costs(np.array([2]), np.array([-1e-3]))[0] == forward(X, None, layout.views(moved)) == 10.0
