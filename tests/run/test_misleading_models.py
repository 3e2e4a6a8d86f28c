"""Models whose check would mislead, written as users write them: each is refused in one line
rather than given a verdict.

- a forward or backward that writes into the parameter arrays it was given (``np.clip(W1, …,
  out=W1)``, ``W[0] = 0``, ``update_parameters`` folded into the backward, cs231n's
  ``self.params['W1'] *= …``): exit 2, the tensors it changed named, nothing stored.
- a float64 forward whose backward returns float32 arrays: still checked in float64 at float64's
  threshold (a 0.2 % error in dW2 passed when the gradients' dtype set the check's), the
  gradients' own rounding allowed for element by element, so a correct one passes.
- a forward whose repeated calls at the same θ give different costs once it has run a while (a
  dropout mask redrawn every N calls): J(θ) is asked again after calibrating, after each chunk and
  after each batch of ladders; a change ends the job, exit 3, one line saying when.
"""

import numpy as np
import pytest
from conftest import family

import gradjob
from gradjob.errors import InputError

# A DL-Specialization-style two-layer network (parameters dict, cache tuple), and the ways it is
# written that change the arrays it is given.
WRITES = '''
import numpy as np


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def forward_propagation(X, Y, parameters):
    W1, b1, W2, b2 = parameters["W1"], parameters["b1"], parameters["W2"], parameters["b2"]
    Z1 = np.dot(W1, X) + b1
    A1 = np.maximum(0, Z1)
    Z2 = np.dot(W2, A1) + b2
    A2 = sigmoid(Z2)
    m = X.shape[1]
    cost = -np.sum(Y * np.log(A2) + (1 - Y) * np.log(1 - A2)) / m
    return cost, (X, Y, Z1, A1, W1, b1, Z2, A2, W2, b2)


def forward_clips(X, Y, parameters):  # keeps the weights small, in place
    np.clip(parameters["W1"], -0.3, 0.3, out=parameters["W1"])
    return forward_propagation(X, Y, parameters)


def forward_zeroes(X, Y, parameters):
    W = parameters["W1"]
    W[0] = 0.0
    return forward_propagation(X, Y, parameters)


def backward_propagation(X, Y, cache):
    X, Y, Z1, A1, W1, b1, Z2, A2, W2, b2 = cache
    m = X.shape[1]
    dZ2 = A2 - Y
    dW2 = dZ2 @ A1.T / m
    db2 = dZ2.sum(axis=1, keepdims=True) / m
    dZ1 = (W2.T @ dZ2) * (Z1 > 0)
    dW1 = dZ1 @ X.T / m
    db1 = dZ1.sum(axis=1, keepdims=True) / m
    return {"dW1": dW1, "db1": db1, "dW2": dW2, "db2": db2}


def backward_updates(X, Y, cache):  # update_parameters folded into backprop
    grads = backward_propagation(X, Y, cache)
    W1, W2 = cache[4], cache[8]
    W1 -= 1.2 * grads["dW1"]
    W2 -= 1.2 * grads["dW2"]
    return grads


def case():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((3, 8))
    Y = (rng.random((1, 8)) > 0.5).astype(float)
    return X, Y, {"W1": 0.5 * rng.standard_normal((4, 3)), "b1": 0.1 * rng.standard_normal((4, 1)),
                  "W2": 0.5 * rng.standard_normal((1, 4)), "b2": np.zeros((1, 1))}
'''

WRITE_ADVICE = ("so a check of it would mean nothing; compute new arrays instead (W1 = W1 - …, not W1 -= …, "
                "W1[i] = … or out=W1)")


@pytest.mark.parametrize("forward, backward, said", [
    ("forward_clips", "backward_propagation", "the forward writes into the parameter arrays it is given (W1 changed: "
                                              "W1[0, 1] from 0.441269 to 0.3), "),
    ("forward_zeroes", "backward_propagation", "the forward writes into the parameter arrays it is given (W1 changed: "
                                               "W1[0, 0] from -0.14586 to 0), "),
    ("forward_propagation", "backward_updates", "the backward writes into the parameter arrays it is given (W1, W2 "
                                                "changed: W1[0, 0] from -0.14586 to -0.21317), "),
])
def test_a_model_writing_into_its_parameters_is_refused(gradjob, write_model, tmp_path, forward, backward, said):
    model = write_model(WRITES)
    assert gradjob("submit", model, "--forward", "forward_propagation", "--backward", "backward_propagation",
                   "--case", f"{model}:case", "--store", "fine.zarr").exit_code == 0  # written as it should be
    run = gradjob("submit", model, "--forward", forward, "--backward", backward, "--case", f"{model}:case",
                  "--store", "s.zarr")
    assert (run.exit_code, run.stdout, run.stderr) == (2, "", f"gradjob: error: {said}{WRITE_ADVICE}\n")
    assert not (tmp_path / "s.zarr").exists()


