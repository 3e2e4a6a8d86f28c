"""Issue 18 point 2: writes into arrays while traced have functional meaning. Each idiom in a small
model written as course code writes it stays on the traced path with the generic path's numbers;
writes into parameters and reads the trace cannot follow are refused, each with its line."""

import textwrap

import numpy as np
import pytest

import gradjob
from gradjob.model.layout import Layout
from gradjob.model.spec import Model, cost_function
from gradjob.numerics.evaluate import in_place_costs
from gradjob.trace import Replay, Untraceable


# --- the models, as cs231n / min-char-rnn write them ----------------------------------------------

def conv_forward_naive(x, w, b, conv_param):
    stride, pad = conv_param["stride"], conv_param["pad"]
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    x_pad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="constant")
    H_out = 1 + (H + 2 * pad - HH) // stride
    W_out = 1 + (W + 2 * pad - WW) // stride
    out = np.zeros((N, F, H_out, W_out))
    for n in range(N):
        for f in range(F):
            for i in range(H_out):
                for j in range(W_out):
                    hs, ws = i * stride, j * stride
                    out[n, f, i, j] = np.sum(x_pad[n, :, hs:hs + HH, ws:ws + WW] * w[f]) + b[f]
    return out, (x, w, b, conv_param)


def conv_backward_naive(dout, cache):
    x, w, b, conv_param = cache
    stride, pad = conv_param["stride"], conv_param["pad"]
    N, F, H_out, W_out = dout.shape
    _, _, HH, WW = w.shape
    x_pad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="constant")
    dx_pad = np.zeros_like(x_pad)
    dw = np.zeros_like(w)
    db = np.zeros_like(b)
    for n in range(N):
        for f in range(F):
            db[f] += np.sum(dout[n, f])
            for i in range(H_out):
                for j in range(W_out):
                    hs, ws = i * stride, j * stride
                    dw[f] += x_pad[n, :, hs:hs + HH, ws:ws + WW] * dout[n, f, i, j]
                    dx_pad[n, :, hs:hs + HH, ws:ws + WW] += w[f] * dout[n, f, i, j]
    return dx_pad[:, :, pad:-pad, pad:-pad], dw, db


def max_pool_forward_naive(x, pool_param):
    N, C, H, W = x.shape
    ph, pw, stride = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
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


def conv_net_loss(params, X, y):
    """conv - relu - 2x2 max pool - affine - softmax, its gradients computed beside the loss."""
    conv, conv_cache = conv_forward_naive(X, params["W1"], params["b1"], {"stride": 1, "pad": 1})
    relu = np.maximum(0, conv)
    pooled, pool_cache = max_pool_forward_naive(relu, {"pool_height": 2, "pool_width": 2, "stride": 2})
    flat = pooled.reshape(X.shape[0], -1)
    scores = flat.dot(params["W2"]) + params["b2"]
    shifted = scores - np.max(scores, axis=1, keepdims=True)
    probs = np.exp(shifted) / np.sum(np.exp(shifted), axis=1, keepdims=True)
    N = X.shape[0]
    loss = -np.sum(np.log(probs[np.arange(N), y])) / N
    dscores = probs.copy()
    dscores[np.arange(N), y] -= 1
    dscores /= N
    grads = {"W2": flat.T.dot(dscores), "b2": np.sum(dscores, axis=0)}
    dpooled = dscores.dot(params["W2"].T).reshape(pooled.shape)
    drelu = max_pool_backward_naive(dpooled, pool_cache)
    drelu[conv <= 0] = 0
    _, grads["W1"], grads["b1"] = conv_backward_naive(drelu, conv_cache)
    return loss, grads


def conv_case(seed=0):
    rng = np.random.default_rng(seed)
    X, y = rng.standard_normal((1, 2, 4, 4)), np.array([2])
    params = {"W1": 0.5 * rng.standard_normal((2, 2, 3, 3)), "b1": 0.1 * rng.standard_normal(2),
              "W2": rng.standard_normal((8, 3)), "b2": 0.1 * rng.standard_normal(3)}
    return params, X, y


