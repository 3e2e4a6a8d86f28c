"""Family 4: L2 regularisation, as the course's "Regularization" assignment writes it.

A float64 LINEAR→RELU→LINEAR→RELU→LINEAR→SIGMOID network, 4-6-6-1 (W2 is square), with
cost = cross-entropy + λ/(2m)·(‖W1‖² + ‖W2‖² + ‖W3‖²) and dWl = data term + λ/m·Wl.

Broken twins, each wrong in one weight only:

- ``backward_W1_data_x2``: twice the data term of dW1, the regulariser right;
- ``backward_W3_l2_dropped``: dW3 without λ/m·W3;
- ``backward_W1_l2_doubled``: dW1 with 2·λ/m·W1;
- ``backward_W2_data_transposed``: the transpose of dW2's data term (W2 is square), the
  regulariser right;
- ``backward_W3_data_sign``: dW3's data term with the wrong sign, the regulariser right.

DIAGNOSES values are either the exact diagnosis, or ``key words: a, b`` (words a person would
want to read in it) where gradjob cannot know the regulariser's share.

Standalone: numpy only.
"""

import numpy as np

LAYERS = (4, 6, 6, 1)
EXAMPLES = 12
LAMBD = 0.7


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def relu(x):
    return np.maximum(0, x)


def forward_propagation(X, parameters):
    W1 = parameters["W1"]
    b1 = parameters["b1"]
    W2 = parameters["W2"]
    b2 = parameters["b2"]
    W3 = parameters["W3"]
    b3 = parameters["b3"]

    Z1 = np.dot(W1, X) + b1
    A1 = relu(Z1)
    Z2 = np.dot(W2, A1) + b2
    A2 = relu(Z2)
    Z3 = np.dot(W3, A2) + b3
    A3 = sigmoid(Z3)

    cache = (Z1, A1, W1, b1, Z2, A2, W2, b2, Z3, A3, W3, b3)
    return A3, cache


def compute_cost(A3, Y):
    m = Y.shape[1]
    logprobs = np.multiply(-np.log(A3), Y) + np.multiply(-np.log(1 - A3), 1 - Y)
    cost = 1. / m * np.nansum(logprobs)
    return cost


def compute_cost_with_regularization(A3, Y, parameters, lambd):
    m = Y.shape[1]
    W1 = parameters["W1"]
    W2 = parameters["W2"]
    W3 = parameters["W3"]

    cross_entropy_cost = compute_cost(A3, Y)
    L2_regularization_cost = lambd / (2 * m) * (np.sum(np.square(W1)) + np.sum(np.square(W2)) + np.sum(np.square(W3)))

    cost = cross_entropy_cost + L2_regularization_cost
    return cost


def backward_propagation_with_regularization(X, Y, cache, lambd, data=None, l2=None):
    """The assignment's backward; ``data[l]`` and ``l2[l]`` let the broken twins below change
    layer l's data term (a function of it) or regulariser factor, the rest staying as written."""
    data = data or {}
    l2 = l2 or {}
    m = X.shape[1]
    (Z1, A1, W1, b1, Z2, A2, W2, b2, Z3, A3, W3, b3) = cache

    dZ3 = A3 - Y
    dW3 = data.get(3, _same)(1. / m * np.dot(dZ3, A2.T)) + l2.get(3, 1.0) * lambd / m * W3
    db3 = 1. / m * np.sum(dZ3, axis=1, keepdims=True)

    dA2 = np.dot(W3.T, dZ3)
    dZ2 = np.multiply(dA2, np.int64(A2 > 0))
    dW2 = data.get(2, _same)(1. / m * np.dot(dZ2, A1.T)) + l2.get(2, 1.0) * lambd / m * W2
    db2 = 1. / m * np.sum(dZ2, axis=1, keepdims=True)

    dA1 = np.dot(W2.T, dZ2)
    dZ1 = np.multiply(dA1, np.int64(A1 > 0))
    dW1 = data.get(1, _same)(1. / m * np.dot(dZ1, X.T)) + l2.get(1, 1.0) * lambd / m * W1
    db1 = 1. / m * np.sum(dZ1, axis=1, keepdims=True)

    gradients = {"dZ3": dZ3, "dW3": dW3, "db3": db3, "dA2": dA2,
                 "dZ2": dZ2, "dW2": dW2, "db2": db2, "dA1": dA1,
                 "dZ1": dZ1, "dW1": dW1, "db1": db1}
    return gradients


def _same(term):
    return term


# --- the seed's signatures ------------------------------------------------------------------------

def forward(X, Y, parameters):
    A3, cache = forward_propagation(X, parameters)
    cost = compute_cost_with_regularization(A3, Y, parameters, LAMBD)
    return cost, cache


def backward(X, Y, cache):
    return backward_propagation_with_regularization(X, Y, cache, LAMBD)


def backward_W1_data_x2(X, Y, cache):
    return backward_propagation_with_regularization(X, Y, cache, LAMBD, data={1: lambda term: 2 * term})


def backward_W3_l2_dropped(X, Y, cache):
    return backward_propagation_with_regularization(X, Y, cache, LAMBD, l2={3: 0.0})


def backward_W1_l2_doubled(X, Y, cache):
    return backward_propagation_with_regularization(X, Y, cache, LAMBD, l2={1: 2.0})


def backward_W2_data_transposed(X, Y, cache):
    return backward_propagation_with_regularization(X, Y, cache, LAMBD, data={2: lambda term: term.T})


def backward_W3_data_sign(X, Y, cache):
    return backward_propagation_with_regularization(X, Y, cache, LAMBD, data={3: lambda term: -term})


def case_l2():
    rng = np.random.default_rng(404)
    X = rng.standard_normal((LAYERS[0], EXAMPLES))
    Y = (rng.random((1, EXAMPLES)) < 0.5).astype(np.float64)
    parameters = {}
    for l in range(1, len(LAYERS)):
        parameters["W" + str(l)] = rng.standard_normal((LAYERS[l], LAYERS[l - 1])) * np.sqrt(2.0 / LAYERS[l - 1])
        parameters["b" + str(l)] = rng.standard_normal((LAYERS[l], 1)) * 0.1
    return X, Y, parameters


EXPECTED = {
    ("case_l2", "backward"): [],
    ("case_l2", "backward_W1_data_x2"): ["W1"],
    ("case_l2", "backward_W3_l2_dropped"): ["W3"],
    ("case_l2", "backward_W1_l2_doubled"): ["W1"],
    ("case_l2", "backward_W2_data_transposed"): ["W2"],
    ("case_l2", "backward_W3_data_sign"): ["W3"],
}

DIAGNOSES = {
    # g = 2·gradapprox − λ/m·W1: the data term doubled
    "backward_W1_data_x2": {"W1": "key words: dW1, 2.00×"},
    # g = gradapprox − λ/m·W3 (λ/m = 0.0583): the L2 term of dW3 is missing
    "backward_W3_l2_dropped": {"W3": "key words: dW3, L2, W3"},
    # g = gradapprox + λ/m·W1: the L2 term of dW1 counted twice
    "backward_W1_l2_doubled": {"W1": "key words: dW1, L2, W1"},
    # g = Dᵀ + λ/m·W2 where gradapprox = D + λ/m·W2
    "backward_W2_data_transposed": {"W2": "key words: dW2, transpose"},
    # g = −D + λ/m·W3 where gradapprox = D + λ/m·W3
    "backward_W3_data_sign": {"W3": "key words: dW3, sign"},
}
