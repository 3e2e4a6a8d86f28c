"""The fraud-detection network as a team would keep it in their own repository: a user model file.

LINEAR→RELU ×(L−1) → LINEAR→SIGMOID with the seed's function names, any number of layers, and a
correct backward. ``gradjob submit --model jobs/models/fraud_network.py`` checks it as it is.
"""

import numpy as np


def forward_propagation_n(X, Y, parameters):
    L = len(parameters) // 2
    m = X.shape[1]
    A = X
    cache = [(None, X)]
    for layer in range(1, L + 1):
        Z = np.dot(parameters[f"W{layer}"], A) + parameters[f"b{layer}"]
        A = np.maximum(0, Z) if layer < L else 1 / (1 + np.exp(-Z))
        cache.append((Z, A))
    cost = 1.0 / m * np.sum(np.multiply(-np.log(A), Y) + np.multiply(-np.log(1 - A), 1 - Y))
    return cost, (cache, parameters)


def backward_propagation_n(X, Y, cache):
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
            dZ = np.dot(parameters[f"W{layer}"].T, dZ) * (A_prev > 0)
    return gradients


def backward_with_planted_bug(X, Y, cache):
    """The same backward with dW2 doubled, as the seed plants it: the nightly job's red case."""
    gradients = backward_propagation_n(X, Y, cache)
    gradients["dW2"] = gradients["dW2"] * 2
    return gradients