def rnn_step_forward(x, prev_h, Wx, Wh, b):
    next_h = np.tanh(prev_h.dot(Wh) + x.dot(Wx) + b)
    return next_h, (x, prev_h, Wx, Wh, next_h)


def rnn_step_backward(dnext_h, cache):
    x, prev_h, Wx, Wh, next_h = cache
    dz = dnext_h * (1 - next_h ** 2)
    return dz.dot(Wx.T), dz.dot(Wh.T), x.T.dot(dz), prev_h.T.dot(dz), np.sum(dz, axis=0)


def rnn_forward(x, h0, Wx, Wh, b):
    N, T, D = x.shape
    h = np.zeros((N, T, h0.shape[1]))
    prev_h, cache = h0, []
    for t in range(T):
        next_h, cache_t = rnn_step_forward(x[:, t, :], prev_h, Wx, Wh, b)
        h[:, t, :] = next_h
        prev_h = next_h
        cache.append(cache_t)
    return h, cache


def rnn_backward(dh, cache):
    N, T, H = dh.shape
    D = cache[0][0].shape[1]
    dx = np.zeros((N, T, D))
    dWx, dWh, db = np.zeros((D, H)), np.zeros((H, H)), np.zeros((H,))
    dprev_h = np.zeros((N, H))
    for t in reversed(range(T)):
        dx_t, dprev_h, dWx_t, dWh_t, db_t = rnn_step_backward(dh[:, t, :] + dprev_h, cache[t])
        dx[:, t, :] = dx_t
        dWx += dWx_t
        dWh += dWh_t
        db += db_t
    return dx, dprev_h, dWx, dWh, db


def rnn_loss(params, X, Y):
    """An RNN regressor whose loss also computes its gradients (captioning-style)."""
    h0 = np.zeros((X.shape[0], params["Wh"].shape[0]))
    h, cache = rnn_forward(X, h0, params["Wx"], params["Wh"], params["b"])
    N, T, H = h.shape
    scores = h.reshape(N * T, H).dot(params["Wo"])
    diff = scores - Y.reshape(N * T, -1)
    loss = 0.5 * np.sum(diff ** 2) / N
    grads = {"Wo": h.reshape(N * T, H).T.dot(diff) / N}
    dh = (diff.dot(params["Wo"].T) / N).reshape(N, T, H)
    _, _, grads["Wx"], grads["Wh"], grads["b"] = rnn_backward(dh, cache)
    return loss, grads


def rnn_case(seed=1):
    rng = np.random.default_rng(seed)
    N, T, D, H = 3, 4, 3, 5
    X, Y = rng.standard_normal((N, T, D)), rng.standard_normal((N, T, 2))
    params = {"Wx": 0.5 * rng.standard_normal((D, H)), "Wh": 0.5 * rng.standard_normal((H, H)),
              "b": 0.1 * rng.standard_normal(H), "Wo": rng.standard_normal((H, 2))}
    return params, X, Y


