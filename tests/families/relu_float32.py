"""Family 1: a float32 LINEAR→RELU→LINEAR→RELU→LINEAR→SIGMOID network, written as the deep-learning
course writes it (helper functions, cache tuples), He initialisation, cross-entropy cost.

Everything is float32: X, Y and every parameter, and so every intermediate of the forward and the
backward. Three sizes (about 200, about 5k and over 40k parameters), five seeds each; for every
size and seed a broken twin that scales one tensor's gradient by 1.01, rotating the tensor over
the seeds so that W1, b1, W2, b2, W3 and b3 all appear.

    gradjob submit --model tests/families/relu_float32.py --forward forward --backward backward \\
        --case tests/families/relu_float32.py:case_small_s0

Standalone: numpy only.
"""

import numpy as np

# name: (layer_dims, examples, seeds)
SIZES = {
    "small": ((8, 12, 6, 1), 32, (11, 12, 13, 14, 15)),        # 193 parameters
    "medium": ((32, 64, 44, 1), 64, (21, 22, 23, 24, 25)),     # 5017 parameters
    "large": ((64, 256, 96, 1), 64, (31, 32, 33, 34, 35)),     # 41409 parameters
}
TENSORS = ("W1", "b1", "W2", "b2", "W3", "b3")


# --- initialisation and data ----------------------------------------------------------------------

def initialize_parameters_he(layer_dims, rng):
    """He initialisation: W ~ N(0, 2/n_prev), b = 0; float32 throughout."""
    parameters = {}
    L = len(layer_dims)
    for l in range(1, L):
        parameters["W" + str(l)] = (rng.standard_normal((layer_dims[l], layer_dims[l - 1]))
                                    * np.sqrt(2.0 / layer_dims[l - 1])).astype(np.float32)
        parameters["b" + str(l)] = np.zeros((layer_dims[l], 1), dtype=np.float32)
    return parameters


def load_dataset(n_x, m, rng):
    """A separable-ish binary problem: the label is the sign of a fixed linear rule plus noise."""
    X = rng.standard_normal((n_x, m)).astype(np.float32)
    w = rng.standard_normal(n_x)
    Y = ((w @ X + 0.5 * rng.standard_normal(m)) > 0).astype(np.float32).reshape(1, m)
    return X, Y


# --- forward --------------------------------------------------------------------------------------

def sigmoid(Z):
    A = 1 / (1 + np.exp(-Z))
    return A, Z


def relu(Z):
    A = np.maximum(0, Z)
    return A, Z


def linear_forward(A, W, b):
    Z = np.dot(W, A) + b
    cache = (A, W, b)
    return Z, cache


def linear_activation_forward(A_prev, W, b, activation):
    Z, linear_cache = linear_forward(A_prev, W, b)
    if activation == "sigmoid":
        A, activation_cache = sigmoid(Z)
    elif activation == "relu":
        A, activation_cache = relu(Z)
    cache = (linear_cache, activation_cache)
    return A, cache


def L_model_forward(X, parameters):
    caches = []
    A = X
    L = len(parameters) // 2
    for l in range(1, L):
        A_prev = A
        A, cache = linear_activation_forward(A_prev, parameters["W" + str(l)], parameters["b" + str(l)], "relu")
        caches.append(cache)
    AL, cache = linear_activation_forward(A, parameters["W" + str(L)], parameters["b" + str(L)], "sigmoid")
    caches.append(cache)
    return AL, caches


def compute_cost(AL, Y):
    m = Y.shape[1]
    cost = (-1. / m) * np.sum(np.multiply(Y, np.log(AL)) + np.multiply(1 - Y, np.log(1 - AL)))
    cost = np.squeeze(cost)
    return cost


# --- backward -------------------------------------------------------------------------------------

def linear_backward(dZ, cache):
    A_prev, W, b = cache
    m = A_prev.shape[1]
    dW = 1. / m * np.dot(dZ, A_prev.T)
    db = 1. / m * np.sum(dZ, axis=1, keepdims=True)
    dA_prev = np.dot(W.T, dZ)
    return dA_prev, dW, db


