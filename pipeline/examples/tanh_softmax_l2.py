"""A multi-class network as a user's model file: tanh hidden layers, softmax output,
cross-entropy on one-hot labels, and L2 regularisation λ/(2m)·Σ‖W‖².

    gradjob submit --model tanh_softmax_l2.py --case tanh_softmax_l2.py:case
"""

import numpy as np

LAMBD = 0.7
LAYERS = (784, 512, 256, 10)
EXAMPLES = 128


def forward_propagation_n(X, Y, parameters):
    m = X.shape[1]
    L = len(parameters) // 2
    A, activations = X, [X]
    for layer in range(1, L):
        A = np.tanh(np.dot(parameters[f"W{layer}"], A) + parameters[f"b{layer}"])
        activations.append(A)
    Z = np.dot(parameters[f"W{L}"], A) + parameters[f"b{L}"]
    Z = Z - np.max(Z, axis=0, keepdims=True)
    P = np.exp(Z) / np.sum(np.exp(Z), axis=0, keepdims=True)
    data = -np.sum(Y * np.log(P)) / m
    l2 = LAMBD / (2 * m) * sum(np.sum(np.square(parameters[f"W{layer}"])) for layer in range(1, L + 1))
    return data + l2, (activations, P, parameters)


def backward_propagation_n(X, Y, cache):
    activations, P, parameters = cache
    m = X.shape[1]
    L = len(activations)
    gradients = {}
    dZ = (P - Y) / m
    for layer in range(L, 0, -1):
        A_prev = activations[layer - 1]
        W = parameters[f"W{layer}"]
        gradients[f"dW{layer}"] = np.dot(dZ, A_prev.T) + LAMBD / m * W
        gradients[f"db{layer}"] = np.sum(dZ, axis=1, keepdims=True)
        if layer > 1:
            dZ = np.dot(W.T, dZ) * (1 - A_prev ** 2)
    return gradients


def case(layers=LAYERS, examples=EXAMPLES, seed=0):
    """A random case: Xavier-scaled weights, small biases, one-hot labels."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((layers[0], examples))
    Y = np.eye(layers[-1])[:, rng.integers(0, layers[-1], examples)]
    parameters = {}
    for layer in range(1, len(layers)):
        parameters[f"W{layer}"] = rng.standard_normal((layers[layer], layers[layer - 1])) / np.sqrt(layers[layer - 1])
        parameters[f"b{layer}"] = 0.1 * rng.standard_normal((layers[layer], 1))
    return X, Y, parameters


def small_case():
    return case((12, 10, 8, 4), 16, 1)
