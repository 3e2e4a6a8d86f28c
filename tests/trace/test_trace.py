"""Tracing a user's NumPy forward and replaying single-element perturbations incrementally.

Every replayed cost is compared with the real forward run on θ perturbed in place (the generic
path, ``in_place_costs``): at θ to the last bit, under perturbations to round-off of the forward's
dtype, with steps small enough to be a derivative's and large enough to switch ReLUs. Forwards
the replay cannot follow raise ``Untraceable`` naming the operation and the user's line.

Speed is measured outside the suite, not asserted here.
"""

import textwrap
import threading

import numpy as np
import pytest

from gradjob.model.layout import Layout
from gradjob.model.spec import Model, cost_function
from gradjob.numerics.evaluate import PerturbationFailure, in_place_costs
from gradjob.trace import Replay, Untraceable, replay


def load(source: str, name: str = "model.py") -> dict:
    """A model file's namespace, compiled under ``name`` as gradjob loads a user's file."""
    namespace: dict = {}
    exec(compile(textwrap.dedent(source), name, "exec"), namespace)
    return namespace


def line_of(source: str, marker: str = "# here") -> int:
    return next(n for n, text in enumerate(textwrap.dedent(source).splitlines(), 1) if marker in text)


def plain_costs(forward, X, Y, layout, theta):
    return in_place_costs(cost_function(Model(forward, None), X, Y, layout.views(theta)), theta)


def check(forward, X, Y, parameters, *, scales=(1e-7, 1e-3, 0.5), seed=0, rtol=None):
    """Replayed costs equal the real forward's: exactly at θ, to round-off at every parameter
    moved by each scale (1e-7 keeps a derivative's step, 0.5 switches ReLUs and masks)."""
    layout = Layout.of(parameters)
    theta = layout.flatten(parameters)
    before = theta.copy()
    traced = Replay.of(forward, X, Y, layout, theta)
    plain = plain_costs(forward, X, Y, layout, theta)
    index = np.arange(theta.size)
    assert traced.cost == plain(index[:1], theta[:1], "")[0]
    if rtol is None:
        rtol = 1e-12 if theta.dtype == np.float64 else 2e-5
    rng = np.random.default_rng(seed)
    for scale in scales:
        values = (theta + scale * np.maximum(1, np.abs(theta)) * rng.standard_normal(theta.size)).astype(theta.dtype)
        expected = plain(index, values, "+")
        np.testing.assert_allclose(traced.costs(index, values, "+"), expected, rtol=rtol, atol=rtol * 1e-3)
    assert theta.tobytes() == before.tobytes()
    return traced


