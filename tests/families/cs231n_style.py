"""Family 5: a cs231n-style fully-connected net with batch normalisation and dropout.

Written as the course's assignment 2 writes it: layer functions returning ``(out, cache)`` and
``dx, dw, db = affine_backward(dout, cache)``, a ``FullyConnectedNet`` whose constructor
defaults to ``dtype=np.float32`` and whose ``loss(X, y)`` returns ``(loss, grads)``. Examples are
rows of X (N×D), labels are integers, W is (D_in, D_out) and biases are 1-D.

The seed's signatures wrap ``loss``: ``forward`` calls it with the given parameters and keeps
the grads as its cache; ``backward`` renames them ``W1`` → ``dW1``. Dropout uses one mask per
layer drawn once, at import, from a seeded generator, so the forward is deterministic and every
worker has the same masks.

With batch normalisation after every hidden affine layer, b1 and b2 have (exactly) zero gradient:
BN subtracts the batch mean. Broken twin: db3, the last bias, × 1.05.

Standalone: numpy only.
"""

import numpy as np

INPUT_DIM, HIDDEN_DIMS, NUM_CLASSES, N = 12, (10, 8), 4, 16
KEEP = 0.75
REG = 0.05

_mask_rng = np.random.default_rng(231)
DROPOUT_MASKS = [_mask_rng.random((N, H)) < KEEP for H in HIDDEN_DIMS]


# --- layers.py ------------------------------------------------------------------------------------

def affine_forward(x, w, b):
    out = x.reshape(x.shape[0], -1).dot(w) + b
    cache = (x, w, b)
    return out, cache


def affine_backward(dout, cache):
    x, w, b = cache
    dx = dout.dot(w.T).reshape(x.shape)
    dw = x.reshape(x.shape[0], -1).T.dot(dout)
    db = np.sum(dout, axis=0)
    return dx, dw, db


def relu_forward(x):
    out = np.maximum(0, x)
    cache = x
    return out, cache


def relu_backward(dout, cache):
    x = cache
    dx = dout * (x > 0)
    return dx


def batchnorm_forward(x, gamma, beta, bn_param):
    mode = bn_param["mode"]
    eps = bn_param.get("eps", 1e-5)
    momentum = bn_param.get("momentum", 0.9)

    N, D = x.shape
    running_mean = bn_param.get("running_mean", np.zeros(D, dtype=x.dtype))
    running_var = bn_param.get("running_var", np.zeros(D, dtype=x.dtype))

    if mode == "train":
        sample_mean = x.mean(axis=0)
        sample_var = x.var(axis=0)
        x_hat = (x - sample_mean) / np.sqrt(sample_var + eps)
        out = gamma * x_hat + beta
        cache = (x, x_hat, sample_mean, sample_var, gamma, eps)
        running_mean = momentum * running_mean + (1 - momentum) * sample_mean
        running_var = momentum * running_var + (1 - momentum) * sample_var
    elif mode == "test":
        x_hat = (x - running_mean) / np.sqrt(running_var + eps)
        out = gamma * x_hat + beta
        cache = None
    else:
        raise ValueError('Invalid forward batchnorm mode "%s"' % mode)

    bn_param["running_mean"] = running_mean
    bn_param["running_var"] = running_var
    return out, cache


def batchnorm_backward_alt(dout, cache):
    x, x_hat, mean, var, gamma, eps = cache
    N = x.shape[0]
    dbeta = dout.sum(axis=0)
    dgamma = np.sum(dout * x_hat, axis=0)
    dx_hat = dout * gamma
    std = np.sqrt(var + eps)
    dx = (1. / N) / std * (N * dx_hat - dx_hat.sum(axis=0) - x_hat * np.sum(dx_hat * x_hat, axis=0))
    return dx, dgamma, dbeta


def dropout_forward(x, dropout_param):
    p, mode = dropout_param["p"], dropout_param["mode"]
    if mode == "train":
        # the course draws np.random.rand(*x.shape) < p here; a gradient check needs one fixed mask
        mask = dropout_param["mask"] / p
        out = x * mask
    elif mode == "test":
        mask = None
        out = x
    cache = (dropout_param, mask)
    out = out.astype(x.dtype, copy=False)
    return out, cache


def dropout_backward(dout, cache):
    dropout_param, mask = cache
    mode = dropout_param["mode"]
    if mode == "train":
        dx = dout * mask
    elif mode == "test":
        dx = dout
    return dx


def softmax_loss(x, y):
    shifted_logits = x - np.max(x, axis=1, keepdims=True)
    Z = np.sum(np.exp(shifted_logits), axis=1, keepdims=True)
    log_probs = shifted_logits - np.log(Z)
    probs = np.exp(log_probs)
    N = x.shape[0]
    loss = -np.sum(log_probs[np.arange(N), y]) / N
    dx = probs.copy()
    dx[np.arange(N), y] -= 1
    dx /= N
    return loss, dx


# --- layer_utils.py -------------------------------------------------------------------------------

def affine_bn_relu_forward(x, w, b, gamma, beta, bn_param):
    a, fc_cache = affine_forward(x, w, b)
    a_bn, bn_cache = batchnorm_forward(a, gamma, beta, bn_param)
    out, relu_cache = relu_forward(a_bn)
    cache = (fc_cache, bn_cache, relu_cache)
    return out, cache