def test_check_loss_whose_loss_scales_its_params_in_place_is_refused(private_tmp):
    cs = family("cs231n_style")
    X, y, _ = cs.case_bn_dropout()
    model = cs.make_model(seed=231)  # float32: refused in float64 and again in float32
    own = {k: v.copy() for k, v in model.params.items()}

    def loss(X, y=None):
        model.params["W2"] *= np.float32(1.001)  # a "learning rate warm-up" left in the loss
        return model.loss(X, y)

    with pytest.raises(InputError) as raised:
        gradjob.check_loss(loss, model.params, X, y)
    assert str(raised.value).startswith("the forward writes into the parameter arrays it is given (W2 changed: W2[0, 0] "
                                        "from ")
    assert str(raised.value).endswith(WRITE_ADVICE)
    assert all(np.array_equal(model.params[k], v) for k, v in own.items())  # the caller's arrays as they were


# A float64 forward whose backward hands float32 arrays to its optimiser; ``backward`` has dW2 0.2 % off.
FLOAT32_GRADIENTS = '''
import numpy as np


def forward(X, Y, parameters):
    W1, b1, W2, b2 = parameters["W1"], parameters["b1"], parameters["W2"], parameters["b2"]
    A1 = np.tanh(W1 @ X + b1)
    A2 = 1 / (1 + np.exp(-(W2 @ A1 + b2)))
    m = X.shape[1]
    cost = -np.sum(Y * np.log(A2) + (1 - Y) * np.log(1 - A2)) / m
    return cost, (X, Y, A1, W2, A2)


def backward(X, Y, cache, scale=1.002):
    X, Y, A1, W2, A2 = cache
    m = X.shape[1]
    dZ2 = A2 - Y
    dW2 = scale * (dZ2 @ A1.T) / m
    db2 = dZ2.sum(axis=1, keepdims=True) / m
    dZ1 = (W2.T @ dZ2) * (1 - A1 ** 2)
    dW1 = dZ1 @ X.T / m
    db1 = dZ1.sum(axis=1, keepdims=True) / m
    return {k: v.astype(np.float32) for k, v in {"dW1": dW1, "db1": db1, "dW2": dW2, "db2": db2}.items()}


def backward_ok(X, Y, cache):
    return backward(X, Y, cache, scale=1.0)


def case():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((3, 10))
    Y = (rng.random((1, 10)) > 0.5).astype(float)
    return X, Y, {"W1": rng.standard_normal((4, 3)), "b1": 0.1 * rng.standard_normal((4, 1)),
                  "W2": rng.standard_normal((1, 4)), "b2": np.zeros((1, 1))}


def case32():
    X, Y, p = case()
    return X.astype(np.float32), Y.astype(np.float32), {k: v.astype(np.float32) for k, v in p.items()}
'''


@pytest.mark.parametrize("step", [[], ["--epsilon", "1e-7"]], ids=["automatic", "epsilon"])
@pytest.mark.parametrize("case, precision", [("case", "checked in float64"),
                                             ("case32", "checked in float64; parameters are float32")])
def test_float32_gradients_of_a_float64_forward_are_judged_in_float64(gradjob, write_model, case, precision, step):
    model = write_model(FLOAT32_GRADIENTS)
    common = ["--forward", "forward", "--case", f"{model}:{case}", *step]
    wrong = gradjob("submit", model, "--backward", "backward", *common, "--store", "wrong.zarr")
    assert wrong.exit_code == 1, wrong.stdout  # passed as "checked in float32", threshold 1e-3
    assert wrong.stdout.startswith("FAIL  backprop disagrees with the numerical gradient: difference 6.87")
    assert wrong.stdout.split("\n")[0].endswith("; wrong: W2")
    assert f"  precision {precision}\n" in wrong.stdout and "dW2 is 1.002× the numerical gradient" in wrong.stdout
    right = gradjob("submit", model, "--backward", "backward_ok", *common, "--store", "right.zarr")
    assert right.exit_code == 0, right.stdout  # its float32 rounding is not an error
    assert right.stdout.startswith("PASS  ") and f"  precision {precision}\n" in right.stdout


