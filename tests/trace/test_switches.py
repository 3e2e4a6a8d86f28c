"""Issue 17, point 7: the replay knows every switch of a traced forward, and ``Replay.flips`` tells
per evaluation how many switch elements take another branch than at θ (a tie is a branch of its own)."""

import sys
from pathlib import Path

import numpy as np
import pytest

from gradjob.model.layout import Layout
from gradjob.trace import Replay

sys.path.insert(0, str(Path(__file__).parents[1] / "families"))
import random_kinks  # noqa: E402


def replay_of(forward, parameters, X=None, Y=None):
    X = np.ones((1, 1)) if X is None else X
    Y = np.ones((1, 1)) if Y is None else Y
    layout = Layout.of(parameters)
    theta = layout.flatten(parameters)
    return Replay.of(forward, X, Y, layout, theta), layout, theta


@pytest.mark.parametrize("name, forward, at_theta, moves", [
    ("maximum", lambda X, Y, p: np.sum(np.maximum(0, p["w"])), [0.5, -0.5, 0.0], [(0, -1.0, 1), (0, 0.4, 0),
                                                                                   (2, 1e-300, 1), (2, -1e-300, 1)]),
    ("comparison", lambda X, Y, p: np.sum(p["w"] * (p["w"] > 0)), [0.5, -0.5, 0.0], [(1, 0.1, 1), (1, -0.1, 0)]),
    ("abs", lambda X, Y, p: np.sum(np.abs(p["w"])), [0.5, -0.5, 0.0], [(0, -0.5, 1), (2, 1e-3, 1), (1, -3.0, 0)]),
    ("clip", lambda X, Y, p: np.sum(np.clip(p["w"], -0.25, 0.25)), [0.5, -0.5, 0.0], [(0, 0.2, 1), (2, 0.3, 1),
                                                                                        (2, 0.2, 0)]),
    ("where", lambda X, Y, p: np.sum(np.where(p["w"] > 0.1, p["w"], 2 * p["w"])), [0.5, -0.5, 0.0],
     [(0, 0.05, 2), (0, 0.2, 0)]),
    ("integer cast", lambda X, Y, p: np.sum(p["w"] * np.floor(p["w"] * 4).astype(np.int64)), [0.5, -0.5, 0.1],
     [(2, 0.3, 2), (2, 0.15, 0)]),
    ("max-pooling", lambda X, Y, p: np.sum(p["w"].reshape(3, 2).max(axis=1)), [0.5, -0.5, 0.0, 0.0, 1.0, 2.0],
     [(1, 0.6, 1), (2, 1e-12, 1), (5, 1.5, 0), (5, 0.5, 1)]),
    ("min over an axis", lambda X, Y, p: np.sum(np.min(p["w"], axis=0)), [0.5, -0.5, 0.0],
     [(0, -1.0, 1), (2, -0.4, 0)]),
])
def test_flips_count_the_switch_elements_that_change_branch(name, forward, at_theta, moves):
    replay, layout, theta = replay_of(forward, {"w": np.array(at_theta)})
    indices = np.array([i for i, _, _ in moves])
    values = np.array([v for _, v, _ in moves])
    expected = [n for _, _, n in moves]
    assert replay.flips(indices, values).tolist() == expected
    assert replay.flips(np.arange(theta.size), theta).tolist() == [0] * theta.size  # θ itself flips nothing


def branches(case, X, parameters):
    """Every switch's branch, read from the forward's own pre-activations (sign, or the pair's order)."""
    A, out = X, []
    for layer, kind in enumerate(case.activations, start=1):
        Z = np.dot(parameters[f"W{layer}"], A) + parameters[f"b{layer}"]
        out.append(np.sign(Z[0::2] - Z[1::2]) if kind == "maxpool" else np.sign(Z))
        A = random_kinks.activate(kind, Z)
    return out


@pytest.mark.parametrize("seed", [0, 3, 11, 18, 102])
def test_flips_agree_with_the_forwards_own_branches_on_kinked_networks(seed):
    """Random piecewise-linear networks with planted kinks (ReLU, leaky, abs, max-pooling): a
    perturbation flips a switch exactly when some pre-activation's sign (a pooled pair's order) changes."""
    case = random_kinks.make_case(seed)
    parameters = {k: v.astype(np.float64) for k, v in case.parameters.items()}
    X, Y = case.X.astype(np.float64), case.Y.astype(np.float64)
    replay, layout, theta = replay_of(case.forward, parameters, X, Y)
    steps = np.array([1e-3, -1e-3, 1e-9, -1e-9, 1e-13, -1e-13])
    indices = np.repeat(np.arange(layout.n_parameters), steps.size)
    values = theta[indices] + np.tile(steps, layout.n_parameters)
    got = replay.flips(indices, values) > 0
    at_theta = branches(case, X, layout.views(theta))
    expected = np.zeros(indices.size, dtype=bool)
    for p, (i, value) in enumerate(zip(indices, values)):
        moved = theta.copy()
        moved[i] = value
        expected[p] = any((a != b).any() for a, b in zip(branches(case, X, layout.views(moved)), at_theta))
    assert expected.any() and not expected.all()
    assert got.tolist() == expected.tolist()
