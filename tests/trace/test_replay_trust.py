"""Issue 17, points 5 and 9: the traced path is never trusted where it was found wrong, never leaks a
value at θ as a constant, and gives an element the same numbers in any batch, so in any chunking."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import zarr

from gradjob.executors.serial import SerialExecutor
from gradjob.run import job, preflight
from gradjob.trace import Replay, ops
from gradjob.types import Request

EXAMPLES = Path(__file__).resolve().parents[2] / "pipeline" / "examples"
FAMILIES = Path(__file__).resolve().parents[1] / "families"
SEED_STYLE = dict(model=str(EXAMPLES / "seed_style.py"), case="random", layers=(20, 16, 12, 1), examples=33)


def test_an_element_costs_the_same_to_the_last_bit_in_any_batch():
    """Alone, in pairs, in batches of 3, 8, 21 and all at once (other rows pinned beside it, other
    examples changed by its neighbours): the same bits for every W1 element, on both sides."""
    prepared = preflight.prepare(Request(**SEED_STYLE))
    replay = Replay.of(prepared.model.forward, prepared.case.X, prepared.case.Y, prepared.layout, prepared.theta)
    theta = prepared.theta
    index = np.arange(prepared.layout.n_parameters)
    for sign in (1, -1):
        values = theta + sign * 1e-6 * np.maximum(1, np.abs(theta))
        alone = np.array([replay.costs(index[k:k + 1], values[k:k + 1])[0] for k in index])
        for size in (2, 3, 8, 21, index.size):
            batched = np.concatenate([replay.costs(index[s:s + size], values[s:s + size])
                                      for s in range(0, index.size, size)])
            assert np.array_equal(batched, alone), (sign, size, np.flatnonzero(batched != alone))


@pytest.mark.parametrize("epsilon", [None, 1e-7])
def test_chunk_sizes_7_and_14_give_bit_identical_gradapprox_on_the_traced_path(epsilon, tmp_path):
    arrays = {}
    for size in (7, 14):
        outcome = job.run(Request(**SEED_STYLE, chunk_size=size, epsilon=epsilon, store=str(tmp_path / f"{size}.zarr")),
                          executor=SerialExecutor)
        assert outcome.evaluator == "traced"
        arrays[size] = zarr.open_group(str(tmp_path / f"{size}.zarr"), mode="r")["gradapprox"][:]
    assert np.array_equal(arrays[7], arrays[14]), np.flatnonzero(arrays[7] != arrays[14])


def _seed_style():
    from gradjob.examples import seed_style

    rng = np.random.default_rng(3)
    layers = (4, 5, 3, 1)
    X, Y = rng.standard_normal((4, 9)), (rng.random((1, 9)) < 0.5).astype(float)
    parameters = {}
    for k in range(1, len(layers)):
        parameters[f"W{k}"] = rng.standard_normal((layers[k], layers[k - 1])) * 0.7
        parameters[f"b{k}"] = 2 + 0.1 * rng.standard_normal((layers[k], 1))  # every ReLU on: no zero gradient
    return seed_style, X, Y, parameters


def test_a_ladder_is_evaluated_by_the_forward_not_by_a_replay_found_wrong(monkeypatch):
    """dW2 is 1.5× the true gradient. The workers' replay is wrong on W2 exactly as if that bug were
    right: the chunk check sees it and the forward evaluates the chunk, whose W2 elements become
    suspects; their ladders must come from the forward too, or "agrees" would pass W2."""
    import gradjob
    from gradjob.run import tasks

    seed_style, X, Y, parameters = _seed_style()
    grads = seed_style.backward_propagation_n(X, Y, seed_style.forward_propagation_n(X, Y, parameters)[1])

    def buggy(X, Y, cache):
        out = seed_style.backward_propagation_n(X, Y, cache)
        return {**out, "dW2": 1.5 * out["dW2"]}

    built = tasks._Workspace.__init__

    def wrong_replay(self, context):  # what a replay with hidden state would give: J + ½·dW2·Δ on W2
        built(self, context)
        replay, theta, w2 = self.costs, self.theta.copy(), self.layout.tensors[2]
        extra = 0.5 * grads["dW2"].ravel()

        def costs(indices, values, sign=""):
            out = replay(indices, values, sign)
            inside = (indices >= w2.offset) & (indices < w2.stop)
            k = np.asarray(indices)[inside]
            out[inside] += extra[k - w2.offset] * (np.asarray(values)[inside] - theta[k])
            return out

        self.costs = costs

    monkeypatch.setattr(tasks._Workspace, "__init__", wrong_replay)
    outcome = gradjob.check(seed_style.forward_propagation_n, buggy, X, Y, parameters, chunk_size=5)
    assert outcome.evaluator == "traced"
    assert any("the traced fast path disagreed with the forward" in note for note in outcome.notes)
    assert outcome.reduction.failing == ["W2"]
    w2 = next(t for t in outcome.reduction.tensors if t.name == "W2")
    assert w2.diagnosis == "dW2 is 1.50× the numerical gradient"


def test_a_ladder_does_not_use_the_switches_of_a_replay_found_wrong_in_its_chunk(monkeypatch, tmp_path):
    """dW2 is 1.5× the true gradient. The workers' replay is wrong on W2 (the chunk check sees it and the
    forward evaluates W2's chunks) and so are its switches: they say two switches flip at every rung,
    which reads as a kink at θ where several switches meet and would leave every W2 suspect out (W2
    passed). Where the replay was found wrong its switches are not used: the slopes find W2 wrong."""
    import gradjob
    from gradjob.run import tasks

    seed_style, X, Y, parameters = _seed_style()
    grads = seed_style.backward_propagation_n(X, Y, seed_style.forward_propagation_n(X, Y, parameters)[1])

    def buggy(X, Y, cache):
        out = seed_style.backward_propagation_n(X, Y, cache)
        return {**out, "dW2": 1.5 * out["dW2"]}

    built = tasks._Workspace.__init__

    def wrong_replay(self, context):
        built(self, context)
        replay, flips, theta, w2 = self.costs, self.flips, self.theta.copy(), self.layout.tensors[2]
        extra = 0.5 * grads["dW2"].ravel()

        def costs(indices, values, sign=""):
            out = replay(indices, values, sign)
            inside = (indices >= w2.offset) & (indices < w2.stop)
            k = np.asarray(indices)[inside]
            out[inside] += extra[k - w2.offset] * (np.asarray(values)[inside] - theta[k])
            return out

        def wrong_flips(indices, values):
            out = np.asarray(flips(indices, values)).copy()
            out[(np.asarray(indices) >= w2.offset) & (np.asarray(indices) < w2.stop)] = 2
            return out

        self.costs, self.flips = costs, wrong_flips

    monkeypatch.setattr(tasks._Workspace, "__init__", wrong_replay)
    store = tmp_path / "check.zarr"
    outcome = gradjob.check(seed_style.forward_propagation_n, buggy, X, Y, parameters, chunk_size=5, store=str(store))
    assert outcome.evaluator == "traced"
    assert sum("the traced fast path disagreed with the forward" in note for note in outcome.notes) == 3
    assert zarr.open_group(str(store), mode="r")["done"][:].tolist() == [1] * 5 + [2] * 3 + [1] * 2
    assert outcome.reduction.failing == ["W2"]
    w2 = next(t for t in outcome.reduction.tensors if t.name == "W2")
    assert (w2.suspects.kink, w2.suspects.wrong) == (0, 15)
    assert w2.diagnosis == "dW2 is 1.50× the numerical gradient"


def test_validation_covers_every_tensor_on_both_sides_one_element_tensors_included():
    """A replay wrong only below θ and only on b3 (one element among 47) is caught."""
    from gradjob.model.layout import Layout
    from gradjob.run import evaluators

    seed_style, X, Y, parameters = _seed_style()
    layout = Layout.of(parameters)
    theta = layout.flatten(parameters)
    model = type("M", (), {"forward": staticmethod(seed_style.forward_propagation_n)})
    replay = evaluators.build("traced", model, layout, X, Y, theta.copy())
    real = evaluators.build("forward", model, layout, X, Y, theta.copy())
    assert evaluators.mismatch(replay, real, layout, theta, "float64", np.arange(layout.n_parameters)) is None
    b3 = layout.tensors[-1].offset

    def wrong_below(indices, values, sign=""):
        out = replay(indices, values, sign)
        out[(np.asarray(indices) == b3) & (np.asarray(values) < theta[b3])] += 1e-6
        return out

    problem = evaluators.mismatch(wrong_below, real, layout, theta, "float64", np.arange(layout.n_parameters))
    assert problem is not None and problem.endswith("at b3[0, 0] (hidden state, arithmetic in a lower precision "
                                                    "inside the forward, or an operation that depends on call order?)")


LEAKS = {
    "format": ("scale = float(f\"{np.sum(Z * Z)}\")",
               "a traced value as text (print, str(), repr(), f-strings, format) is not supported: its value at θ "
               "could come back as a constant (model.py:5)"),
    "str": ("scale = float(str(np.sum(Z * Z)))",
            "a traced value as text (print, str(), repr(), f-strings, format) is not supported: its value at θ "
            "could come back as a constant (model.py:5)"),
    "asarray": ("scale = np.nansum(np.asarray(Z * Z, dtype=np.float64))",
                "np.asarray of a traced array is not supported: it would be a plain array holding its value at θ "
                "(model.py:5)"),
}

MODEL = """import numpy as np

