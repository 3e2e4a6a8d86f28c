"""The replay's contract with batches: a perturbation's cost is the same to the last bit whether it
is replayed alone or in any batch with others (so any chunking of a job gives the same numbers), and
equals the plain forward's at that θ to round-off.

Held to small random NumPy programs over the supported operations (``program``: elementwise ufuncs with
broadcasting and transposed operands, products, transposes, reshapes, reductions, basic and integer
indexing with narrow index dtypes, concatenation), each perturbation replayed alone and in random
batches, at scales from a derivative's step to values that overflow ``exp``. ``python -m
tests.trace.test_batch_invariance [PROGRAMS]`` prints the counts. Below: the minimal programs of what
the fuzz found, one test each.
"""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

from gradjob.model.layout import Layout
from gradjob.trace import Replay, Untraceable

PROGRAMS = 400
SEED = 20261207

# Parameters: a square M (its transpose is pinned at the same place on the diagonal), W and b of a
# layer, a vector v, and tables e (300,) and E (260, 2) longer than an int8 or uint8 index reaches.
SHAPES = {"M": (6, 6), "W": (4, 6), "b": (4, 1), "v": (5,), "e": (300,), "E": (260, 2)}
X_SHAPE = (6, 5)

UNARY = ["np.tanh({a})", "np.arctan({a})", "np.exp({a})", "np.abs({a})", "np.square({a})", "np.maximum({a}, 0)",
         "-{a}", "{a} * 2.5", "np.sqrt(np.abs({a}) + 1)", "{a}.T", "{a}.reshape(-1)", "{a}[::-1]", "{a}[1:]",
         "{a}[:, ::-1]", "np.sum({a}, axis=0, keepdims=True)", "np.max({a}, axis=-1)", "np.mean({a}, axis=0)",
         "np.min({a})", "{a} @ X", "X.T @ {a}", "{a} @ {a}.T", "{a}.T @ {a}", "{a} * {a}.T", "{a} + {a}.T",
         "{a} * {a}[::-1]"]
BINARY = ["{a} + {b}", "{a} - {b}", "{a} * {b}", "np.maximum({a}, {b})", "np.minimum({a}, {b})",
          "np.where({a} > {b}, {a}, {b})", "{a} / (1 + {b} * {b})", "{a} @ {b}", "{a} * {b}.T", "{a} @ {b}.T",
          "np.concatenate([{a}, {b}], axis=0)"]
NARROW = [np.int8, np.uint8, np.int16, np.intp]


def _ids(rng, n: int, count: int) -> str:
    """A constant index array into an axis of length n, in a random (often narrow) dtype."""
    dtype = NARROW[rng.integers(len(NARROW))]
    info = np.iinfo(dtype)
    low, high = max(-n, int(info.min)) if info.min < 0 else 0, min(n, int(info.max) + 1)
    values = rng.integers(low, high, count)
    return f"np.array({values.tolist()}, dtype=np.{np.dtype(dtype).name})"


def _indexings(rng, a: str, shape: tuple) -> list[str]:
    out = [f"{a}[{_ids(rng, shape[0], 6)}]"]
    if len(shape) == 2:
        rows = rng.integers(0, shape[0], 4).tolist()
        out.append(f"{a}[np.array({rows}), {_ids(rng, shape[1], 4)}]")
        out.append(f"{a}[{_ids(rng, shape[0], 4)}, {_ids(rng, shape[1], 4)}]")
    return out