# A forward redrawing its dropout mask every `every` calls (an "epoch"): deterministic for its first
# calls, so the two at θ before the job agree. --no-fast --chunk-size 5 on 21 parameters: calibrating
# makes about 250 calls, the chunks about 50 more and the ladders of a wrong dW2 about 140 more.
COUNTER = '''
import numpy as np

KEEP = 0.8
_rng = np.random.default_rng(0)
_calls = {}


def _forward(X, Y, parameters, every):
    W1, b1, W2, b2 = parameters["W1"], parameters["b1"], parameters["W2"], parameters["b2"]
    calls, mask = _calls.get(every, (0, None))
    if calls % every == 0:  # a fresh dropout mask every `every` iterations
        mask = (_rng.random((4, X.shape[1])) < KEEP) / KEEP
    _calls[every] = calls + 1, mask
    A1 = np.tanh(W1 @ X + b1) * mask
    A2 = 1 / (1 + np.exp(-(W2 @ A1 + b2)))
    m = X.shape[1]
    cost = -np.sum(Y * np.log(A2) + (1 - Y) * np.log(1 - A2)) / m
    return cost, (X, Y, A1, W2, A2, mask)


def forward_100(X, Y, parameters):
    return _forward(X, Y, parameters, 100)


def forward_270(X, Y, parameters):
    return _forward(X, Y, parameters, 270)


def forward_350(X, Y, parameters):
    return _forward(X, Y, parameters, 350)


def backward(X, Y, cache):
    X, Y, A1, W2, A2, mask = cache
    m = X.shape[1]
    dZ2 = A2 - Y
    T = A1 / np.where(mask == 0, 1, mask)
    dZ1 = (W2.T @ dZ2) * mask * (1 - T ** 2)
    return {"dW1": dZ1 @ X.T / m, "db1": dZ1.sum(axis=1, keepdims=True) / m, "dW2": dZ2 @ A1.T / m,
            "db2": dZ2.sum(axis=1, keepdims=True) / m}


def backward_dW2_doubled(X, Y, cache):
    grads = backward(X, Y, cache)
    grads["dW2"] = 2 * grads["dW2"]
    return grads


def case():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((3, 10))
    Y = (rng.random((1, 10)) > 0.5).astype(float)
    return X, Y, {"W1": rng.standard_normal((4, 3)), "b1": 0.1 * rng.standard_normal((4, 1)),
                  "W2": rng.standard_normal((1, 4)), "b2": np.zeros((1, 1))}
'''

COST_CHANGED = ("gradjob: error: the forward's cost changed between calls at the same parameters: J(θ) was "
                "1.085634629644326 and is {now} after {after}; a forward with hidden state (a call counter, a cache, "
                "a dropout mask redrawn, randomness without a fixed seed) gives no verdict: make it depend only on its "
                "arguments")


@pytest.mark.parametrize("forward, backward, now, after", [  # before: PASS (all "at kinks"), FAIL of a right
    ("forward_100", "backward", "1.1952236610249691", "calibrating"),  # backward, FAIL on changed costs
    ("forward_270", "backward", "1.1660899321549141", "evaluating chunk 1"),
    ("forward_350", "backward_dW2_doubled", "1.1660899321549141", "re-verifying W2[0, 0] and 3 more on smaller steps"),
])
def test_a_forward_whose_cost_at_theta_changes_stops_the_job(gradjob, write_model, forward, backward, now, after):
    model = write_model(COUNTER)
    run = gradjob("submit", model, "--forward", forward, "--backward", backward, "--case", f"{model}:case",
                  "--no-fast", "--chunk-size", "5", "--store", "s.zarr")
    assert (run.exit_code, run.stdout) == (3, "")
    assert run.stderr.splitlines()[-1] == COST_CHANGED.format(now=now, after=after)