def forward(X, Y, p):
    Z = p["W"] @ X
    {leak}
    return np.mean(Z) * scale + np.sum(p["b"] ** 2), (X, p)

def backward(X, Y, cache):
    X, p = cache
    Z = p["W"] @ X
    dZ = np.full(Z.shape, np.sum(Z * Z) / Z.size) + 2 * Z * np.mean(Z)
    return {{"dW": dZ @ X.T, "db": 2 * p["b"]}}

def case():
    rng = np.random.default_rng(0)
    return rng.standard_normal((3, 5)), np.zeros((1, 5)), {{"W": rng.standard_normal((2, 3)),
                                                           "b": rng.standard_normal((2, 1))}}
"""


@pytest.mark.parametrize("leak", sorted(LEAKS))
def test_a_value_at_theta_leaked_through_text_or_a_plain_array_is_refused_not_frozen(leak, gradjob, write_model):
    path = write_model(MODEL.format(leak=LEAKS[leak][0]))
    run = gradjob("submit", "--model", str(path), "--forward", "forward", "--backward", "backward",
                  "--case", f"{path}:case", "--workers", "1")
    assert run.exit_code == 0, run.stdout + run.stderr
    assert (f"note: the traced fast path is off for this model: {LEAKS[leak][1]}; each evaluation calls the forward"
            in run.stderr), run.stderr


VECTOR_AT_MATRIX = """import numpy as np