def min_char_rnn_loss(params, inputs, targets):
    """Karpathy's min-char-rnn lossFun: dicts of steps, and ``dWhy += ...`` into zeros."""
    Wxh, Whh, Why, bh, by = params["Wxh"], params["Whh"], params["Why"], params["bh"], params["by"]
    vocab = Wxh.shape[1]
    xs, hs, ys, ps = {}, {}, {}, {}
    hs[-1] = np.zeros((Whh.shape[0], 1))
    loss = 0
    for t in range(len(inputs)):
        xs[t] = np.zeros((vocab, 1))
        xs[t][inputs[t]] = 1
        hs[t] = np.tanh(np.dot(Wxh, xs[t]) + np.dot(Whh, hs[t - 1]) + bh)
        ys[t] = np.dot(Why, hs[t]) + by
        ps[t] = np.exp(ys[t]) / np.sum(np.exp(ys[t]))
        loss += -np.log(ps[t][targets[t], 0])
    dWxh, dWhh, dWhy = np.zeros_like(Wxh), np.zeros_like(Whh), np.zeros_like(Why)
    dbh, dby = np.zeros_like(bh), np.zeros_like(by)
    dhnext = np.zeros_like(hs[0])
    for t in reversed(range(len(inputs))):
        dy = np.copy(ps[t])
        dy[targets[t]] -= 1
        dWhy += np.dot(dy, hs[t].T)
        dby += dy
        dh = np.dot(Why.T, dy) + dhnext
        dhraw = (1 - hs[t] * hs[t]) * dh
        dbh += dhraw
        dWxh += np.dot(dhraw, xs[t].T)
        dWhh += np.dot(dhraw, hs[t - 1].T)
        dhnext = np.dot(Whh.T, dhraw)
    return loss, {"Wxh": dWxh, "Whh": dWhh, "Why": dWhy, "bh": dbh, "by": dby}


def min_char_case(seed=2):
    rng = np.random.default_rng(seed)
    vocab, hidden = 5, 4
    params = {"Wxh": 0.3 * rng.standard_normal((hidden, vocab)), "Whh": 0.3 * rng.standard_normal((hidden, hidden)),
              "Why": 0.3 * rng.standard_normal((vocab, hidden)), "bh": np.zeros((hidden, 1)),
              "by": np.zeros((vocab, 1))}
    return params, [0, 3, 1, 4, 2], [3, 1, 4, 2, 0]


def relu_net_loss(params, X, y):
    """cs231n's two-layer net: the ReLU mask into the backward (``dhidden[hidden <= 0] = 0``), and
    ``np.add.at`` accumulating an embedding gradient."""
    W1, b1, W2, b2, E = params["W1"], params["b1"], params["W2"], params["b2"], params["E"]
    words = np.array([[0, 2, 2], [1, 0, 3]])
    embedded = E[words].sum(axis=1)
    hidden = np.maximum(0, (X + embedded).dot(W1) + b1)
    scores = hidden.dot(W2) + b2
    N = X.shape[0]
    shifted = scores - np.max(scores, axis=1, keepdims=True)
    probs = np.exp(shifted) / np.sum(np.exp(shifted), axis=1, keepdims=True)
    loss = -np.sum(np.log(probs[np.arange(N), y])) / N + 0.05 * (np.sum(W1 * W1) + np.sum(W2 * W2))
    dscores = probs.copy()
    dscores[np.arange(N), y] -= 1
    dscores /= N
    dhidden = dscores.dot(W2.T)
    dhidden[hidden <= 0] = 0
    dE = np.zeros_like(E)
    np.add.at(dE, words, dhidden.dot(W1.T)[:, None, :])
    return loss, {"W1": (X + embedded).T.dot(dhidden) + 0.1 * W1, "b1": np.sum(dhidden, axis=0),
                  "W2": hidden.T.dot(dscores) + 0.1 * W2, "b2": np.sum(dscores, axis=0), "E": dE}


def relu_case(seed=3):
    rng = np.random.default_rng(seed)
    X, y = rng.standard_normal((2, 4)), np.array([1, 2])
    params = {"W1": rng.standard_normal((4, 6)), "b1": 0.1 * rng.standard_normal(6),
              "W2": rng.standard_normal((6, 3)), "b2": 0.1 * rng.standard_normal(3), "E": rng.standard_normal((4, 4))}
    return params, X, y


def sigmoid(x):
    """cs231n's numerically stable sigmoid."""
    pos_mask = (x >= 0)
    neg_mask = (x < 0)
    z = np.zeros_like(x)
    z[pos_mask] = np.exp(-x[pos_mask])
    z[neg_mask] = np.exp(x[neg_mask])
    top = np.ones_like(x)
    top[neg_mask] = z[neg_mask]
    return top / (1 + z)