def small_case(dtype=np.float64, seed=0, examples=7):
    """Parameters W (4, 3), b (4, 1), V (3, 4), v (5,), s (); X (3, examples); Y one-hot (3, examples)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((3, examples)).astype(dtype)
    Y = np.eye(3)[:, rng.integers(0, 3, examples)].astype(dtype)
    parameters = {"W": rng.standard_normal((4, 3)), "b": 0.1 * rng.standard_normal((4, 1)),
                  "V": rng.standard_normal((3, 4)), "v": rng.standard_normal(5), "s": np.array(0.7)}
    return X, Y, {k: v.astype(dtype) for k, v in parameters.items()}


# Each forward uses a few of the supported operations on parameters W, b, V, v, s and data X, Y.
OPERATIONS = {
    "dot and +": "np.sum(np.dot(p['W'], X) + p['b'])",
    "@ both sides": "np.sum((p['W'] @ X).T @ p['V'].T) + np.sum(X.T @ p['W'].T)",
    "matmul and vectors": "np.matmul(p['V'], p['W']).sum() + p['v'] @ p['v'] + np.dot(p['v'][:3], X[:, 0])",
    "X.dot(W) with X plain": "np.sum(X.T.dot(p['W'].T)) + np.sum(p['W'].dot(X)) + X[:, 0].dot(p['W'].T).sum()",
    "arithmetic": "np.sum((p['W'] @ X - 1.5) * 2 / (3 + p['W'] @ X ** 2) ** 2 - -p['b'] + 1 - p['b'] / 4)",
    "ufunc names": "np.sum(np.divide(np.add(p['v'], 2), np.power(np.square(p['v']) + 1, 1.5)) "
                   "- np.subtract(1, np.multiply(p['v'], p['s'])) + np.negative(p['s']))",
    "maximum minimum where": "np.sum(np.maximum(0, p['W'] @ X) + np.minimum(p['W'] @ X, 0.3) "
                             "+ np.where(p['W'] @ X > 0, p['W'] @ X, 0.01 * (p['W'] @ X)))",
    "unary functions": "np.sum(np.exp(-np.abs(p['v'])) + np.log(1 + p['v'] ** 2) + np.log1p(np.abs(p['v'])) "
                       "+ np.tanh(p['v']) + np.sqrt(np.square(p['v']) + 1) + abs(p['v']))",
    "masks": "np.sum((p['W'] @ X) * (p['W'] @ X > 0).astype(float) + (p['W'] @ X) * np.int64(p['W'] @ X <= 0.2) "
             "+ 0.5 * ((p['W'] @ X > 0) & (p['W'] @ X < 1)))",
    "reductions": "np.sum(p['W'], axis=0).sum() + p['W'].max(axis=1, keepdims=True).sum() + np.mean(p['W'] ** 2) "
                  "+ p['W'].mean(axis=0).sum() + np.max(p['v']) + p['v'].min() + p['W'].sum(keepdims=True).sum() "
                  "+ np.amax(p['W'] @ X, axis=0).sum() + np.min(p['W'] @ X, axis=(0, 1))",
    "var std norm nansum": "np.var(p['W'] @ X, axis=1).sum() + (p['W'] @ X).std(axis=0, ddof=1).sum() "
                           "+ np.linalg.norm(p['v']) + np.linalg.norm(p['W']) + np.nansum(p['W'] * X[:, :1].T)",
    "shapes": "np.sum(p['W'].T.reshape(-1)[::2] * 3) + np.transpose(p['W'] @ X).reshape(X.shape[1], 2, 2)[:, 1].sum() "
              "+ np.squeeze(np.expand_dims(p['v'], 0) * p['s']).sum() + p['W'].ravel()[3] + p['W'].flatten()[5] "
              "+ float(len(p['v'])) * p['v'].shape[0] * p['s'] ** p['v'].ndim + np.squeeze(p['b'][1])",
    "indexing": "np.sum(p['W'][np.arange(3), [0, 2, 1]]) + p['W'][:, 1:].sum() + p['W'][p['W'].shape[0] - 1, 0] "
                "+ p['v'][np.array([True, False, True, False, True])].sum() + (p['V'] @ p['W'])[None, ..., 0].sum()",
    "cs231n indexing": "-np.sum(np.log(np.exp(S) / np.exp(S).sum(axis=1, keepdims=True))"
                       "[np.arange(S.shape[0]), np.argmax(Y, axis=0)]) / S.shape[0]",
    "cross-entropy": "np.sum(np.multiply(-np.log(1 / (1 + np.exp(-(p['V'] @ p['W'] @ X)))), Y)) / X.shape[1]",
    "astype and dtypes": "np.sum((p['W'] @ X).astype(np.float32).astype(np.float64) + p['s'].astype(int) "
                         "+ np.astype(p['v'], np.float32).sum(dtype=np.float64))",
    "clip and copy": "np.clip(p['v'], -0.5, 0.5).sum() + p['v'].clip(0).sum() + np.copy(p['W']).sum() + p['b'].copy().sum()",
    "augmented assignment": "augmented(p, X)",
    "float() of the returned cost": "float(np.squeeze(np.sum(p['W'] @ X) / X.shape[1]))",
    ".item() of the returned cost": "(np.sum(p['V'] @ p['W']) * p['s']).item()",
    "a gradient beside the loss": "with_gradient(p, X)",
    "a reduction of a 0-d value": "np.min(t := p['v'] @ p['v'] * 2.5) + np.sum(np.tanh(t)) + np.max(u := p['s'] * 3) "
                                  "+ np.exp(u)",
}

HELPERS = """
import numpy as np


