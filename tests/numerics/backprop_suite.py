"""A model file of deliberately broken backward passes over five architectures.

Used by tests/numerics/test_diagnosis.py through ``gradjob submit --model tests/numerics/backprop_suite.py``; each
architecture has a case function (``case_<arch>``), a forward, a correct backward, and broken
backwards whose broken tensors are listed in ``BROKEN``.
"""

import numpy as np

from gradjob.model.networks import network_backward, network_forward, sigmoid

LAMBD = 0.7


def _rng(seed):
    return np.random.default_rng(seed)


# --- relu: the seed-style ReLU→sigmoid network ----------------------------------------------------

def case_relu():
    rng = _rng(1)
    p = {"W1": rng.standard_normal((5, 4)), "b1": rng.standard_normal((5, 1)), "W2": rng.standard_normal((3, 5)),
         "b2": rng.standard_normal((3, 1)), "W3": rng.standard_normal((1, 3)), "b3": rng.standard_normal((1, 1))}
    return rng.standard_normal((4, 8)), rng.integers(0, 2, (1, 8)).astype(float), p


forward_relu = network_forward
backward_relu = network_backward


def _broken(backward, change):
    def broken(X, Y, cache):
        gradients = backward(X, Y, cache)
        change(gradients, X)
        return gradients
    return broken


relu_dW2_doubled = _broken(network_backward, lambda g, X: g.update(dW2=g["dW2"] * 2))
relu_db1_times4 = _broken(network_backward, lambda g, X: g.update(db1=g["db1"] * 4))
relu_dW1_without_1_over_m = _broken(network_backward, lambda g, X: g.update(dW1=g["dW1"] * X.shape[1]))
relu_db3_sign = _broken(network_backward, lambda g, X: g.update(db3=-g["db3"]))


# --- tanh: tanh hidden layer (square W1), softmax output, cross-entropy ----------------------------

def case_tanh():
    rng = _rng(2)
    p = {"W1": rng.standard_normal((4, 4)), "b1": rng.standard_normal((4, 1)),
         "W2": rng.standard_normal((3, 4)), "b2": rng.standard_normal((3, 1))}
    Y = np.eye(3)[:, rng.integers(0, 3, 10)]
    return rng.standard_normal((4, 10)), Y, p


def forward_tanh(X, Y, p):
    H = np.tanh(p["W1"] @ X + p["b1"])
    Z = p["W2"] @ H + p["b2"]
    Z = Z - Z.max(axis=0, keepdims=True)
    P = np.exp(Z) / np.exp(Z).sum(axis=0, keepdims=True)
    return -np.sum(Y * np.log(P)) / X.shape[1], (H, P, p)


def backward_tanh(X, Y, cache, tanh_derivative=lambda H: 1 - H ** 2):
    H, P, p = cache
    m = X.shape[1]
    dZ2 = (P - Y) / m
    dZ1 = (p["W2"].T @ dZ2) * tanh_derivative(H)
    return {"dW2": dZ2 @ H.T, "db2": dZ2.sum(axis=1, keepdims=True),
            "dW1": dZ1 @ X.T, "db1": dZ1.sum(axis=1, keepdims=True)}


def tanh_wrong_derivative(X, Y, cache):
    return backward_tanh(X, Y, cache, tanh_derivative=lambda H: 1 - H)


tanh_dW1_transposed = _broken(backward_tanh, lambda g, X: g.update(dW1=g["dW1"].T))
tanh_db2_missing = _broken(backward_tanh, lambda g, X: g.update(db2=np.zeros_like(g["db2"])))


# --- l2: the ReLU network with L2 regularisation λ/2m·Σ‖W‖² ---------------------------------------

case_l2 = case_relu


def forward_l2(X, Y, p):
    cost, cache = network_forward(X, Y, p)
    m = X.shape[1]
    l2 = LAMBD / (2 * m) * sum(np.sum(np.square(p[f"W{k}"])) for k in (1, 2, 3))
    return cost + l2, cache


def backward_l2(X, Y, cache, scale=(1.0, 1.0, 1.0)):
    gradients = network_backward(X, Y, cache)
    p, m = cache[1], X.shape[1]
    for k, s in zip((1, 2, 3), scale):
        gradients[f"dW{k}"] = gradients[f"dW{k}"] + s * LAMBD / m * p[f"W{k}"]
    return gradients


def l2_forgotten_in_dW1(X, Y, cache):
    return backward_l2(X, Y, cache, scale=(0.0, 1.0, 1.0))


def l2_doubled_in_dW2(X, Y, cache):
    return backward_l2(X, Y, cache, scale=(1.0, 2.0, 1.0))


# --- float32: a tanh→sigmoid network held in float32 ----------------------------------------------

def case_float32():
    rng = _rng(3)
    p = {"W1": rng.standard_normal((6, 5)), "b1": rng.standard_normal((6, 1)),
         "W2": rng.standard_normal((1, 6)) * 0.5, "b2": rng.standard_normal((1, 1))}
    X, Y = rng.standard_normal((5, 12)), rng.integers(0, 2, (1, 12))
    return X.astype(np.float32), Y.astype(np.float32), {k: v.astype(np.float32) for k, v in p.items()}


def forward_float32(X, Y, p):
    H = np.tanh(p["W1"] @ X + p["b1"])
    A = sigmoid(p["W2"] @ H + p["b2"])
    m = np.float32(X.shape[1])
    cost = -np.sum(Y * np.log(A) + (1 - Y) * np.log(1 - A)) / m
    return cost, (H, A, p)


