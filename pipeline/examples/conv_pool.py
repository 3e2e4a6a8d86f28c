"""cs231n's three-layer convolutional network as a user's model file, written as assignment 2
writes it: a naive convolution (``x_pad``, four nested loops, a scalar store per output),
ReLU, a naive 2×2 max-pool, affine → ReLU → affine, softmax loss and L2 regularisation.
Layer functions return ``(out, cache)``; examples are rows (N, C, H, W), labels integers.

    gradjob submit --model conv_pool.py --case conv_pool.py:case
    gradjob bench --model conv_pool.py --case conv_pool.py:case

21,154 parameters at the default sizes: 8 filters 3×3×3 on 3×16×16 images, 40 hidden units, 10
classes; most are in the affine layers (``small_case``: 221, for tests).
"""

import numpy as np

REG = 0.01
CONV = {"stride": 1, "pad": 1}
POOL = {"pool_height": 2, "pool_width": 2, "stride": 2}


# --- layers.py --------------------------------------------------------------------------------

def conv_forward_naive(x, w, b, conv_param):
    stride, pad = conv_param["stride"], conv_param["pad"]
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    H_out = 1 + (H + 2 * pad - HH) // stride
    W_out = 1 + (W + 2 * pad - WW) // stride
    x_pad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="constant")
    out = np.zeros((N, F, H_out, W_out))
    for n in range(N):
        for f in range(F):
            for i in range(H_out):
                for j in range(W_out):
                    window = x_pad[n, :, i * stride:i * stride + HH, j * stride:j * stride + WW]
                    out[n, f, i, j] = np.sum(window * w[f]) + b[f]
    return out, (x, w, b, conv_param)


def conv_backward_naive(dout, cache):
    x, w, b, conv_param = cache
    stride, pad = conv_param["stride"], conv_param["pad"]
    N, F, H_out, W_out = dout.shape
    _, _, HH, WW = w.shape
    x_pad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="constant")
    dx_pad, dw, db = np.zeros_like(x_pad), np.zeros_like(w), np.zeros_like(b)
    for n in range(N):
        for f in range(F):
            db[f] += np.sum(dout[n, f])
            for i in range(H_out):
                for j in range(W_out):
                    window = x_pad[n, :, i * stride:i * stride + HH, j * stride:j * stride + WW]
                    dw[f] += window * dout[n, f, i, j]
                    dx_pad[n, :, i * stride:i * stride + HH, j * stride:j * stride + WW] += w[f] * dout[n, f, i, j]
    return dx_pad[:, :, pad:-pad, pad:-pad], dw, db


def max_pool_forward_naive(x, pool_param):
    ph, pw, stride = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    N, C, H, W = x.shape
    H_out, W_out = 1 + (H - ph) // stride, 1 + (W - pw) // stride
    out = np.zeros((N, C, H_out, W_out))
    for n in range(N):
        for c in range(C):
            for i in range(H_out):
                for j in range(W_out):
                    out[n, c, i, j] = np.max(x[n, c, i * stride:i * stride + ph, j * stride:j * stride + pw])
    return out, (x, pool_param)


def max_pool_backward_naive(dout, cache):
    x, pool_param = cache
    ph, pw, stride = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    N, C, H_out, W_out = dout.shape
    dx = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for i in range(H_out):
                for j in range(W_out):
                    window = x[n, c, i * stride:i * stride + ph, j * stride:j * stride + pw]
                    mask = window == np.max(window)
                    dx[n, c, i * stride:i * stride + ph, j * stride:j * stride + pw] += mask * dout[n, c, i, j]
    return dx


def relu_forward(x):
    return np.maximum(0, x), x


def relu_backward(dout, cache):
    return dout * (cache > 0)


def affine_forward(x, w, b):
    return x.reshape(x.shape[0], -1).dot(w) + b, (x, w, b)


def affine_backward(dout, cache):
    x, w, b = cache
    return dout.dot(w.T).reshape(x.shape), x.reshape(x.shape[0], -1).T.dot(dout), np.sum(dout, axis=0)


def softmax_loss(x, y):
    shifted = x - np.max(x, axis=1, keepdims=True)
    log_probs = shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))
    N = x.shape[0]
    loss = -np.sum(log_probs[np.arange(N), y]) / N
    dx = np.exp(log_probs)
    dx[np.arange(N), y] -= 1
    dx /= N
    return loss, dx


# --- the model: the seed's signatures --------------------------------------------------------

def forward_propagation_n(X, Y, parameters):
    W1, b1, W2, b2, W3, b3 = (parameters[k] for k in ("W1", "b1", "W2", "b2", "W3", "b3"))
    conv, conv_cache = conv_forward_naive(X, W1, b1, CONV)
    relu1, relu1_cache = relu_forward(conv)
    pool, pool_cache = max_pool_forward_naive(relu1, POOL)
    hidden, hidden_cache = affine_forward(pool, W2, b2)
    relu2, relu2_cache = relu_forward(hidden)
    scores, scores_cache = affine_forward(relu2, W3, b3)
    data_loss, dscores = softmax_loss(scores, Y)
    loss = data_loss + 0.5 * REG * (np.sum(W1 * W1) + np.sum(W2 * W2) + np.sum(W3 * W3))
    return loss, (conv_cache, relu1_cache, pool_cache, hidden_cache, relu2_cache, scores_cache, dscores)


def backward_propagation_n(X, Y, cache):
    conv_cache, relu1_cache, pool_cache, hidden_cache, relu2_cache, scores_cache, dscores = cache
    grads = {}
    dx, grads["W3"], grads["b3"] = affine_backward(dscores, scores_cache)
    dx, grads["W2"], grads["b2"] = affine_backward(relu_backward(dx, relu2_cache), hidden_cache)
    dx = relu_backward(max_pool_backward_naive(dx, pool_cache), relu1_cache)
    _, grads["W1"], grads["b1"] = conv_backward_naive(dx, conv_cache)
    for name, layer_cache in (("W1", conv_cache), ("W2", hidden_cache), ("W3", scores_cache)):
        grads[name] += REG * layer_cache[1]  # the layer's weights
    return grads


def case(input_dim=(3, 16, 16), filters=8, hidden=40, classes=10, examples=2, seed=0):
    """Random images, integer labels and weights scaled as cs231n's ``weight_scale``."""
    rng = np.random.default_rng(seed)
    C, H, W = input_dim
    X = rng.standard_normal((examples, C, H, W))
    Y = rng.integers(0, classes, examples)
    pooled = filters * (H // 2) * (W // 2)
    parameters = {
        "W1": 0.1 * rng.standard_normal((filters, C, 3, 3)), "b1": 0.01 * rng.standard_normal(filters),
        "W2": 0.05 * rng.standard_normal((pooled, hidden)), "b2": 0.01 * rng.standard_normal(hidden),
        "W3": 0.1 * rng.standard_normal((hidden, classes)), "b3": 0.01 * rng.standard_normal(classes),
    }
    return X, Y, parameters


def small_case():
    """A few hundred parameters: 3 filters on 2×6×6 images, 5 hidden units, 4 classes."""
    return case((2, 6, 6), 3, 5, 4, 2, 1)