def program(rng, statements: int = 6) -> str:
    """A random forward over the parameters (source text), each statement checked at random values
    for NumPy's shape rules; its cost sums the last values and a few earlier ones."""
    env = {"np": np, "X": rng.standard_normal(X_SHAPE)}
    env.update({k: rng.standard_normal(s) for k, s in SHAPES.items()})
    names = list(SHAPES)
    lines = [f"{k} = p['{k}']" for k in SHAPES]
    for n in range(statements):
        for _ in range(50):
            a = names[-1 - min(len(names) - 1, int(rng.geometric(0.4)) - 1)]
            b = names[rng.integers(len(names))]
            pool = UNARY + BINARY + _indexings(rng, a, np.shape(env[a])) if np.ndim(env[a]) else UNARY + BINARY
            template = pool[rng.integers(len(pool))]
            if "axis" in template and np.ndim(env[a]) == 0:
                continue  # NumPy reduces a 0-d value along axis 0 or -1; the replay does not (not fixed here)
            expression = template.format(a=a, b=b)
            try:
                with np.errstate(all="ignore"):
                    value = eval(expression, env)
            except Exception:
                continue
            if np.ndim(value) <= 2 and 0 < np.size(value) <= 2000:
                break
        else:
            continue
        name = f"t{n}"
        env[name] = value
        names.append(name)
        lines.append(f"{name} = {expression}")
    made = [x for x in names if x.startswith("t")] or names[-1:]
    summed = made[-2:] + [made[i] for i in rng.integers(0, len(made), 2)]
    terms = [f"np.sum(np.tanh({x}))" if rng.random() < 0.5 else f"np.sum({x})" for x in dict.fromkeys(summed)]
    lines.append("return " + " + ".join(terms))
    return "import numpy as np\n\n\ndef forward(X, Y, p):\n" + textwrap.indent("\n".join(lines), "    ") + "\n"


def case(rng):
    X = rng.standard_normal(X_SHAPE)
    return X, {k: rng.standard_normal(s) for k, s in SHAPES.items()}


def perturbations(rng, layout: Layout, theta: np.ndarray, per_tensor: int = 4):
    """A few elements of every tensor (M's diagonal among them), each moved by a scale from none at
    all and a derivative's step to values that switch every mask and overflow exp."""
    chosen = []
    for tensor in layout.tensors:
        chosen.extend(tensor.offset + rng.integers(0, tensor.size, per_tensor))
        if tensor.name == "M":
            chosen.extend(tensor.offset + 7 * rng.integers(0, 6, 3))
    indices = np.array(chosen, dtype=np.int64)
    scales = np.array([0.0, 1e-7, 1e-3, 0.5, 4.0, 800.0])[rng.choice(6, indices.size, p=[.05, .3, .2, .2, .15, .1])]
    values = theta[indices] + scales * rng.choice([-1, 1], indices.size) * np.maximum(1, np.abs(theta[indices]))
    return indices, values


def replayed(replay: Replay, indices, values) -> np.ndarray:
    """The replay's costs, non-finite ones included (``costs`` refuses them)."""
    return replay._replay(np.asarray(indices, dtype=np.int64), np.asarray(values), record=False)


def forward_costs(forward, X, layout: Layout, theta, indices, values) -> np.ndarray:
    out = np.empty(len(indices))
    for p, (i, value) in enumerate(zip(indices, values)):
        moved = theta.copy()
        moved[i] = value
        out[p] = forward(X, None, layout.views(moved))
    return out