def backward_float32(X, Y, cache):
    H, A, p = cache
    m = np.float32(X.shape[1])
    dZ2 = (A - Y) / m
    dZ1 = (p["W2"].T @ dZ2) * (1 - H ** 2)
    return {"dW2": dZ2 @ H.T, "db2": dZ2.sum(axis=1, keepdims=True),
            "dW1": dZ1 @ X.T, "db1": dZ1.sum(axis=1, keepdims=True)}


float32_dW2_scaled = _broken(backward_float32, lambda g, X: g.update(dW2=g["dW2"] * np.float32(1.1)))
float32_db1_halved = _broken(backward_float32, lambda g, X: g.update(db1=g["db1"] * np.float32(0.5)))


# --- kink: a ReLU network with pre-activations within 1e-10 of zero -------------------------------

def case_kink():
    X, Y, p = case_relu()
    # units 0 and 2 sit on the kink for examples 1 and 4: Z1 = ±1e-11
    for unit, example, offset in ((0, 1, 1e-11), (2, 4, -1e-11), (3, 6, 1e-11)):
        p["b1"][unit, 0] = -(p["W1"][unit] @ X[:, example]) + offset
    return X, Y, p


forward_kink = network_forward
backward_kink = network_backward
kink_isolated_element = _broken(network_backward, lambda g, X: g["dW3"].__setitem__((0, 1), g["dW3"][0, 1] + 0.5))


# (architecture, backward) -> broken tensors; correct backwards break nothing
BROKEN = {
    ("relu", "backward_relu"): [],
    ("relu", "relu_dW2_doubled"): ["W2"],
    ("relu", "relu_db1_times4"): ["b1"],
    ("relu", "relu_dW1_without_1_over_m"): ["W1"],
    ("relu", "relu_db3_sign"): ["b3"],
    ("tanh", "backward_tanh"): [],
    ("tanh", "tanh_wrong_derivative"): ["W1", "b1"],
    ("tanh", "tanh_dW1_transposed"): ["W1"],
    ("tanh", "tanh_db2_missing"): ["b2"],
    ("l2", "backward_l2"): [],
    ("l2", "l2_forgotten_in_dW1"): ["W1"],
    ("l2", "l2_doubled_in_dW2"): ["W2"],
    ("float32", "backward_float32"): [],
    ("float32", "float32_dW2_scaled"): ["W2"],
    ("float32", "float32_db1_halved"): ["b1"],
    ("kink", "backward_kink"): [],
    ("kink", "kink_isolated_element"): ["W3"],
}

DIAGNOSES = {
    "relu_dW2_doubled": {"W2": "dW2 is 2.00× the numerical gradient"},
    "relu_db1_times4": {"b1": "db1 is 4.00× the numerical gradient"},
    "relu_dW1_without_1_over_m": {"W1": "dW1 is 8.00× the numerical gradient"},
    "relu_db3_sign": {"b3": "db3 has the wrong sign (it is -1.00× the numerical gradient)"},
    "tanh_dW1_transposed": {"W1": "dW1 is the transpose of the numerical gradient"},
    "tanh_db2_missing": {"b2": "db2 is all zeros: the gradient is missing"},
    "float32_dW2_scaled": {"W2": "dW2 is 1.10× the numerical gradient"},
    "float32_db1_halved": {"b1": "db1 is 0.50× the numerical gradient"},
    "kink_isolated_element": {"W3": "1 isolated wrong element(s) in dW3: W3[0, 1]"},
}


# --- dropout: nondeterministic unless the mask is fixed for the whole job -------------------------

def _dropout_forward(X, Y, p, mask):
    Z1 = p["W1"] @ X + p["b1"]
    A1 = np.maximum(0, Z1) * mask / 0.8
    A2 = sigmoid(p["W2"] @ A1 + p["b2"])
    m = X.shape[1]
    return -np.sum(Y * np.log(A2) + (1 - Y) * np.log(1 - A2)) / m, (A1, A2, mask, p)


def case_dropout():
    rng = _rng(4)
    p = {"W1": rng.standard_normal((6, 4)), "b1": rng.standard_normal((6, 1)),
         "W2": rng.standard_normal((1, 6)), "b2": rng.standard_normal((1, 1))}
    return rng.standard_normal((4, 9)), rng.integers(0, 2, (1, 9)).astype(float), p


def forward_dropout_fresh_mask(X, Y, p):
    """Wrong for checking: a new mask at every call, so J is not a function of θ."""
    return _dropout_forward(X, Y, p, np.random.rand(6, 9) < 0.8)


FIXED_MASK = np.random.default_rng(7).random((6, 9)) < 0.8  # one mask for the whole job, on every worker


def forward_dropout_fixed_mask(X, Y, p):
    return _dropout_forward(X, Y, p, FIXED_MASK)


def backward_dropout(X, Y, cache):
    A1, A2, mask, p = cache
    m = X.shape[1]
    dZ2 = (A2 - Y) / m
    dZ1 = (p["W2"].T @ dZ2) * mask / 0.8 * (A1 > 0)
    return {"dW2": dZ2 @ A1.T, "db2": dZ2.sum(axis=1, keepdims=True),
            "dW1": dZ1 @ X.T, "db1": dZ1.sum(axis=1, keepdims=True)}