def affine_bn_relu_backward(dout, cache):
    fc_cache, bn_cache, relu_cache = cache
    da_bn = relu_backward(dout, relu_cache)
    da, dgamma, dbeta = batchnorm_backward_alt(da_bn, bn_cache)
    dx, dw, db = affine_backward(da, fc_cache)
    return dx, dw, db, dgamma, dbeta


# --- fc_net.py ------------------------------------------------------------------------------------

class FullyConnectedNet(object):
    """{affine - [batch/layer norm] - relu - [dropout]} x (L - 1) - affine - softmax"""

    def __init__(self, hidden_dims, input_dim=3 * 32 * 32, num_classes=10, dropout_keep_ratio=1,
                 normalization=None, reg=0.0, weight_scale=1e-2, dtype=np.float32, seed=None,
                 dropout_masks=None):
        self.normalization = normalization
        self.use_dropout = dropout_keep_ratio != 1
        self.reg = reg
        self.num_layers = 1 + len(hidden_dims)
        self.dtype = dtype
        self.params = {}

        rng = np.random.RandomState(seed)
        dims = [input_dim] + list(hidden_dims) + [num_classes]
        for i in range(self.num_layers):
            self.params["W%d" % (i + 1)] = weight_scale * rng.randn(dims[i], dims[i + 1])
            self.params["b%d" % (i + 1)] = np.zeros(dims[i + 1])
            if self.normalization == "batchnorm" and i < self.num_layers - 1:
                self.params["gamma%d" % (i + 1)] = np.ones(dims[i + 1])
                self.params["beta%d" % (i + 1)] = np.zeros(dims[i + 1])

        self.dropout_params = []
        if self.use_dropout:
            self.dropout_params = [{"mode": "train", "p": dropout_keep_ratio, "mask": mask}
                                   for mask in dropout_masks]

        self.bn_params = []
        if self.normalization == "batchnorm":
            self.bn_params = [{"mode": "train"} for i in range(self.num_layers - 1)]

        for k, v in self.params.items():
            self.params[k] = v.astype(dtype)

    def loss(self, X, y=None):
        X = X.astype(self.dtype)
        mode = "test" if y is None else "train"
        if self.use_dropout:
            for dropout_param in self.dropout_params:
                dropout_param["mode"] = mode
        if self.normalization == "batchnorm":
            for bn_param in self.bn_params:
                bn_param["mode"] = mode

        caches = {}
        out = X
        for i in range(1, self.num_layers):
            W, b = self.params["W%d" % i], self.params["b%d" % i]
            gamma, beta = self.params["gamma%d" % i], self.params["beta%d" % i]
            out, caches["layer%d" % i] = affine_bn_relu_forward(out, W, b, gamma, beta, self.bn_params[i - 1])
            if self.use_dropout:
                out, caches["dropout%d" % i] = dropout_forward(out, self.dropout_params[i - 1])
        L = self.num_layers
        scores, caches["layer%d" % L] = affine_forward(out, self.params["W%d" % L], self.params["b%d" % L])

        if mode == "test":
            return scores

        loss, grads = 0.0, {}
        loss, dscores = softmax_loss(scores, y)
        for i in range(1, L + 1):
            W = self.params["W%d" % i]
            loss += 0.5 * self.reg * np.sum(W * W)

        dout, grads["W%d" % L], grads["b%d" % L] = affine_backward(dscores, caches["layer%d" % L])
        grads["W%d" % L] += self.reg * self.params["W%d" % L]
        for i in range(L - 1, 0, -1):
            if self.use_dropout:
                dout = dropout_backward(dout, caches["dropout%d" % i])
            dout, dw, db, dgamma, dbeta = affine_bn_relu_backward(dout, caches["layer%d" % i])
            grads["W%d" % i] = dw + self.reg * self.params["W%d" % i]
            grads["b%d" % i] = db
            grads["gamma%d" % i] = dgamma
            grads["beta%d" % i] = dbeta
        return loss, grads


def make_model(seed=None):
    return FullyConnectedNet(HIDDEN_DIMS, input_dim=INPUT_DIM, num_classes=NUM_CLASSES,
                             dropout_keep_ratio=KEEP, normalization="batchnorm", reg=REG,
                             weight_scale=5e-2, seed=seed, dropout_masks=DROPOUT_MASKS)


MODEL = make_model()  # the architecture; its parameters are replaced at every call


# --- the seed's signatures ------------------------------------------------------------------------

def forward(X, Y, parameters):
    MODEL.params = parameters
    loss, grads = MODEL.loss(X, Y)
    return loss, grads


def backward(X, Y, cache):
    grads = cache
    return {"d" + name: grad for name, grad in grads.items()}


def backward_b3_x1_05(X, Y, cache):
    gradients = backward(X, Y, cache)
    gradients["db3"] = gradients["db3"] * np.float32(1.05)
    return gradients


def case_bn_dropout():
    """As the notebook builds its check: random X and integer y, a fresh model's parameters."""
    rng = np.random.RandomState(231)
    X = rng.randn(N, INPUT_DIM)
    y = rng.randint(NUM_CLASSES, size=(N,))
    model = make_model(seed=231)
    return X, y, model.params


EXPECTED = {
    ("case_bn_dropout", "backward"): [],
    ("case_bn_dropout", "backward_b3_x1_05"): ["b3"],
}
DIAGNOSES = {"backward_b3_x1_05": {"b3": "db3 is 1.05× the numerical gradient"}}