def same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit for bit, a NaN of either sign as good as any other."""
    return (a.view(np.int64) == b.view(np.int64)) | (np.isnan(a) & np.isnan(b))


def agree(replay: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """Equal to round-off, or non-finite alike."""
    close = np.abs(replay - forward) <= 1e-9 * np.maximum(1, np.abs(forward))
    return close | (np.isnan(replay) & np.isnan(forward)) | (np.isinf(replay) & (replay == forward))


def run(programs: int = PROGRAMS, seed: int = SEED, batchings: int = 3) -> dict:
    """Counts over ``programs`` random programs: traced, failing (the replay raised), differing alone
    and batched (and which), far from the forward; with the first example of each."""
    rng = np.random.default_rng(seed)
    counts = {"programs": programs, "traced": 0, "raised": 0, "batch-dependent": 0, "off-forward": 0}
    first = {}
    for _ in range(programs):
        source = program(rng)
        namespace: dict = {}
        exec(compile(source, "model.py", "exec"), namespace)
        forward = namespace["forward"]
        X, params = case(rng)
        layout = Layout.of(params)
        theta = layout.flatten(params)
        with np.errstate(all="ignore"):
            try:
                replay = Replay.of(forward, X, None, layout, theta)
            except Untraceable:
                continue
            counts["traced"] += 1
            indices, values = perturbations(rng, layout, theta)
            try:
                alone = np.concatenate([replayed(replay, indices[k:k + 1], values[k:k + 1])
                                        for k in range(indices.size)])
                differ = np.zeros(indices.size, dtype=bool)
                for _ in range(batchings):
                    order = rng.permutation(indices.size)
                    cuts = np.sort(rng.choice(np.arange(1, indices.size), rng.integers(0, 4), replace=False))
                    for part in np.split(order, cuts):
                        batched = replayed(replay, indices[part], values[part])
                        differ[part] |= ~same_bits(batched, alone[part])
            except Exception as error:
                counts["raised"] += 1
                first.setdefault("raised", (source, repr(error)))
                continue
            off = ~agree(alone, forward_costs(forward, X, layout, theta, indices, values))
        if differ.any():
            counts["batch-dependent"] += 1
            first.setdefault("batch-dependent", (source, indices[differ].tolist()))
        if off.any():
            counts["off-forward"] += 1
            first.setdefault("off-forward", (source, indices[off].tolist()))
    return {"counts": counts, "first": first}


def test_random_programs_replay_the_same_bits_alone_and_in_any_batch_and_match_the_forward():
    result = run()
    counts = result["counts"]
    assert counts["traced"] >= 0.9 * counts["programs"], counts
    assert (counts["raised"], counts["batch-dependent"], counts["off-forward"]) == (0, 0, 0), result



# -- the minimal programs of what the fuzz found

def _alone_and_batched(forward, X, params, indices, values):
    layout = Layout.of(params)
    replay = Replay.of(forward, X, None, layout, layout.flatten(params))
    indices, values = np.asarray(indices, dtype=np.int64), np.asarray(values, dtype=np.float64)
    with np.errstate(all="ignore"):
        alone = np.concatenate([replayed(replay, indices[k:k + 1], values[k:k + 1]) for k in range(indices.size)])
        together = replayed(replay, indices, values)
        expected = forward_costs(forward, X, layout, layout.flatten(params), indices, values)
    return alone, together, expected


NARROW_INDEXING = {
    "int8 ids into 300 elements": lambda X, Y, p: np.sum(np.tanh(p["e"][np.array([-128, -3, 0, 5, 127], np.int8)])),
    "uint8 ids into 300 elements": lambda X, Y, p: np.sum(np.exp(p["e"])[np.array([0, 7, 255, 7], np.uint8)] ** 2),
    "int8 rows and uint8 columns": lambda X, Y, p: np.sum(p["E"][np.array([-100, 3, 127], np.int8),
                                                                 np.array([1, 0, 1], np.uint8)] ** 3),
    "a table's rows by uint8 ids": lambda X, Y, p: np.sum(np.tanh(p["E"][np.array([0, 255, 9, 9], np.uint8)] @ X[:2])),
}


@pytest.mark.parametrize("name", list(NARROW_INDEXING))
def test_index_arrays_of_narrow_dtypes_replay_as_the_forward(name):
    """An int8 or uint8 key into an axis longer than its dtype reaches (ids of an embedding table)
    raised OverflowError: its negative positions were wrapped in the key's own dtype (k + 300)."""
    rng = np.random.default_rng(5)
    X, params = case(rng)
    layout = Layout.of(params)
    theta = layout.flatten(params)
    touched = [layout.tensors[3].offset + 2, layout.tensors[4].offset + np.array([0, 7, 172, 255, 297]),
               layout.tensors[5].offset + np.array([1, 2 * 255, 2 * 160 + 1, 18])]
    indices = np.concatenate([np.atleast_1d(t) for t in touched])
    values = theta[indices] + np.linspace(-0.3, 0.3, indices.size)
    alone, together, expected = _alone_and_batched(NARROW_INDEXING[name], X, params, indices, values)
    assert alone.tobytes() == together.tobytes()
    np.testing.assert_allclose(alone, expected, rtol=1e-12)


PINNED_TOGETHER = {
    "M * M.T": lambda X, Y, p: np.sum(np.tanh((p["M"] * p["M"].T) @ X)),
    "M + M.T": lambda X, Y, p: np.sum(np.tanh(X.T @ (p["M"] + p["M"].T)) ** 2),
    "v * v[::-1]": lambda X, Y, p: np.sum(np.tanh(p["v"] * p["v"][::-1]) @ X[:, :5].T),
}