def sigmoid_loss(params, X, Y):
    a = sigmoid(X.dot(params["W1"]) + params["b1"])
    loss = np.sum((a - Y) ** 2)
    dz = 2 * (a - Y) * a * (1 - a)
    return loss, {"W1": X.T.dot(dz), "b1": np.sum(dz, axis=0)}


def sigmoid_case(seed=4):
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((5, 4)), rng.random((5, 6))
    return {"W1": rng.standard_normal((4, 6)), "b1": rng.standard_normal(6)}, X, Y


IDIOMS = {
    "scalar stores (conv_forward_naive, max_pool_forward_naive), dx[...] += in the backward":
        (conv_net_loss, conv_case),
    "slice stores h[:, t, :] = next_h, dWx += dWx_t into zeros": (rnn_loss, rnn_case),
    "min-char-rnn: xs[t][inputs[t]] = 1, dWhy += into zeros_like": (min_char_rnn_loss, min_char_case),
    "the ReLU mask dhidden[hidden <= 0] = 0, np.add.at into zeros_like": (relu_net_loss, relu_case),
    "the stable sigmoid: z[pos_mask] = np.exp(-x[pos_mask]) into zeros_like": (sigmoid_loss, sigmoid_case),
}


@pytest.mark.parametrize("idiom", list(IDIOMS))
def test_each_idiom_stays_traced_with_the_generic_paths_numbers(idiom, private_tmp):
    model, case = IDIOMS[idiom]
    runs = {}
    for fast in (True, False):
        params, X, y = case()
        outcome = gradjob.check_loss(lambda X, y: model(params, X, y), params, X, y, fast=fast)
        runs[fast] = outcome
    traced, generic = runs[True], runs[False]
    assert (traced.evaluator, generic.evaluator) == ("traced", "forward"), traced.notes
    assert traced.notes == []
    assert traced.reduction.passed == generic.reduction.passed is True
    assert traced.reduction.difference < 1e-7 and generic.reduction.difference < 1e-7  # round-off: not comparable
    buggy = {}
    for fast in (True, False):  # a planted bug, as the seed's: the differences are the bug's, equal to 1e-9
        params, X, y = case()
        outcome = gradjob.check_loss(lambda X, y: doubled(model(params, X, y), BUGGY[model]), params, X, y, fast=fast)
        buggy[fast] = outcome
    assert (buggy[True].evaluator, buggy[False].evaluator) == ("traced", "forward")
    assert buggy[True].reduction.failing == buggy[False].reduction.failing == [BUGGY[model]]
    assert buggy[True].reduction.difference == pytest.approx(buggy[False].reduction.difference, rel=1e-9)


BUGGY = {conv_net_loss: "W1", rnn_loss: "Wh", min_char_rnn_loss: "Why", relu_net_loss: "E", sigmoid_loss: "b1"}


def doubled(result, name):
    """The gradient of one tensor doubled: the seed's kind of bug."""
    loss, grads = result
    return loss, {**grads, name: 2 * grads[name]}


# --- the replay against the real forward, at steps that cross kinks ---------------------------------

def plain_costs(forward, X, Y, layout, theta):
    return in_place_costs(cost_function(Model(forward, None), X, Y, layout.views(theta)), theta)


def replayed_equals_forward(forward, params, X, Y, scales=(1e-7, 1e-3, 0.5)):
    layout = Layout.of(params)
    theta = layout.flatten(params)
    replay = Replay.of(forward, X, Y, layout, theta)
    plain = plain_costs(forward, X, Y, layout, theta)
    index = np.arange(theta.size)
    assert replay.cost == plain(index[:1], theta[:1], "")[0]
    rng = np.random.default_rng(0)
    for scale in scales:
        values = theta + scale * np.maximum(1, np.abs(theta)) * rng.standard_normal(theta.size)
        np.testing.assert_allclose(replay.costs(index, values), plain(index, values, "+"), rtol=1e-12, atol=1e-15)
    return replay


