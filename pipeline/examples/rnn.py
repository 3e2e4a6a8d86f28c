"""cs231n's vanilla RNN language model as a user's model file, written as assignment 3 writes it:
a word embedding, ``rnn_forward`` looping over T steps and storing each hidden state with
``h[:, t, :] = next_h`` into ``np.zeros``, tanh, a temporal affine layer, a temporal softmax
loss, and a backward that accumulates the weights' gradients over time with ``+=``.
X holds the input word ids (N, T), Y the next ones (N, T).

    gradjob submit --model rnn.py --case rnn.py:case
    gradjob bench --model rnn.py --case rnn.py:case

20,640 parameters at the default sizes: 64 words, 32-wide embeddings, 96 hidden units, 4
sequences of 8 steps (``small_case``: 143, for tests).
"""

import numpy as np


# --- rnn_layers.py ----------------------------------------------------------------------------

def rnn_step_forward(x, prev_h, Wx, Wh, b):
    next_h = np.tanh(prev_h.dot(Wh) + x.dot(Wx) + b)
    return next_h, (x, prev_h, Wx, Wh, next_h)


def rnn_step_backward(dnext_h, cache):
    x, prev_h, Wx, Wh, next_h = cache
    dz = dnext_h * (1 - next_h ** 2)
    return dz.dot(Wx.T), dz.dot(Wh.T), x.T.dot(dz), prev_h.T.dot(dz), np.sum(dz, axis=0)


def rnn_forward(x, h0, Wx, Wh, b):
    N, T, _ = x.shape
    h = np.zeros((N, T, h0.shape[1]))
    prev_h, cache = h0, []
    for t in range(T):
        next_h, step_cache = rnn_step_forward(x[:, t, :], prev_h, Wx, Wh, b)
        h[:, t, :] = next_h
        cache.append(step_cache)
        prev_h = next_h
    return h, cache


def rnn_backward(dh, cache):
    N, T, H = dh.shape
    x = cache[0][0]
    dx = np.zeros((N, T, x.shape[1]))
    dWx, dWh, db = np.zeros_like(cache[0][2]), np.zeros_like(cache[0][3]), np.zeros(H)
    dprev_h = np.zeros((N, H))
    for t in reversed(range(T)):
        dx[:, t, :], dprev_h, dWx_t, dWh_t, db_t = rnn_step_backward(dh[:, t, :] + dprev_h, cache[t])
        dWx += dWx_t
        dWh += dWh_t
        db += db_t
    return dx, dprev_h, dWx, dWh, db


def word_embedding_forward(x, W):
    return W[x], (x, W)


def word_embedding_backward(dout, cache):
    x, W = cache
    dW = np.zeros_like(W)
    np.add.at(dW, x, dout)
    return dW


def temporal_affine_forward(x, w, b):
    N, T, D = x.shape
    return x.reshape(N * T, D).dot(w).reshape(N, T, -1) + b, (x, w, b)


def temporal_affine_backward(dout, cache):
    x, w, b = cache
    N, T, D = x.shape
    M = b.shape[0]
    dx = dout.reshape(N * T, M).dot(w.T).reshape(N, T, D)
    dw = x.reshape(N * T, D).T.dot(dout.reshape(N * T, M))
    return dx, dw, dout.sum(axis=(0, 1))


def temporal_softmax_loss(x, y):
    N, T, V = x.shape
    flat, y_flat = x.reshape(N * T, V), y.reshape(N * T)
    probs = np.exp(flat - np.max(flat, axis=1, keepdims=True))
    probs /= np.sum(probs, axis=1, keepdims=True)
    loss = -np.sum(np.log(probs[np.arange(N * T), y_flat])) / N
    dx = probs.copy()
    dx[np.arange(N * T), y_flat] -= 1
    dx /= N
    return loss, dx.reshape(N, T, V)


# --- the model: the seed's signatures --------------------------------------------------------

def forward_propagation_n(X, Y, parameters):
    W_embed, Wx, Wh, b, W_vocab, b_vocab = (parameters[k] for k in ("W_embed", "Wx", "Wh", "b", "W_vocab", "b_vocab"))
    h0 = np.zeros((X.shape[0], Wh.shape[0]))
    x, embed_cache = word_embedding_forward(X, W_embed)
    h, rnn_cache = rnn_forward(x, h0, Wx, Wh, b)
    scores, affine_cache = temporal_affine_forward(h, W_vocab, b_vocab)
    loss, dscores = temporal_softmax_loss(scores, Y)
    return loss, (embed_cache, rnn_cache, affine_cache, dscores)


def backward_propagation_n(X, Y, cache):
    embed_cache, rnn_cache, affine_cache, dscores = cache
    grads = {}
    dh, grads["W_vocab"], grads["b_vocab"] = temporal_affine_backward(dscores, affine_cache)
    dx, _, grads["Wx"], grads["Wh"], grads["b"] = rnn_backward(dh, rnn_cache)
    grads["W_embed"] = word_embedding_backward(dx, embed_cache)
    return grads


def case(vocabulary=64, embedding=32, hidden=96, sequences=4, steps=8, seed=0):
    """Random word ids and weights scaled by 1/√fan-in, as cs231n's ``CaptioningRNN``."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, vocabulary, (sequences, steps + 1))
    parameters = {
        "W_embed": rng.standard_normal((vocabulary, embedding)) / 100,
        "Wx": rng.standard_normal((embedding, hidden)) / np.sqrt(embedding),
        "Wh": rng.standard_normal((hidden, hidden)) / np.sqrt(hidden),
        "b": np.zeros(hidden),
        "W_vocab": rng.standard_normal((hidden, vocabulary)) / np.sqrt(hidden),
        "b_vocab": np.zeros(vocabulary),
    }
    return words[:, :-1], words[:, 1:], parameters


def small_case():
    """A few hundred parameters: 7 words, 4-wide embeddings, 6 hidden units, 3 sequences of 4 steps."""
    return case(7, 4, 6, 3, 4, 1)