V = np.array([1.0, -2.0])

def forward(X, Y, p):
    s = V @ (p["W"] @ X)
    return np.sum(s * s) + np.sum(p["b"]), (X, p)

def backward(X, Y, cache):
    X, p = cache
    s = V @ (p["W"] @ X)
    return {"dW": np.outer(V, 2 * s) @ X.T, "db": np.ones_like(p["b"])}

def case():
    rng = np.random.default_rng(0)
    return rng.standard_normal((3, 5)), np.zeros((1, 5)), {"W": rng.standard_normal((2, 3)),
                                                          "b": rng.standard_normal((1, 1))}
"""


def failing_rule(replay, node, *args):
    raise ValueError(f"no rule for {node.op} here")


def test_an_exception_inside_the_replay_falls_back_to_the_forward_with_a_note(gradjob, write_model, monkeypatch):
    """A replay rule that raises (here the matmul's, replaced: the vector-matrix product whose bug
    this test first caught is fixed) is a disagreement; the forward decides."""
    monkeypatch.setitem(ops.OPS, "matmul", dataclasses.replace(ops.OPS["matmul"], replay=failing_rule))
    path = write_model(VECTOR_AT_MATRIX)
    run = gradjob("submit", "--model", str(path), "--forward", "forward", "--backward", "backward",
                  "--case", f"{path}:case", "--workers", "1")
    assert run.exit_code == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    assert ("note: the traced fast path is off for this model: the replay raised ValueError: no rule for matmul "
            "here; each evaluation calls the forward") in run.stderr, run.stderr
