"""A float64 model is never called float32: a sigmoid saturating to within 1e-8 of 1.0 makes the cost's
round-off relative to |J| as large as float32 arithmetic's (6e-10 here), but its cost still moves at
steps float32 cannot hold. It used to be checked "in float32" (float32's looser threshold)."""

import pytest

from gradjob.executors.serial import SerialExecutor
from gradjob.report import text as report
from gradjob.run import job
from gradjob.types import Request

SATURATED = '''
import numpy as np


def forward(X, Y, parameters):
    A = 1 / (1 + np.exp(-(parameters["W"] @ X + parameters["b"])))   # 1 - 1e-8: a well-fitted model
    cost = -np.mean(Y * np.log(A) + (1 - Y) * np.log(1 - A))
    return cost, (A,)


def backward(X, Y, cache, scale=1.0):
    A, = cache
    dZ = (A - Y) / Y.shape[1]
    return {"dW": scale * (dZ @ X.T), "db": dZ.sum(axis=1, keepdims=True)}


def backward_W_x1_01(X, Y, cache):
    return backward(X, Y, cache, 1.01)


def case():
    X = np.array([[3.0, 2.5, -3.1], [2.9, 3.2, -2.7]])
    Y = np.array([[1.0, 1.0, 0.0]])
    return X, Y, {"W": np.array([[3.0, 3.0]]), "b": np.array([[0.3]])}
'''


@pytest.mark.parametrize("backward, failing", [("backward", []), ("backward_W_x1_01", ["W"])])
def test_a_saturated_float64_sigmoid_is_checked_in_float64(tmp_path, backward, failing):
    (tmp_path / "saturated.py").write_text(SATURATED)
    path = str(tmp_path / "saturated.py")
    outcome = job.run(Request(model=path, forward="forward", backward=backward, case=f"{path}:case",
                              store=str(tmp_path / "s.zarr")), executor=SerialExecutor)
    assert (outcome.precision.checked, outcome.precision.model, outcome.precision.note) == ("float64", "float64", None)
    assert outcome.reduction.failing == failing, report.to_text(outcome)
    assert report.exit_code(outcome) == (1 if failing else 0)