def augmented(p, X):
    scores = p['W'] @ X
    scores -= np.max(scores, axis=0, keepdims=True)
    scores *= 2
    loss = np.float64(0.0)
    loss += np.sum(scores ** 2)
    total = 0
    for row in scores:
        total = total + row.sum()
    return loss + total


def with_gradient(p, X):
    Z = p['W'] @ X
    loss = np.sum(Z ** 2)
    dZ = Z.copy()
    dZ[0] = 0.0
    dZ[:, 1] -= 1
    return loss
"""


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(OPERATIONS))
def test_each_operation_replays_as_the_real_forward(name, dtype):
    namespace = load(HELPERS + f"""

def forward(X, Y, p):
    S = (p['W'] @ X).T
    return {OPERATIONS[name]}, S
""")
    X, Y, parameters = small_case(dtype)
    check(namespace["forward"], X, Y, parameters, rtol=None if dtype == np.float64 else 5e-5)


def test_values_keep_the_dtypes_of_the_real_forward():
    """In float32, 1e8 + v loses v (float32's spacing there is 8); in float64 it would not. The
    replay computes in the forward's dtypes, so it loses exactly what the forward loses. X.dot(W)
    with X float64 and W float32 computes in float64, as NumPy does."""
    forward = load("""
        import numpy as np

        def forward(X, Y, p):
            big = (p['v'] + np.float32(1e8)) - np.float32(1e8)
            return np.sum(big * p['v']) + np.sum(X.dot(p['W'].T) ** 2), None
    """)["forward"]
    rng = np.random.default_rng(9)
    X = rng.standard_normal((6, 3))  # float64
    parameters = {"v": (8 * rng.standard_normal(5)).astype(np.float32), "W": rng.standard_normal((4, 3)).astype(np.float32)}
    layout = Layout.of(parameters)
    theta = layout.flatten(parameters)
    traced = Replay.of(forward, X, None, layout, theta)
    plain = plain_costs(forward, X, None, layout, theta)
    index = np.arange(5)  # v
    values = theta[:5] + np.float32(3.0)
    np.testing.assert_allclose(traced.costs(index, values), plain(index, values, "+"), rtol=1e-6)
    v = values.astype(np.float64)
    in_float64 = [traced.cost + (np.sum(np.where(np.arange(5) == i, v, theta[:5]) ** 2) - np.sum(theta[:5] ** 2.0))
                  for i in range(5)]
    assert np.all(np.abs(traced.costs(index, values) - in_float64) > 1e-3)  # not what float64 would give
    check(forward, X, None, parameters)


def test_relu_kinks_switch_and_are_recomputed():
    """Pre-activations within 1e-9 of 0 switch under the 1e-7 step and under larger ones; the
    mask is recomputed for every perturbation, never frozen at θ."""
    forward = load("""
        import numpy as np

        def forward(X, Y, p):
            A = np.maximum(0, np.dot(p['W'], X) + p['b'])
            mask = (np.dot(p['V'], A) + p['c']) > 0
            A2 = np.multiply(np.dot(p['V'], A) + p['c'], np.int64(mask))
            return np.sum(A2 ** 2) + np.sum(A), A
    """)["forward"]
    rng = np.random.default_rng(3)
    X = rng.standard_normal((3, 6))
    W, V = rng.standard_normal((4, 3)), rng.standard_normal((2, 4))
    b = -(W @ X)[:, 2:3] + np.array([[1e-9], [-1e-9], [3e-10], [0.0]])  # column 2 sits on the kinks
    c = -(V @ np.maximum(0, W @ X + b))[:, 4:5] + np.array([[-2e-10], [5e-10]])
    parameters = {"W": W, "b": b, "V": V, "c": c}
    layout = Layout.of(parameters)
    theta = layout.flatten(parameters)
    switched = 0
    for values in (theta + 1e-7, theta - 1e-7):
        for i in range(theta.size):
            moved = theta.copy()
            moved[i] = values[i]
            p = layout.views(moved)
            before = np.maximum(0, layout.views(theta)["W"] @ X + layout.views(theta)["b"]) > 0
            switched += int(np.any((np.maximum(0, p["W"] @ X + p["b"]) > 0) != before))
    assert switched > 0  # the case does exercise ReLUs switching
    check(forward, X, None, parameters, scales=(1e-7, 1e-4, 0.5))


SEED_STYLE = """
import numpy as np


def linear_forward(A, W, b):
    Z = np.dot(W, A) + b
    cache = (A, W, b)
    return Z, cache


def relu(Z):
    A = np.maximum(0, Z)
    return A, Z


def sigmoid(Z):
    A = 1 / (1 + np.exp(-Z))
    return A, Z


def linear_activation_forward(A_prev, W, b, activation):
    Z, linear_cache = linear_forward(A_prev, W, b)
    A, activation_cache = sigmoid(Z) if activation == "sigmoid" else relu(Z)
    return A, (linear_cache, activation_cache)


def forward(X, Y, parameters):
    caches = []
    A = X
    L = len(parameters) // 2
    for l in range(1, L):
        A, cache = linear_activation_forward(A, parameters['W' + str(l)], parameters['b' + str(l)], "relu")
        caches.append(cache)
    AL, cache = linear_activation_forward(A, parameters['W' + str(L)], parameters['b' + str(L)], "sigmoid")
    caches.append(cache)
    m = Y.shape[1]
    cost = (1. / m) * (-np.dot(Y, np.log(AL).T) - np.dot(1 - Y, np.log(1 - AL).T))
    cost = np.squeeze(cost)
    return cost, caches
"""

TANH_SOFTMAX_L2 = """
import numpy as np


def forward(X, Y, parameters, lambd=0.7):
    m = X.shape[1]
    L = len(parameters) // 2
    A = X
    for l in range(1, L):
        A = np.tanh(parameters['W%d' % l] @ A + parameters['b%d' % l])
    Z = parameters['W%d' % L] @ A + parameters['b%d' % L]
    Z = Z - np.max(Z, axis=0, keepdims=True)
    P = np.exp(Z) / np.sum(np.exp(Z), axis=0, keepdims=True)
    if Y.ndim == 1:                                   # integer labels
        cross_entropy = -np.sum(np.log(P[Y, np.arange(m)])) / m
    else:                                             # one-hot labels
        cross_entropy = -np.sum(np.multiply(Y, np.log(P))) / m
    l2 = sum(np.sum(np.square(parameters['W%d' % l])) for l in range(1, L + 1))
    return cross_entropy + lambd / (2 * m) * l2, P
"""


def network(layers, examples, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((layers[0], examples)).astype(dtype)
    parameters = {}
    for l in range(1, len(layers)):
        parameters[f"W{l}"] = (rng.standard_normal((layers[l], layers[l - 1])) * np.sqrt(2 / layers[l - 1])).astype(dtype)
        parameters[f"b{l}"] = (0.1 * rng.standard_normal((layers[l], 1))).astype(dtype)
    return X, parameters


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_seed_style_helper_model_agrees_at_every_parameter(dtype):
    X, parameters = network([6, 5, 4, 1], 9, 1, dtype)
    Y = np.random.default_rng(1).integers(0, 2, (1, 9)).astype(dtype)
    check(load(SEED_STYLE)["forward"], X, Y, parameters)


@pytest.mark.parametrize("labels", ["one-hot", "integers"])
def test_tanh_softmax_l2_model_agrees_at_every_parameter(labels):
    X, parameters = network([6, 5, 4, 3], 8, 2)
    y = np.random.default_rng(2).integers(0, 3, 8)
    Y = np.eye(3)[:, y] if labels == "one-hot" else y
    check(load(TANH_SOFTMAX_L2)["forward"], X, Y, parameters)


def test_central_differences_equal_the_generic_paths(monkeypatch):
    """± steps of every parameter, in one call across tensors, through batches split into blocks
    (a tiny block size forces every split, regrouping and hoisting path)."""
    monkeypatch.setattr(replay, "BLOCK_BYTES", 1500)
    X, parameters = network([7, 6, 5, 3], 10, 4)
    Y = np.eye(3)[:, np.random.default_rng(4).integers(0, 3, 10)]
    forward = load(TANH_SOFTMAX_L2)["forward"]
    layout = Layout.of(parameters)
    theta = layout.flatten(parameters)
    traced = Replay.of(forward, X, Y, layout, theta)
    plain = plain_costs(forward, X, Y, layout, theta)
    index = np.random.default_rng(5).permutation(theta.size)  # tensors interleaved in one call
    h = 4 * np.finfo(theta.dtype).eps ** (1 / 3) * np.maximum(1, np.abs(theta[index]))
    for values in (theta[index] + h, theta[index] - h):
        np.testing.assert_allclose(traced.costs(index, values, "+"), plain(index, values, "+"), rtol=1e-13, atol=0)
    seed = load(SEED_STYLE)["forward"]
    X, parameters = network([9, 8, 6, 1], 12, 6)
    Y = (np.random.default_rng(6).random((1, 12)) < 0.5).astype(float)
    check(seed, X, Y, parameters, scales=(1e-6, 0.5))


def test_non_finite_costs_raise_as_the_generic_path_does():
    forward = load("""
        import numpy as np

        def forward(X, Y, p):
            A = 1 / (1 + np.exp(-(np.dot(p['W2'], np.maximum(0, np.dot(p['W1'], X) + p['b1'])) + p['b2'])))
            log_probs = np.multiply(-np.log(A), Y) + np.multiply(-np.log(1 - A), 1 - Y)
            return 1.0 / X.shape[1] * np.sum(log_probs), A
    """)["forward"]
    X, parameters = network([3, 2, 1], 4, 0)
    parameters["b2"][:] = 800.0  # the sigmoid saturates to exactly 1: 0 · log(1 - A) is nan
    layout = Layout.of(parameters)
    theta = layout.flatten(parameters)
    Y = np.array([[1.0, 0.0, 1.0, 0.0]])
    with np.errstate(all="ignore"):
        traced = Replay.of(forward, X, Y, layout, theta)
        plain = plain_costs(forward, X, Y, layout, theta)
        index = np.arange(theta.size)
        failures = []
        for costs in (traced.costs, plain):
            with pytest.raises(PerturbationFailure) as info:
                costs(index, theta + 1e-3, "-")
            failures.append((info.value.index, info.value.sign, info.value.detail))
    assert failures[0] == failures[1] == (0, "-", "the cost is nan")


def test_costs_of_a_tensor_the_cost_ignores_and_of_unmoved_parameters():
    forward = load("""
        import numpy as np

        def forward(X, Y, p):
            return np.sum(p['W'] @ X) ** 2, None
    """)["forward"]
    X, _, parameters = small_case()
    layout = Layout.of(parameters)
    theta = layout.flatten(parameters)
    traced = Replay.of(forward, X, None, layout, theta)
    index = np.arange(theta.size)
    np.testing.assert_array_equal(traced.costs(index[12:], theta[12:] + 1.0), traced.cost)  # b, V, v, s unused
    np.testing.assert_allclose(traced.costs(index, theta), traced.cost, rtol=1e-14)


def test_a_trace_leaves_the_users_objects_as_a_real_forward_would():
    """Values a forward keeps (a running mean in a dict, a cast mask) act as their values at θ
    once the trace is over, so later real calls of the forward are unaffected."""
    namespace = load("""
        import numpy as np

        STATE = {}

        def forward(X, Y, p):
            Z = p['W'] @ X
            mean = Z.mean(axis=1, keepdims=True)
            STATE['running'] = 0.9 * STATE.get('running', 0) + 0.1 * mean
            STATE['mask'] = np.int64(Z > 0)
            return np.sum((Z - mean) ** 2 * STATE['mask']), None
    """)
    forward = namespace["forward"]
    X, _, parameters = small_case()
    layout = Layout.of(parameters)
    theta = layout.flatten(parameters)
    traced = Replay.of(forward, X, None, layout, theta)
    views = layout.views(theta)
    expected_running = 0.1 * (views["W"] @ X).mean(axis=1, keepdims=True)
    np.testing.assert_array_equal(np.asarray(namespace["STATE"]["running"]), expected_running)
    np.testing.assert_array_equal(np.asarray(namespace["STATE"]["mask"]), np.int64(views["W"] @ X > 0))
    assert forward(X, None, views)[0] == traced.cost
    mean = (views["W"] @ X).mean(axis=1, keepdims=True)
    np.testing.assert_array_equal(namespace["STATE"]["running"], 0.9 * (0.1 * mean) + 0.1 * mean)


def test_a_replay_pickles():
    import pickle

    X, parameters = network([6, 5, 4, 1], 9, 1)
    Y = np.random.default_rng(1).integers(0, 2, (1, 9)).astype(float)
    layout = Layout.of(parameters)
    theta = layout.flatten(parameters)
    traced = Replay.of(load(SEED_STYLE)["forward"], X, Y, layout, theta)
    copy = pickle.loads(pickle.dumps(traced))
    index = np.arange(theta.size)
    np.testing.assert_array_equal(copy.costs(index, theta + 0.01), traced.costs(index, theta + 0.01))
    assert copy.cost == traced.cost


def test_costs_from_several_threads_at_once():
    X, parameters = network([6, 5, 4, 3], 8, 7)
    Y = np.eye(3)[:, np.random.default_rng(7).integers(0, 3, 8)]
    forward = load(TANH_SOFTMAX_L2)["forward"]
    layout = Layout.of(parameters)
    theta = layout.flatten(parameters)
    traced = Replay.of(forward, X, Y, layout, theta)
    index = np.arange(theta.size)
    expected = traced.costs(index, theta + 1e-3)
    results = [None] * 4
    threads = [threading.Thread(target=lambda k=k: results.__setitem__(k, traced.costs(index, theta + 1e-3)))
               for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for result in results:
        np.testing.assert_array_equal(result, expected)


# --- what cannot be replayed: Untraceable, naming the operation and the line ----------------------

REFUSED = {
    "np.linalg.svd is not supported": "return np.sum(np.linalg.svd(p['W'])[1])  # here",
    "np.cumsum is not supported": "return np.sum(np.cumsum(p['v']))  # here",
    "np.add.reduce is not supported": "return np.add.reduce(p['v'])  # here",
    "assignment into a parameter or a view of one (A[...] = ...) is not supported":
        "p['W'][0, 0] = 1.0  # here\n    return p['W'].sum()",
    "in-place += on a parameter or a view of one is not supported":
        "W = p['W']\n    W += 1  # here\n    return W.sum()",
    "in-place *= on an array that shares memory with another (a view) is not supported":
        "Z = p['W'] @ X\n    T = Z.T\n    T *= 2  # here\n    return Z.sum()",
    "Python control flow on a traced value (if, while, and, or, not, assert) is not supported":
        "if np.sum(p['W']) > 0:  # here\n        return p['W'].sum()\n    return -p['W'].sum()",
    "float() of a traced value is not supported, but on the cost the forward returns":
        "return 2 * float(np.sum(p['W']))  # here",
    "int() of a traced value is not supported": "return p['s'] * int(p['s'])  # here",
    ".item() of a traced value is not supported, but on the cost the forward returns":
        "return p['s'] * p['s'].item()  # here",
    "float() of a traced value is not supported": "return float(p['v'])  # here",
    ".tolist() of a traced value is not supported": "return sum(p['v'].tolist())  # here",
    "converting a traced array to a plain NumPy array (np.asarray, np.array, storing it into an array, "
    "or a plain array's method such as X.dot(W): write np.dot(X, W) or X @ W) is not supported":
        "return np.sum(np.asarray(p['W']))  # here",
    "the array method .argsort is not supported": "return np.sum(p['v'].argsort() * p['v'])  # here",
    "indexing with a traced array (an index computed from the parameters) is not supported":
        "return np.sum(p['W'][p['b'][:, 0] > 0])  # here",
    "converting a cast of a traced array again (e.g. np.float64(np.int64(A > 0))) is not supported":
        "return np.sum(p['W'] * np.float64(np.int64(p['W'] > 0)))  # here",
}


@pytest.mark.parametrize("reason", list(REFUSED))
def test_refusals_name_the_operation_and_the_line(reason):
    source = "import numpy as np\n\n\ndef forward(X, Y, p):\n    " + REFUSED[reason] + "\n"
    forward = load(source)["forward"]
    X, Y, parameters = small_case()
    layout = Layout.of(parameters)
    theta = layout.flatten(parameters)
    before = theta.copy()
    with pytest.raises(Untraceable) as info:
        Replay.of(forward, X, Y, layout, theta)
    where = f"model.py:{line_of(source)}"
    assert (str(info.value), info.value.reason, info.value.where) == (f"{reason} ({where})", reason, where)
    assert theta.tobytes() == before.tobytes()


def test_a_cost_not_computed_from_the_parameters_is_refused():
    source = """
        import numpy as np


        def forward(X, Y, p):  # here
            W = np.array([[1.0, 2.0, 3.0]])  # a copy of the numbers: the cost no longer follows θ
            return np.sum(W @ X), None
    """
    X, Y, parameters = small_case()
    layout = Layout.of(parameters)
    with pytest.raises(Untraceable) as info:
        Replay.of(load(source)["forward"], X, Y, layout, layout.flatten(parameters))
    assert str(info.value) == f"the cost the forward returns is not computed from the parameters (model.py:{line_of(source)})"


def test_a_forward_that_fails_while_traced_is_refused_with_its_error():
    source = """
        import numpy as np


        def forward(X, Y, p):
            return np.sum(p['W'] @ p['W']), None  # here
    """
    X, Y, parameters = small_case()
    layout = Layout.of(parameters)
    with pytest.raises(Untraceable) as info:
        Replay.of(load(source)["forward"], X, Y, layout, layout.flatten(parameters))
    assert info.value.reason.startswith("the forward raised ValueError while traced: matmul: Input operand 1")
    assert info.value.where == f"model.py:{line_of(source)}"


def test_a_refusal_the_forward_catches_still_refuses():
    source = """
        import numpy as np


        def forward(X, Y, p):
            try:
                scale = float(np.sum(p['v']))  # here
            except Exception:
                scale = 1.0
            return scale * np.sum(p['W']), None
    """
    X, Y, parameters = small_case()
    layout = Layout.of(parameters)
    with pytest.raises(Untraceable) as info:
        Replay.of(load(source)["forward"], X, Y, layout, layout.flatten(parameters))
    assert str(info.value) == ("float() of a traced value is not supported, but on the cost the forward returns "
                               f"(model.py:{line_of(source)})")


def test_a_value_left_by_an_earlier_trace_is_a_constant_in_the_next():
    """A forward that keeps a traced value across calls (a running mean) is traced again: the
    kept value, whichever side of an operation it is on, is a constant; the new ones are traced."""
    namespace = load("""
        import numpy as np

        STATE = {}

        def forward(X, Y, p):
            Z = p['W'] @ X
            kept = STATE.get('kept', np.zeros((4, 1)))
            STATE['kept'] = Z.mean(axis=1, keepdims=True)
            return np.sum(kept * Z) + np.sum(Z * kept) + np.sum(Z + np.dot(kept.T, Z)), None
    """)
    forward = namespace["forward"]
    X, _, parameters = small_case()
    layout = Layout.of(parameters)
    theta = layout.flatten(parameters)
    Replay.of(forward, X, None, layout, theta)  # leaves a traced mean in STATE
    first = namespace["STATE"]["kept"]
    traced = Replay.of(forward, X, None, layout, theta)
    namespace["STATE"]["kept"] = first  # the real forward sees what the second trace saw
    plain = plain_costs(forward, X, None, layout, theta)
    index = np.arange(12)  # W
    values = theta[:12] + 0.1

    def with_state_reset(i, v):
        namespace["STATE"]["kept"] = first
        return plain(i, v, "+")

    expected = np.array([with_state_reset(index[k:k + 1], values[k:k + 1])[0] for k in range(12)])
    np.testing.assert_allclose(traced.costs(index, values), expected, rtol=1e-13)


# --- random programs: every layout path (rows, columns, ranks one, blocks) against the real forward --

def _random_program(X, p, instructions):
    """Matmuls on either side, broadcasting elementwise operations, transposes, reductions,
    indexing and reshapes over a growing pool of arrays, as ``instructions`` (op, seed) say."""
    unary = [np.tanh, lambda a: np.maximum(a, 0), np.abs, lambda a: a * (a > 0.1),
             lambda a: np.where(a > 0, a, 0.3 * a), lambda a: np.log1p(a * a)]
    pool = [p["W1"], p["W2"], p["b"], p["c"], p["v"], X]
    for op, seed in instructions:
        r = np.random.default_rng(seed)
        a = pool[r.integers(len(pool))]
        if np.ndim(a) == 0:
            continue
        if op == 0:
            right = [b for b in pool if np.ndim(b) >= 1 and np.shape(b)[0] == np.shape(a)[-1]]
            left = [b for b in pool if np.ndim(b) >= 1 and np.shape(b)[-1] == np.shape(a)[0]]
            if right:
                pool.append(a @ right[r.integers(len(right))])
            if left:
                pool.append(left[r.integers(len(left))] @ a)
        elif op == 1:
            pool.append(unary[r.integers(len(unary))](a))
        elif op == 2:
            fits = [b for b in pool if np.ndim(b) <= np.ndim(a)
                    and all(x in (1, y) for x, y in zip(np.shape(b)[::-1], np.shape(a)[::-1]))]
            b = fits[r.integers(len(fits))]
            pool.append([np.add, np.multiply, np.maximum][r.integers(3)](*((a, b) if r.random() < 0.5 else (b, a))))
        elif op == 3 and np.ndim(a) == 2:
            pool.append(a.T if r.random() < 0.5 else a.reshape(-1))
        elif op == 4:
            reduce = [np.sum, np.max, np.mean][r.integers(3)]
            pool.append(reduce(a, axis=int(r.integers(np.ndim(a))), keepdims=bool(r.integers(2))))
        elif op == 5 and np.shape(a)[0] > 1:
            pool.append(a[1:] if r.random() < 0.5 else a[r.integers(0, np.shape(a)[0], 3)])
    total = np.sum(p["W1"] * p["W1"])
    for a in pool[6:]:
        total = total + np.sum(np.tanh(a))
    return total, pool


@pytest.mark.parametrize("block", [4 << 20, 600])
def test_random_programs_replay_as_the_real_forward(monkeypatch, block):
    monkeypatch.setattr(replay, "BLOCK_BYTES", block)
    rng = np.random.default_rng(2024)
    for _ in range(40):
        instructions = [(int(rng.integers(0, 6)), int(rng.integers(0, 10**6))) for _ in range(rng.integers(3, 12))]
        X = rng.standard_normal((3, 6))
        parameters = {"W1": rng.standard_normal((4, 3)), "W2": rng.standard_normal((3, 6)),
                      "b": rng.standard_normal((4, 1)), "c": rng.standard_normal(6), "v": rng.standard_normal(3)}

        def forward(X, Y, p, instructions=instructions):
            return _random_program(X, p, instructions)

        check(forward, X, None, parameters, scales=(1e-6, 0.3), seed=int(rng.integers(100)), rtol=1e-11)


def recurrence(X, Y, p):
    """Both operands of a product moved by one perturbation: the state and the weights it is
    multiplied by (at one element, row or column of them), in both orders."""
    h, g = np.tanh(np.vstack([X, X[:2]])[:, :4]), np.tanh(X)
    rows = p["W"] @ np.cos(X[:, :3])      # W[j, k] moves row j
    columns = np.sin(np.outer(X[0, :4], X[1, :4])) @ p["W"]  # and column k
    for _ in range(3):
        u = np.tanh(h @ p["W"]) + 0.5 * (h @ rows) - 0.3 * (h @ columns)
        h = np.tanh(u @ p["V"])
        g = np.tanh(p["V"] @ np.tanh(p["W"] @ g + rows @ g))
    return np.sum(h ** 2) + np.sum(g * Y)


def test_products_of_two_moved_operands_replay_as_the_forward():
    X, Y, params = small_case()
    check(recurrence, X, Y, params)
