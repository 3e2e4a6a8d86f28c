"""Family 3: a forward that computes in float32 whatever it is given.

A one-hidden-layer classifier in the course's "planar data" style: tanh hidden layer, softmax
output, cross-entropy over one-hot labels. The forward casts X, Y and every parameter with
``.astype(np.float32)`` before computing (as code written for a GPU or for memory often does),
and the backward computes in float32 too. The case supplies float64 parameters, so the
parameters gradjob perturbs are float64 while every cost it sees was computed in float32.

Broken twins scale one tensor's gradient by 1.2 (each tensor in turn), and one by 2.

Standalone: numpy only.
"""

import numpy as np

N_X, N_H, N_Y, EXAMPLES = 5, 7, 3, 16
TENSORS = ("W1", "b1", "W2", "b2")


def to_float32(X, Y, parameters):
    X = X.astype(np.float32)
    Y = Y.astype(np.float32)
    parameters = {name: value.astype(np.float32) for name, value in parameters.items()}
    return X, Y, parameters


def softmax(Z):
    Z = Z - np.max(Z, axis=0, keepdims=True)
    e = np.exp(Z)
    return e / np.sum(e, axis=0, keepdims=True)


def forward_propagation(X, parameters):
    W1 = parameters["W1"]
    b1 = parameters["b1"]
    W2 = parameters["W2"]
    b2 = parameters["b2"]

    Z1 = np.dot(W1, X) + b1
    A1 = np.tanh(Z1)
    Z2 = np.dot(W2, A1) + b2
    A2 = softmax(Z2)

    cache = {"Z1": Z1, "A1": A1, "Z2": Z2, "A2": A2}
    return A2, cache


def compute_cost(A2, Y):
    m = Y.shape[1]
    logprobs = np.multiply(np.log(A2), Y)
    cost = -np.sum(logprobs) / m
    return cost


def backward_propagation(parameters, cache, X, Y):
    m = X.shape[1]
    W2 = parameters["W2"]
    A1 = cache["A1"]
    A2 = cache["A2"]

    dZ2 = A2 - Y
    dW2 = (1 / m) * np.dot(dZ2, A1.T)
    db2 = (1 / m) * np.sum(dZ2, axis=1, keepdims=True)
    dZ1 = np.multiply(np.dot(W2.T, dZ2), 1 - np.power(A1, 2))
    dW1 = (1 / m) * np.dot(dZ1, X.T)
    db1 = (1 / m) * np.sum(dZ1, axis=1, keepdims=True)

    grads = {"dW1": dW1, "db1": db1, "dW2": dW2, "db2": db2}
    return grads


# --- the seed's signatures: everything in float32, whatever comes in ----------------------------

def forward(X, Y, parameters):
    X, Y, parameters = to_float32(X, Y, parameters)
    A2, cache = forward_propagation(X, parameters)
    cost = compute_cost(A2, Y)
    return cost, (parameters, cache)


def backward(X, Y, cache):
    X, Y, _ = to_float32(X, Y, {})
    parameters, cache = cache
    return backward_propagation(parameters, cache, X, Y)


def _scaled(tensor, factor, name):
    def broken(X, Y, cache):
        grads = backward(X, Y, cache)
        grads["d" + tensor] = grads["d" + tensor] * np.float32(factor)
        return grads
    broken.__name__ = name
    return broken


backward_W1_x1_2 = _scaled("W1", 1.2, "backward_W1_x1_2")
backward_b1_x1_2 = _scaled("b1", 1.2, "backward_b1_x1_2")
backward_W2_x1_2 = _scaled("W2", 1.2, "backward_W2_x1_2")
backward_b2_x1_2 = _scaled("b2", 1.2, "backward_b2_x1_2")
backward_W1_x2 = _scaled("W1", 2.0, "backward_W1_x2")


def case_float64_params():
    """Float64 X, one-hot Y and parameters, as a float64 training pipeline would hand them over."""
    rng = np.random.default_rng(303)
    X = rng.standard_normal((N_X, EXAMPLES))
    labels = rng.integers(0, N_Y, EXAMPLES)
    Y = np.eye(N_Y)[:, labels]
    parameters = {"W1": rng.standard_normal((N_H, N_X)) * 0.5,
                  "b1": rng.standard_normal((N_H, 1)) * 0.1,
                  "W2": rng.standard_normal((N_Y, N_H)) * 0.5,
                  "b2": rng.standard_normal((N_Y, 1)) * 0.1}
    return X, Y, parameters


EXPECTED = {("case_float64_params", "backward"): []}
DIAGNOSES = {}
for _tensor in TENSORS:
    EXPECTED[("case_float64_params", f"backward_{_tensor}_x1_2")] = [_tensor]
    DIAGNOSES[f"backward_{_tensor}_x1_2"] = {_tensor: f"d{_tensor} is 1.20× the numerical gradient"}
EXPECTED[("case_float64_params", "backward_W1_x2")] = ["W1"]
DIAGNOSES["backward_W1_x2"] = {"W1": "dW1 is 2.00× the numerical gradient"}
