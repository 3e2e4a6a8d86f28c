"""Family 6: Michael Nielsen's ``network.py`` ("Neural Networks and Deep Learning", chapter 1-2).

A sigmoid network kept as Nielsen keeps it: ``self.biases`` and ``self.weights`` are lists, one
(y, 1) bias column and one (y, x) weight matrix per layer; ``backprop(x, y)`` handles one example
and returns ``(nabla_b, nabla_w)``; the quadratic cost C = 1/(2n)·Σ‖a − y‖². Everything is
float32 (the arrays are created with ``.astype(np.float32)``).

The seed's signatures convert between the dict convention (W1, b1, W2, …) and Nielsen's lists:
``forward`` puts the given arrays into the network's lists and evaluates the cost over the
examples (columns of X, one-hot columns of Y); ``backward`` averages ``backprop`` over the
examples, as ``update_mini_batch`` does, and names the results dW1, db1, ….

Broken twin: dW1 × 1.05.

Standalone: numpy only.
"""

import numpy as np

SIZES = [6, 8, 5, 3]
EXAMPLES = 10


class Network(object):

    def __init__(self, sizes, rng=None):
        rng = rng or np.random.default_rng()
        self.num_layers = len(sizes)
        self.sizes = sizes
        self.biases = [rng.standard_normal((y, 1)).astype(np.float32) for y in sizes[1:]]
        self.weights = [rng.standard_normal((y, x)).astype(np.float32)
                        for x, y in zip(sizes[:-1], sizes[1:])]

    def feedforward(self, a):
        """Return the output of the network if ``a`` is input."""
        for b, w in zip(self.biases, self.weights):
            a = sigmoid(np.dot(w, a) + b)
        return a

    def backprop(self, x, y):
        """Return a tuple ``(nabla_b, nabla_w)`` representing the gradient for the cost function
        C_x. ``nabla_b`` and ``nabla_w`` are layer-by-layer lists of numpy arrays, similar to
        ``self.biases`` and ``self.weights``."""
        nabla_b = [np.zeros(b.shape, dtype=b.dtype) for b in self.biases]
        nabla_w = [np.zeros(w.shape, dtype=w.dtype) for w in self.weights]
        # feedforward
        activation = x
        activations = [x]  # list to store all the activations, layer by layer
        zs = []  # list to store all the z vectors, layer by layer
        for b, w in zip(self.biases, self.weights):
            z = np.dot(w, activation) + b
            zs.append(z)
            activation = sigmoid(z)
            activations.append(activation)
        # backward pass
        delta = self.cost_derivative(activations[-1], y) * sigmoid_prime(zs[-1])
        nabla_b[-1] = delta
        nabla_w[-1] = np.dot(delta, activations[-2].transpose())
        for l in range(2, self.num_layers):
            z = zs[-l]
            sp = sigmoid_prime(z)
            delta = np.dot(self.weights[-l + 1].transpose(), delta) * sp
            nabla_b[-l] = delta
            nabla_w[-l] = np.dot(delta, activations[-l - 1].transpose())
        return (nabla_b, nabla_w)

    def cost_derivative(self, output_activations, y):
        """Return the vector of partial derivatives \\partial C_x / \\partial a for the output
        activations."""
        return (output_activations - y)

    def total_cost(self, data):
        """The quadratic cost 1/(2n)·Σ‖a − y‖² over ``data``, a list of (x, y) pairs."""
        cost = np.float32(0.0)
        for x, y in data:
            a = self.feedforward(x)
            cost += 0.5 * np.linalg.norm(a - y) ** 2 / len(data)
        return cost


def sigmoid(z):
    """The sigmoid function."""
    return 1.0 / (1.0 + np.exp(-z))


def sigmoid_prime(z):
    """Derivative of the sigmoid function."""
    return sigmoid(z) * (1 - sigmoid(z))


# --- the seed's signatures: dict of W1, b1, … ↔ Nielsen's lists -----------------------------------

NET = Network(SIZES)  # the architecture; its lists are filled at every call


def to_lists(parameters):
    L = len(parameters) // 2
    weights = [parameters["W%d" % l] for l in range(1, L + 1)]
    biases = [parameters["b%d" % l] for l in range(1, L + 1)]
    return weights, biases


def to_dict(nabla_w, nabla_b):
    gradients = {}
    for l, (nw, nb) in enumerate(zip(nabla_w, nabla_b), start=1):
        gradients["dW%d" % l] = nw
        gradients["db%d" % l] = nb
    return gradients


def examples(X, Y):
    return [(X[:, [j]], Y[:, [j]]) for j in range(X.shape[1])]


def forward(X, Y, parameters):
    NET.weights, NET.biases = to_lists(parameters)
    data = examples(X, Y)
    return NET.total_cost(data), (data, parameters)


def backward(X, Y, cache):
    data, parameters = cache
    NET.weights, NET.biases = to_lists(parameters)
    nabla_b = [np.zeros(b.shape, dtype=b.dtype) for b in NET.biases]
    nabla_w = [np.zeros(w.shape, dtype=w.dtype) for w in NET.weights]
    for x, y in data:
        delta_nabla_b, delta_nabla_w = NET.backprop(x, y)
        nabla_b = [nb + dnb for nb, dnb in zip(nabla_b, delta_nabla_b)]
        nabla_w = [nw + dnw for nw, dnw in zip(nabla_w, delta_nabla_w)]
    n = len(data)
    return to_dict([nw / n for nw in nabla_w], [nb / n for nb in nabla_b])


def backward_W1_x1_05(X, Y, cache):
    gradients = backward(X, Y, cache)
    gradients["dW1"] = gradients["dW1"] * np.float32(1.05)
    return gradients


def case_sigmoid_quadratic():
    """A fresh float32 network, as ``Network([6, 8, 5, 3])`` makes it, and ten one-hot examples."""
    rng = np.random.default_rng(1989)
    net = Network(SIZES, rng)
    X = rng.random((SIZES[0], EXAMPLES)).astype(np.float32)   # inputs in [0, 1), like pixels
    Y = np.eye(SIZES[-1], dtype=np.float32)[:, rng.integers(0, SIZES[-1], EXAMPLES)]
    weights, biases = net.weights, net.biases
    parameters = {}
    for l, (w, b) in enumerate(zip(weights, biases), start=1):
        parameters["W%d" % l] = w
        parameters["b%d" % l] = b
    return X, Y, parameters


EXPECTED = {
    ("case_sigmoid_quadratic", "backward"): [],
    ("case_sigmoid_quadratic", "backward_W1_x1_05"): ["W1"],
}
DIAGNOSES = {"backward_W1_x1_05": {"W1": "dW1 is 1.05× the numerical gradient"}}