def relu_backward(dA, cache):
    Z = cache
    dZ = np.array(dA, copy=True)
    dZ[Z <= 0] = 0
    return dZ


def sigmoid_backward(dA, cache):
    Z = cache
    s = 1 / (1 + np.exp(-Z))
    dZ = dA * s * (1 - s)
    return dZ


def linear_activation_backward(dA, cache, activation):
    linear_cache, activation_cache = cache
    if activation == "relu":
        dZ = relu_backward(dA, activation_cache)
    elif activation == "sigmoid":
        dZ = sigmoid_backward(dA, activation_cache)
    dA_prev, dW, db = linear_backward(dZ, linear_cache)
    return dA_prev, dW, db


def L_model_backward(AL, Y, caches):
    grads = {}
    L = len(caches)
    Y = Y.reshape(AL.shape)
    dAL = -(np.divide(Y, AL) - np.divide(1 - Y, 1 - AL))
    current_cache = caches[L - 1]
    grads["dA" + str(L - 1)], grads["dW" + str(L)], grads["db" + str(L)] = \
        linear_activation_backward(dAL, current_cache, "sigmoid")
    for l in reversed(range(L - 1)):
        current_cache = caches[l]
        dA_prev_temp, dW_temp, db_temp = linear_activation_backward(grads["dA" + str(l + 1)], current_cache, "relu")
        grads["dA" + str(l)] = dA_prev_temp
        grads["dW" + str(l + 1)] = dW_temp
        grads["db" + str(l + 1)] = db_temp
    return grads


# --- the seed's signatures ------------------------------------------------------------------------

def forward(X, Y, parameters):
    AL, caches = L_model_forward(X, parameters)
    cost = compute_cost(AL, Y)
    return cost, (AL, caches)


def backward(X, Y, cache):
    AL, caches = cache
    return L_model_backward(AL, Y, caches)


def _scaled(tensor, factor):
    def broken(X, Y, cache):
        grads = backward(X, Y, cache)
        grads["d" + tensor] = grads["d" + tensor] * np.float32(factor)
        return grads
    broken.__name__ = f"backward_{tensor}_x1_01"
    broken.__doc__ = f"The correct backward with d{tensor} scaled by {factor}."
    return broken


backward_W1_x1_01 = _scaled("W1", 1.01)
backward_b1_x1_01 = _scaled("b1", 1.01)
backward_W2_x1_01 = _scaled("W2", 1.01)
backward_b2_x1_01 = _scaled("b2", 1.01)
backward_W3_x1_01 = _scaled("W3", 1.01)
backward_b3_x1_01 = _scaled("b3", 1.01)


# --- cases: case_<size>_s<k> for k in 0..4 --------------------------------------------------------

def _make_case(layer_dims, m, seed):
    def case():
        rng = np.random.default_rng(seed)
        X, Y = load_dataset(layer_dims[0], m, rng)
        parameters = initialize_parameters_he(layer_dims, rng)
        return X, Y, parameters
    return case


EXPECTED = {}
DIAGNOSES = {}
for _i, (_size, (_dims, _m, _seeds)) in enumerate(SIZES.items()):
    for _k, _seed in enumerate(_seeds):
        _name = f"case_{_size}_s{_k}"
        globals()[_name] = _make_case(_dims, _m, _seed)
        globals()[_name].__name__ = _name
        _broken_tensor = TENSORS[(5 * _i + _k) % len(TENSORS)]
        EXPECTED[(_name, "backward")] = []
        EXPECTED[(_name, f"backward_{_broken_tensor}_x1_01")] = [_broken_tensor]
for _tensor in TENSORS:
    DIAGNOSES[f"backward_{_tensor}_x1_01"] = {_tensor: f"d{_tensor} is 1.01× the numerical gradient"}
