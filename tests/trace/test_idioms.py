"""Issue 18.2: idioms of real hand-written code on the traced path, checked the way users write
them: a self-attention layer with batched matmuls (``Q @ K.transpose(0, 2, 1)``), and Nielsen's
network2 with its cross-entropy ``np.sum(np.nan_to_num(-y*np.log(a)-(1-y)*np.log(1-a)))`` and a
cost returned as ``np.float64``. Each runs traced (``outcome.evaluator``, no note) and gives the
verdict of the generic path (``fast=False``)."""

import numpy as np
import pytest

import gradjob

N, T, D, C = 3, 4, 5, 2


def attention_forward(X, Y, p):
    Q, K, V = X @ p["Wq"], X @ p["Wk"], X @ p["Wv"]            # (N, T, D) @ (D, D): batched
    S = Q @ K.transpose(0, 2, 1) / np.sqrt(D)                    # (N, T, T)
    S = S - S.max(axis=-1, keepdims=True)
    A = np.exp(S)
    A = A / A.sum(axis=-1, keepdims=True)
    O = A @ V
    out = O.reshape(N, T * D) @ p["Wo"]
    cost = np.sum((out - Y) ** 2) / (2 * N)
    return np.float64(cost), (X, Y, p, Q, K, V, A, O, out)


def attention_backward(X, Y, cache, scale=np.sqrt(D)):
    X, Y, p, Q, K, V, A, O, out = cache
    dout = (out - Y) / N
    dWo = O.reshape(N, T * D).T @ dout
    dO = (dout @ p["Wo"].T).reshape(N, T, D)
    dA = dO @ V.transpose(0, 2, 1)
    dV = A.transpose(0, 2, 1) @ dO
    dS = A * (dA - np.sum(dA * A, axis=-1, keepdims=True)) / scale
    dQ, dK = dS @ K, dS.transpose(0, 2, 1) @ Q
    flat = X.reshape(N * T, D).T
    return {"dWq": flat @ dQ.reshape(N * T, D), "dWk": flat @ dK.reshape(N * T, D),
            "dWv": flat @ dV.reshape(N * T, D), "dWo": dWo}


def attention_case():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((N, T, D))
    Y = rng.standard_normal((N, C))
    params = {name: 0.5 * rng.standard_normal((D, D)) for name in ("Wq", "Wk", "Wv")}
    params["Wo"] = 0.3 * rng.standard_normal((T * D, C))
    return X, Y, params


def verdict(outcome):
    return outcome.passed, list(outcome.reduction.failing)


@pytest.mark.parametrize("scale, failing", [(np.sqrt(D), []), (1.0, ["Wq", "Wk"])])
def test_self_attention_runs_traced_with_the_generic_verdict(scale, failing):
    X, Y, params = attention_case()

    def backward(X, Y, cache):
        return attention_backward(X, Y, cache, scale)

    fast = gradjob.check(attention_forward, backward, X, Y, params, epsilon=1e-6)
    slow = gradjob.check(attention_forward, backward, X, Y, params, epsilon=1e-6, fast=False)
    assert (fast.evaluator, list(fast.notes)) == ("traced", [])
    assert slow.evaluator == "forward"
    assert verdict(fast) == verdict(slow) == (not failing, failing)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


class Network2:
    """Nielsen's network2.py, as published: column vectors, per-example backprop, cross-entropy."""

    def __init__(self, sizes, seed=0):
        rng = np.random.default_rng(seed)
        self.biases = [rng.standard_normal((y, 1)) for y in sizes[1:]]
        self.weights = [rng.standard_normal((y, x)) / np.sqrt(x) for x, y in zip(sizes[:-1], sizes[1:])]

    def feedforward(self, a):
        for b, w in zip(self.biases, self.weights):
            a = sigmoid(np.dot(w, a) + b)
        return a

    @staticmethod
    def fn(a, y):
        return np.sum(np.nan_to_num(-y * np.log(a) - (1 - y) * np.log(1 - a)))

    def total_cost(self, data, lmbda=0.0):
        cost = 0.0
        for x, y in data:
            a = self.feedforward(x)
            cost += self.fn(a, y) / len(data)
        cost += 0.5 * (lmbda / len(data)) * sum(np.linalg.norm(w) ** 2 for w in self.weights)
        return cost

    def backprop(self, x, y):
        nabla_b = [np.zeros(b.shape) for b in self.biases]
        nabla_w = [np.zeros(w.shape) for w in self.weights]
        activation, activations, zs = x, [x], []
        for b, w in zip(self.biases, self.weights):
            z = np.dot(w, activation) + b
            zs.append(z)
            activation = sigmoid(z)
            activations.append(activation)
        delta = activations[-1] - y  # CrossEntropyCost.delta
        nabla_b[-1] = delta
        nabla_w[-1] = np.dot(delta, activations[-2].transpose())
        for layer in range(2, len(self.biases) + 1):
            sp = sigmoid(zs[-layer]) * (1 - sigmoid(zs[-layer]))
            delta = np.dot(self.weights[-layer + 1].transpose(), delta) * sp
            nabla_b[-layer] = delta
            nabla_w[-layer] = np.dot(delta, activations[-layer - 1].transpose())
        return nabla_b, nabla_w


def test_network2_cross_entropy_runs_traced_with_the_generic_verdict():
    rng = np.random.default_rng(1)
    net = Network2([4, 3, 2])
    data = [(rng.standard_normal((4, 1)), np.eye(2)[:, [k % 2]]) for k in range(5)]
    parameters = {"biases": net.biases, "weights": net.weights}
    fast = gradjob.check_lists(net.total_cost, net.backprop, parameters, data, epsilon=1e-6)
    slow = gradjob.check_lists(net.total_cost, net.backprop, parameters, data, epsilon=1e-6, fast=False)
    assert (fast.evaluator, list(fast.notes)) == ("traced", [])
    assert slow.evaluator == "forward"
    assert verdict(fast) == verdict(slow) == (True, [])