def masked_cost(X, Y, p):
    """A write the cost depends on: the ReLU as a mask store into a traced array."""
    z = X.T.dot(p["W"].T) + p["b"].T
    a = z * 1.0
    a[z <= 0] = 0
    return np.sum(a ** 2)


def accumulated_cost(X, Y, p):
    """``+=`` and ``np.add.at`` into plain zeros, and a store into a traced array, that the cost reads."""
    total = np.zeros((4, X.shape[1]))
    total += p["W"].dot(X)
    counts = np.zeros(5)
    np.add.at(counts, [0, 2, 2, 4], p["v"][:4])
    scaled = p["W"].dot(X) * 2.0
    scaled[1:3, ::2] = p["b"][1:3] * X[0, ::2]
    return np.sum(np.tanh(total + scaled) ** 2) + np.sum(counts * p["v"])


def small_case(seed=0):
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((3, 7)), np.zeros((3, 7))
    return {"W": rng.standard_normal((4, 3)), "b": 0.1 * rng.standard_normal((4, 1)), "v": rng.standard_normal(5)}, X, Y


def sigmoid_cost(X, Y, p):
    """The stable sigmoid's masks flip at the larger steps."""
    return np.sum((sigmoid(p["W"].dot(X) + p["b"]) - 0.3) ** 2) + np.sum(sigmoid(p["v"]))


@pytest.mark.parametrize("forward", [masked_cost, accumulated_cost, sigmoid_cost])
def test_writes_the_cost_depends_on_replay_as_the_forward(forward):
    params, X, Y = small_case()
    replay = replayed_equals_forward(forward, params, X, Y)
    assert {n.op for n in replay.graph.nodes} & {"setitem", "ufunc_at", "elementwise"}


def test_conv_and_rnn_forwards_replay_as_the_forward():
    params, X, y = conv_case()
    replay = replayed_equals_forward(lambda X, y, p: conv_net_loss(p, X, y)[0], params, X, y)
    assert sum(n.op == "setitem" for n in replay.graph.nodes) == 2 * 4 * 4 + 2 * 2 * 2  # one per store
    params, X, Y = rnn_case()
    replayed_equals_forward(lambda X, Y, p: rnn_loss(p, X, Y)[0], params, X, Y)


def test_a_plain_array_written_while_traced_holds_its_values_at_theta_afterwards():
    params, X, Y = small_case()
    kept = {}

    def forward(X, Y, p):
        out = np.zeros(3)
        kept["out"] = out
        out[1] = np.sum(p["v"])
        return np.sum(out * 2.0)

    layout = Layout.of(params)
    Replay.of(forward, X, Y, layout, layout.flatten(params))
    assert kept["out"].tolist() == [0.0, np.sum(params["v"]), 0.0]


# --- refusals -----------------------------------------------------------------------------------------

def load(source: str) -> dict:
    namespace: dict = {}
    exec(compile(textwrap.dedent(source), "model.py", "exec"), namespace)
    return namespace


