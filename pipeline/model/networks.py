"""Built-in models, as pure NumPy functions with the seed's calling convention.

``forward(X, Y, parameters) -> (cost, cache)`` and ``backward(X, Y, cache) -> {"dW1": ...}``.
The L-layer network generalises the seed's LINEAR→RELU→…→LINEAR→SIGMOID network to any number
of layers (read from the parameter names W1…WL) and does the same floating-point operations, so
on the seed's shapes it gives the seed's costs to the last bit.
"""

from __future__ import annotations

import numpy as np


def relu(z):
    return np.maximum(0, z)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def cross_entropy(A, Y, m):
    log_probs = np.multiply(-np.log(A), Y) + np.multiply(-np.log(1 - A), 1 - Y)
    return 1.0 / m * np.sum(log_probs)


# --- the 1-D model J(θ) = θx -------------------------------------------------------------------

def linear_forward(X, Y, parameters):
    """J(θ) = θ·x; Y is unused (the seed's 1-D example has no labels)."""
    return parameters["theta"] * X, None


def linear_backward(X, Y, cache):
    return {"dtheta": X}


# --- the L-layer network ----------------------------------------------------------------------

def n_layers(parameters) -> int:
    return sum(1 for name in parameters if name.startswith("W"))


def network_forward(X, Y, parameters):
    """LINEAR→RELU ×(L−1) → LINEAR→SIGMOID, mean cross-entropy cost."""
    L = n_layers(parameters)
    m = X.shape[1]
    A = X
    cache = [(None, X)]
    for layer in range(1, L + 1):
        Z = np.dot(parameters[f"W{layer}"], A) + parameters[f"b{layer}"]
        A = relu(Z) if layer < L else sigmoid(Z)
        cache.append((Z, A))
    return cross_entropy(A, Y, m), (cache, parameters)


def network_backward(X, Y, cache):
    """The correct backward of ``network_forward``."""
    activations, parameters = cache
    L = len(activations) - 1
    m = X.shape[1]
    gradients = {}
    dZ = activations[L][1] - Y
    for layer in range(L, 0, -1):
        A_prev = activations[layer - 1][1]
        gradients[f"dW{layer}"] = 1.0 / m * np.dot(dZ, A_prev.T)
        gradients[f"db{layer}"] = 1.0 / m * np.sum(dZ, axis=1, keepdims=True)
        if layer > 1:
            dA = np.dot(parameters[f"W{layer}"].T, dZ)
            dZ = np.multiply(dA, np.int64(A_prev > 0))
    return gradients


# --- the seed's own functions, as the course notebook ships them --------------------------------

def forward_propagation_n(X, Y, parameters):
    """The seed's three-layer forward, unchanged."""
    m = X.shape[1]
    W1, b1 = parameters["W1"], parameters["b1"]
    W2, b2 = parameters["W2"], parameters["b2"]
    W3, b3 = parameters["W3"], parameters["b3"]
    Z1 = np.dot(W1, X) + b1
    A1 = relu(Z1)
    Z2 = np.dot(W2, A1) + b2
    A2 = relu(Z2)
    Z3 = np.dot(W3, A2) + b3
    A3 = sigmoid(Z3)
    cost = cross_entropy(A3, Y, m)
    return cost, (Z1, A1, W1, b1, Z2, A2, W2, b2, Z3, A3, W3, b3)


def backward_propagation_n(X, Y, cache):
    """The seed's backward with its two planted bugs: dW2 is doubled and db1 quadrupled."""
    m = X.shape[1]
    (Z1, A1, W1, b1, Z2, A2, W2, b2, Z3, A3, W3, b3) = cache
    dZ3 = A3 - Y
    dW3 = 1.0 / m * np.dot(dZ3, A2.T)
    db3 = 1.0 / m * np.sum(dZ3, axis=1, keepdims=True)
    dA2 = np.dot(W3.T, dZ3)
    dZ2 = np.multiply(dA2, np.int64(A2 > 0))
    dW2 = 1.0 / m * np.dot(dZ2, A1.T) * 2  # planted bug
    db2 = 1.0 / m * np.sum(dZ2, axis=1, keepdims=True)
    dA1 = np.dot(W2.T, dZ2)
    dZ1 = np.multiply(dA1, np.int64(A1 > 0))
    dW1 = 1.0 / m * np.dot(dZ1, X.T)
    db1 = 4.0 / m * np.sum(dZ1, axis=1, keepdims=True)  # planted bug
    return {"dW3": dW3, "db3": db3, "dW2": dW2, "db2": db2, "dW1": dW1, "db1": db1}