@pytest.mark.parametrize("name", list(PINNED_TOGETHER))
def test_operands_pinned_at_the_same_place_for_part_of_a_batch_cost_as_alone(name):
    """M * M.T moved at M[j, k] is pinned at (j, k) in one operand and (k, j) in the other: at one
    place on the diagonal only. A batch with diagonal and other elements held the whole result in
    full, so a diagonal element's cost was computed in another order than alone (or in a batch of
    diagonal elements, where the result stays pinned)."""
    rng = np.random.default_rng(2)
    X, params = case(rng)
    layout = Layout.of(params)
    theta = layout.flatten(params)
    M, v = layout.tensors[0].offset, layout.tensors[3].offset
    indices = np.array([M, M + 1, M + 7, M + 12, M + 35, M + 8, v + 2, v, v + 1])
    values = theta[indices] + np.array([1e-3, 1e-3, -0.5, 1e-7, 2.0, 0.3, 1e-3, -1e-3, 0.7])
    alone, together, expected = _alone_and_batched(PINNED_TOGETHER[name], X, params, indices, values)
    assert alone.tobytes() == together.tobytes()
    np.testing.assert_allclose(alone, expected, rtol=1e-12)


def test_an_overflow_in_one_perturbation_leaves_the_others_bits_alone():
    """exp(M) @ M with M moved at one element is θ's product plus that element's share, when finite;
    one perturbation of the batch overflowing exp sent every other one down the batched product too,
    whose rounding differs."""
    rng = np.random.default_rng(3)
    X, params = case(rng)

    def forward(X, Y, p):
        return np.sum(np.tanh(np.exp(p["M"]) @ p["M"] @ X))

    layout = Layout.of(params)
    theta = layout.flatten(params)
    indices = np.array([0, 9, 20, 33, 14, 9])
    values = theta[indices] + np.array([1e-3, 800.0, 1e-3, -0.2, 1e-7, -1e-3])
    alone, together, expected = _alone_and_batched(forward, X, params, indices, values)
    assert np.isnan(alone[1]) and np.isnan(together[1]) and np.isnan(expected[1])  # inf - inf, as the forward
    finite = np.isfinite(expected)
    assert alone[finite].tobytes() == together[finite].tobytes()
    np.testing.assert_allclose(alone[finite], expected[finite], rtol=1e-12)


def test_products_of_two_moved_operands_cost_the_same_alone_and_batched():
    """v @ v of a vector moved everywhere (a reshaped matrix) is one batched np.matmul, and
    (b * e) @ (b * e).T with b moved at one row θ's product plus that row's share (an einsum); with
    the batch innermost in memory NumPy summed both in another order than for a perturbation alone."""
    rng = np.random.default_rng(0)
    X, params = case(rng)

    def forward(X, Y, p):
        flat = np.tanh(p["M"].reshape(-1))
        outer = p["b"] * p["e"]
        return np.sum(flat @ flat) + np.sum(p["E"].reshape(-1) @ p["E"].reshape(-1)) + np.sum(-outer @ outer.T)

    layout = Layout.of(params)
    theta = layout.flatten(params)
    b, E = layout.tensors[2].offset, layout.tensors[5].offset
    indices = np.array([3, 17, 30, 0, E, E + 111, E + 519, b, b + 2, b + 2, b + 1])
    values = theta[indices] + np.array([1.0, -0.5, 1e-7, 1e-3, 0.25, -2.0, 1e-6, 1e-3, -1e-3, 0.4, 1e-7])
    alone, together, expected = _alone_and_batched(forward, X, params, indices, values)
    assert alone.tobytes() == together.tobytes()
    np.testing.assert_allclose(alone, expected, rtol=1e-12)


if __name__ == "__main__":
    outcome = run(int(sys.argv[1]) if len(sys.argv) > 1 else PROGRAMS)
    print(outcome["counts"])
    for what, (source, detail) in outcome["first"].items():
        print(f"--- first {what}: {detail}\n{source}")
