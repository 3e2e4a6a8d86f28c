"""The op registry (``gradjob.trace.ops``): one test row per registered operation (the traced
cost equals the real forward's at θ, the replay equals the forward under perturbations), README's
supported list made from it (the trace subpackage's imports: ``tests/test_structure.py``)."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_trace import check, line_of, load

from gradjob.model.layout import Layout
from gradjob.trace import Replay, Untraceable
from gradjob.trace.ops import FUNCTIONS, OPS, supported

ROOT = Path(__file__).resolve().parents[2]

# Each registered op: a forward using it on parameters W (4, 3), V (2, 3, 4), v (3,), X (3, 5).
ROWS = {
    "param": "np.sum(p['v'])",
    "matmul": "np.sum(np.dot(p['W'], X)) + np.sum(np.ones(4) @ p['W']) + np.sum(p['W'] @ np.arange(3.0))",
    "matmul_nd": "np.sum(np.tanh(p['V'] @ p['V'].transpose(0, 2, 1)) @ p['V']) + np.sum(p['V'] @ p['W'])",
    "elementwise": "np.sum(np.where(p['W'] > 0, np.exp(p['W']), np.clip(p['W'], -0.5, 0.5)) * 2 - 1)",
    "astype": "np.sum(p['W'].astype(np.float32).astype(np.float64) * np.int64(p['W'] > 0))",
    "copy": "np.sum(np.copy(p['W']) * p['W'].flatten().reshape(4, 3))",
    "transpose": "np.sum(p['W'].T @ p['W']) + np.sum(np.transpose(p['V'], (2, 0, 1))[0])",
    "reshape": "np.sum(np.square(p['V'].reshape(6, 4)[1:])) + np.sum(np.expand_dims(p['v'], 0) ** 3)",
    "reduce": "np.sum(np.max(p['W'], axis=0) * np.mean(p['W'], axis=1, keepdims=True))",
    "var": "np.var(p['W'], axis=0).sum() + np.std(p['v']) + np.linalg.norm(p['W'])",
    "index": "np.sum(p['W'][np.arange(3), [0, 2, 1]] ** 2) + p['W'][1:, ::2].sum()",
    "shape": "np.sum(p['W'] * np.ones_like(p['W']) * len(p['v'])) + p['v'].shape[0] * np.sum(p['v'])",
    "assigned": "beside(p)",
    "setitem": "stored(p)",
    "ufunc_at": "scattered(p)",
    "constant": "stored(p)",
    "stack": "np.sum(np.stack([p['W'], p['W'] ** 2, np.ones((4, 3))], axis=1) @ p['v'])",
    "pad": "np.sum(np.pad(p['W'], ((1, 0), (2, 1)), constant_values=0.5) ** 3) + np.sum(np.pad(p['v'], 2, mode='edge') ** 2)",
    "einsum": "np.sum(np.einsum('bij,bkj->bik', p['V'], p['V']) ** 2) + np.einsum('ij,j->', p['W'], p['v'])",
    "nan_to_num": "np.sum(np.nan_to_num(-X[:, :4].T * np.log(p['W']) - (1 - X[:, :4].T) * np.log(1 - p['W'])))",
    "concatenate": "np.sum(np.tanh(np.concatenate([p['W'], X.T, p['W'] ** 2], axis=0)) @ p['v'])",
}

HELPERS = """
import numpy as np


def beside(p):
    grad = p['W'] * 2
    top = grad[:2]
    grad[0] = 0  # a gradient written beside the loss: its view top is recorded as assigned, never replayed
    return np.sum(p['W'] ** 2)


def stored(p):
    out = np.zeros((4, 3))
    for i in range(4):
        out[i] = np.tanh(p['W'][i])  # into a plain array: its stand-in starts as a constant
    h = p['W'] * 2
    h[1:, 0] += p['v']  # into a traced one
    return np.sum(out ** 2) + np.sum(h ** 3)