REFUSED = {
    "assignment into a parameter or a view of one (A[...] = ...) is not supported":
        "p['v'][0] = np.sum(p['W'])  # here\n    return p['v'].sum()",
    "np.add.at into a parameter or a view of one is not supported":
        "np.add.at(p['v'], [0, 0], 1.0)  # here\n    return p['v'].sum()",
    "np.exp with out= a parameter or an array that shares memory with another is not supported":
        "np.exp(p['W'], out=p['W'])  # here\n    return p['W'].sum()",
    "np.add into a view of a plain array (out= or an in-place operator) is not supported":
        "Z = np.zeros((4, 7))\n    V = Z[1:]\n    V += (p['W'] @ X)[1:]  # here\n    return V.sum()",
    "storing a traced value into a plain array is supported as `A[key] = value` with A and key made of names, "
    "numbers, slices and arithmetic":
        "Z = np.zeros(5)\n    Z[len(Z) - 1] = p['v'][0]  # here\n    return np.sum(Z * p['v'])",
    "reading an array written while traced through another that shares its memory (a view taken before the "
    "write, or its base) is not supported":
        "Z = np.zeros((4, 7))\n    V = Z[1:]\n    Z[0] = p['W'][0] @ X\n"
        "    return np.sum(V * (p['W'] @ X)[1:])  # here",
    "writing a floating-point traced value into an integer or boolean array is not supported":
        "Z = np.zeros(3, dtype=np.int64)\n    Z[0:2] = p['v'][:2]  # here\n    return np.sum(Z * p['v'][:3])",
    "storing into a plain array with a mask computed from the parameters is supported for a traced value "
    "(z[mask] = f(x[mask]), or a traced scalar)":
        "z = np.zeros(5)\n    z[p['v'] > 0] = 1.0  # here\n    return np.sum(z * p['v'])",
    "x[mask] with a mask computed from the parameters is supported in elementwise operations with scalars, "
    "stored back with the same mask (z[mask] = f(x[mask]))":
        "return np.sum(p['v'][p['v'] > 0])  # here",
}


@pytest.mark.parametrize("reason", list(REFUSED))
def test_refused_writes_name_the_operation_and_the_line(reason):
    source = "import numpy as np\n\n\ndef forward(X, Y, p):\n    " + REFUSED[reason] + "\n"
    params, X, Y = small_case()
    layout = Layout.of(params)
    theta = layout.flatten(params)
    before = theta.copy()
    with pytest.raises(Untraceable) as info:
        Replay.of(load(source)["forward"], X, Y, layout, theta)
    line = next(n for n, text in enumerate(source.splitlines(), 1) if "# here" in text)
    assert str(info.value) == f"{reason} (model.py:{line})"
    assert theta.tobytes() == before.tobytes()


def test_a_cost_plain_numpy_computed_from_a_written_array_is_refused():
    def forward(X, Y, p):
        Z = np.zeros(3)
        held = {"Z": Z}
        Z[0] = np.sum(p["v"])
        return np.sum(held["Z"])  # the dict still holds the plain array: the trace cannot see this sum

    params, X, Y = small_case()
    layout = Layout.of(params)
    with pytest.raises(Untraceable) as info:
        Replay.of(forward, X, Y, layout, layout.flatten(params))
    assert str(info.value) == ("the cost the forward returns is not fully traced: an array written with a traced "
                               "value (A[...] = v, A += v, at the line named) was read by plain NumPy, which the trace "
                               f"cannot follow (test_writes.py:{forward.__code__.co_firstlineno + 3})")


def test_a_written_array_read_untracked_into_the_cost_falls_back(private_tmp):
    """The plain array's memory holds a sentinel while traced: a pure-NumPy read of it reaches the
    traced cost as nan, the comparison with the real forward at θ turns the trace down."""
    params, X, Y = small_case()

    def loss(X, y):
        Z = np.zeros(3)
        held = [Z]
        Z[0] = np.sum(params["v"] ** 2)  # the line named
        loss = np.sum(params["W"] ** 2) + 2.0 * np.sum(held[0])
        return loss, {"W": 2 * params["W"], "v": 4 * params["v"], "b": np.zeros_like(params["b"])}

    line = loss.__code__.co_firstlineno + 3
    outcome = gradjob.check_loss(loss, params, X, Y)
    generic = gradjob.check_loss(loss, params, X, Y, fast=False)
    assert outcome.evaluator == "forward"
    assert outcome.notes == ["the traced fast path is off for this model: the cost the forward returns is not fully "
                             "traced: an array written with a traced value (A[...] = v, A += v, at the line named) was "
                             f"read by plain NumPy, which the trace cannot follow (test_writes.py:{line}); each "
                             "evaluation calls the forward"]
    assert outcome.reduction.passed and outcome.reduction.difference == generic.reduction.difference
