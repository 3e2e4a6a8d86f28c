"""Family 2: a float64 ReLU network sitting on its kinks, in two consecutive layers.

The seed notebook's style (``forward_propagation_n`` / ``backward_propagation_n`` with one cache
tuple), LINEAR→RELU→LINEAR→RELU→LINEAR→SIGMOID, 5-6-4-1, eleven examples, and a case built so
that:

- example 0 is all zeros and b1[0] is exactly 0, so Z1[0, 0] == 0.0 exactly (the kinked bias:
  only b1[0] moves that pre-activation);
- layer 1: b1[1] and b1[2] put Z1[1, 3] = +3e-11 and Z1[2, 5] = -7e-11;
- layer 2: b2[0], b2[1] and b2[2] put Z2[0, 3] = -2e-11 (the same example as Z1[1, 3]: stacked),
  Z2[1, 5] = +1e-10 (the same example as Z1[2, 5]: stacked) and Z2[2, 8] = +1e-11.

The correct backward uses the seed's mask convention, ``dZ = dA * (A > 0)``: the derivative of
ReLU at exactly 0 is taken as 0. Broken twins scale one tensor's gradient by 1.05, for each of
the six tensors (b1, the kinked bias, included).

Standalone: numpy only.
"""

import numpy as np

LAYERS = (5, 6, 4, 1)
EXAMPLES = 11
ZERO_EXAMPLE, ZERO_UNIT = 0, 0
# (unit, example, Z value) planted in layer 1 and then layer 2
LAYER1_NEAR_KINKS = ((1, 3, 3e-11), (2, 5, -7e-11))
LAYER2_NEAR_KINKS = ((0, 3, -2e-11), (1, 5, 1e-10), (2, 8, 1e-11))
TENSORS = ("W1", "b1", "W2", "b2", "W3", "b3")


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def relu(x):
    return np.maximum(0, x)


def forward_propagation_n(X, Y, parameters):
    m = X.shape[1]
    W1 = parameters["W1"]
    b1 = parameters["b1"]
    W2 = parameters["W2"]
    b2 = parameters["b2"]
    W3 = parameters["W3"]
    b3 = parameters["b3"]

    # LINEAR -> RELU -> LINEAR -> RELU -> LINEAR -> SIGMOID
    Z1 = np.dot(W1, X) + b1
    A1 = relu(Z1)
    Z2 = np.dot(W2, A1) + b2
    A2 = relu(Z2)
    Z3 = np.dot(W3, A2) + b3
    A3 = sigmoid(Z3)

    # Cost
    logprobs = np.multiply(-np.log(A3), Y) + np.multiply(-np.log(1 - A3), 1 - Y)
    cost = 1. / m * np.sum(logprobs)

    cache = (Z1, A1, W1, b1, Z2, A2, W2, b2, Z3, A3, W3, b3)
    return cost, cache


def backward_propagation_n(X, Y, cache):
    m = X.shape[1]
    (Z1, A1, W1, b1, Z2, A2, W2, b2, Z3, A3, W3, b3) = cache

    dZ3 = A3 - Y
    dW3 = 1. / m * np.dot(dZ3, A2.T)
    db3 = 1. / m * np.sum(dZ3, axis=1, keepdims=True)

    dA2 = np.dot(W3.T, dZ3)
    dZ2 = np.multiply(dA2, np.int64(A2 > 0))
    dW2 = 1. / m * np.dot(dZ2, A1.T)
    db2 = 1. / m * np.sum(dZ2, axis=1, keepdims=True)

    dA1 = np.dot(W2.T, dZ2)
    dZ1 = np.multiply(dA1, np.int64(A1 > 0))
    dW1 = 1. / m * np.dot(dZ1, X.T)
    db1 = 1. / m * np.sum(dZ1, axis=1, keepdims=True)

    gradients = {"dZ3": dZ3, "dW3": dW3, "db3": db3,
                 "dA2": dA2, "dZ2": dZ2, "dW2": dW2, "db2": db2,
                 "dA1": dA1, "dZ1": dZ1, "dW1": dW1, "db1": db1}
    return gradients


# the names every family file uses
forward = forward_propagation_n
backward = backward_propagation_n


def _scaled(tensor, factor):
    def broken(X, Y, cache):
        gradients = backward_propagation_n(X, Y, cache)
        gradients["d" + tensor] = gradients["d" + tensor] * factor
        return gradients
    broken.__name__ = f"backward_{tensor}_x1_05"
    return broken


backward_W1_x1_05 = _scaled("W1", 1.05)
backward_b1_x1_05 = _scaled("b1", 1.05)
backward_W2_x1_05 = _scaled("W2", 1.05)
backward_b2_x1_05 = _scaled("b2", 1.05)
backward_W3_x1_05 = _scaled("W3", 1.05)
backward_b3_x1_05 = _scaled("b3", 1.05)


def case_kinks():
    rng = np.random.default_rng(2024)
    X = rng.standard_normal((LAYERS[0], EXAMPLES))
    X[:, ZERO_EXAMPLE] = 0.0
    Y = (rng.random((1, EXAMPLES)) < 0.5).astype(np.float64)
    Y[0, :2] = (1.0, 0.0)
    parameters = {}
    for l in range(1, len(LAYERS)):
        parameters["W" + str(l)] = rng.standard_normal((LAYERS[l], LAYERS[l - 1])) * np.sqrt(2.0 / LAYERS[l - 1])
        parameters["b" + str(l)] = rng.standard_normal((LAYERS[l], 1)) * 0.1
    W1, b1, W2, b2 = parameters["W1"], parameters["b1"], parameters["W2"], parameters["b2"]

    b1[ZERO_UNIT, 0] = 0.0                     # Z1[0, 0] = W1[0] · 0 + 0 = 0 exactly
    Z1 = np.dot(W1, X)
    for unit, example, value in LAYER1_NEAR_KINKS:
        b1[unit, 0] = value - Z1[unit, example]
    A1 = relu(np.dot(W1, X) + b1)
    Z2 = np.dot(W2, A1)
    for unit, example, value in LAYER2_NEAR_KINKS:
        b2[unit, 0] = value - Z2[unit, example]

    # the planted values as the forward computes them
    _, cache = forward_propagation_n(X, Y, parameters)
    Z1, Z2 = cache[0], cache[4]
    assert Z1[ZERO_UNIT, ZERO_EXAMPLE] == 0.0
    for Z, planted in ((Z1, LAYER1_NEAR_KINKS), (Z2, LAYER2_NEAR_KINKS)):
        for unit, example, value in planted:
            assert abs(Z[unit, example] - value) < 1e-3 * abs(value), (unit, example, Z[unit, example], value)
    return X, Y, parameters


EXPECTED = {("case_kinks", "backward"): []}
DIAGNOSES = {}
for _tensor in TENSORS:
    EXPECTED[("case_kinks", f"backward_{_tensor}_x1_05")] = [_tensor]
    DIAGNOSES[f"backward_{_tensor}_x1_05"] = {_tensor: f"d{_tensor} is 1.05× the numerical gradient"}