def scattered(p):
    dE = np.zeros((5, 3))
    np.add.at(dE, [0, 2, 0, 4], p['W'])
    return np.sum(np.tanh(dE))
"""


def parameters(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((3, 5))
    return X, {"W": rng.standard_normal((4, 3)), "V": 0.5 * rng.standard_normal((2, 3, 4)),
               "v": rng.standard_normal(3)}


def test_every_registered_op_has_a_row():
    assert set(ROWS) == set(OPS)


@pytest.mark.parametrize("op", sorted(OPS))
def test_registered_op_replays_as_the_forward(op):
    namespace = load(HELPERS + f"\n\ndef forward(X, Y, p):\n    return {ROWS[op]}\n")
    X, params = parameters()
    replay = check(namespace["forward"], X, None, params)
    assert op in {node.op for node in replay.graph.nodes}  or OPS[op].replay is None


def test_readme_lists_the_registry():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- ops:begin -->\n(.*?)\n<!-- ops:end -->", readme, re.S)
    assert block is not None and block.group(1) == supported()


def test_python_m_gradjob_trace_prints_the_list_without_a_warning():
    """README's list is printed by ``python -m gradjob.trace``; nothing on stderr (``-m`` of a module
    the package already imported would warn that it runs twice)."""
    run = subprocess.run([sys.executable, "-m", "gradjob.trace"], capture_output=True, text=True, timeout=120)
    assert (run.returncode, run.stderr, run.stdout) == (0, "", supported() + "\n")


def test_functions_table_is_the_registry():
    assert all(callable(rule) for rule in FUNCTIONS.values())
    assert sum(len(op.functions) for op in OPS.values()) == len(FUNCTIONS)  # no function declared twice


COST_SOURCE = """
import numpy as np


def as_float64(X, Y, p):
    return np.float64(np.sum(np.tanh(p['W'] @ X)))


def as_float32(X, Y, p):
    return np.float32(np.sum(np.tanh(p['W'] @ X)))  # narrowed: refused


def frozen(X, Y, p):
    scale = np.float64(np.sum(p['W']))  # mid-forward: refused
    return np.sum(np.tanh(p['W'] @ X)) * scale
"""


def test_cost_returned_as_np_float64_stays_traced():
    X, params = parameters()
    replay = check(load(COST_SOURCE)["as_float64"], X, None, params)
    assert replay.graph.nodes[replay.graph.cost].op == "reduce"


CONVERTING = ("converting a traced array to a plain NumPy array (np.asarray, np.array, storing it into an array, "
              "or a plain array's method such as X.dot(W): write np.dot(X, W) or X @ W) is not supported")
FLOAT = "float() of a traced value is not supported, but on the cost the forward returns"


@pytest.mark.parametrize("name, marker, message", [("as_float32", "narrowed", CONVERTING),
                                                   ("frozen", "mid-forward", FLOAT)])
def test_np_float64_of_a_traced_value_is_refused_never_frozen(name, marker, message):
    X, params = parameters()
    layout = Layout.of(params)
    with pytest.raises(Untraceable) as refused:
        Replay.of(load(COST_SOURCE)[name], X, None, layout, layout.flatten(params))
    assert str(refused.value) == f"{message} (model.py:{line_of(COST_SOURCE, marker)})"


@pytest.mark.parametrize("cost", [
    "np.sum(np.tanh(np.arange(4.0) @ np.maximum(p['W'] @ X, 0)))",
    "np.sum(np.dot(np.arange(4.0), np.tanh(p['W'] @ X)) ** 2)",
    "np.sum(np.tanh(np.tanh(p['W'] @ X) @ np.arange(5.0)))",
])
def test_constant_vector_times_a_traced_matrix(cost):
    """A row's change of ``W @ X`` reaches a constant 1-D vector's product as a rank-one update."""
    X, params = parameters()
    check(load(f"import numpy as np\n\n\ndef forward(X, Y, p):\n    return {cost}\n")["forward"], X, None, params)
