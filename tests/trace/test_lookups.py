"""``W[ids]`` of a weight moved in one row per perturbation (a word embedding): a perturbation of a
row no id names leaves the lookup θ's and costs nothing more; the others are looked up as before.
The costs equal the forward's and do not depend on which perturbations share a batch."""

import numpy as np
import pytest
from test_trace import check

from gradjob.examples import rnn
from gradjob.model.layout import Layout
from gradjob.trace import Replay
from gradjob.trace import indexing


def embedding_forward(X, Y, p):
    x = p["W"][X]                          # (N, T, D): rows by word id
    h = np.tanh(x @ p["U"]).sum(axis=1)    # (N, H)
    return float(np.sum((h - Y) ** 2))


def embedding_case(dtype_ids=np.int64, seed=0):
    rng = np.random.default_rng(seed)
    last = -1 if np.dtype(dtype_ids).kind == "i" else 6  # -1: the last word; words 1, 3, 4 unused
    X = np.array([[0, 2, 2], [5, 0, last]], dtype=dtype_ids)
    Y = rng.standard_normal((2, 4))
    return X, Y, {"W": rng.standard_normal((7, 3)), "U": rng.standard_normal((3, 4))}


@pytest.mark.parametrize("ids", [np.int64, np.int32, np.uint8, np.int8])
def test_lookups_replay_the_forwards_costs(ids):
    X, Y, parameters = embedding_case(ids)
    check(embedding_forward, X, Y, parameters)


def spied(monkeypatch):
    """The rows each dense lookup received (the path of a row some id names)."""
    seen = []
    original = indexing.IndexRules._index

    def spy(self, rep, key, base, B):
        if indexing._lookup(key) and rep.kinds[0] == "P":
            seen.append(np.asarray(rep.idx[0]).copy())
        return original(self, rep, key, base, B)

    monkeypatch.setattr(indexing.IndexRules, "_index", spy)
    return seen


def test_rows_no_id_names_cost_theta_and_skip_the_lookup(monkeypatch):
    X, Y, parameters = embedding_case()
    layout = Layout.of(parameters)
    theta = layout.flatten(parameters)
    replay = Replay.of(embedding_forward, X, Y, layout, theta)
    seen = spied(monkeypatch)
    rows = np.repeat(np.arange(7), 3)                       # every element of W, row by row
    values = theta[:21] + 0.25
    costs = replay.costs(np.arange(21), values)
    unused = np.isin(rows, [1, 3, 4])
    assert np.all(costs[unused] == replay.cost)
    assert not np.any(costs[~unused] == replay.cost)
    # the whole batch first, then its rows no id names (returned unchanged), then the others (6 named by -1)
    assert [sorted(set(s.tolist())) for s in seen] == [list(range(7)), [1, 3, 4], [0, 2, 5, 6]]
    seen.clear()
    assert np.all(replay.costs(np.arange(3, 6), values[3:6]) == replay.cost)  # row 1 only: one call, no lookup
    assert [s.tolist() for s in seen] == [[1, 1, 1]]


def test_a_cost_is_the_same_bits_alone_and_in_any_batch():
    X, Y, parameters = rnn.small_case()
    layout = Layout.of(parameters)
    theta = layout.flatten(parameters)
    replay = Replay.of(lambda X, Y, p: rnn.forward_propagation_n(X, Y, p)[0], X, Y, layout, theta)
    embed = layout.tensors[0]
    index = np.arange(embed.offset, embed.stop)
    values = theta[index] + 1e-3
    together = replay.costs(index, values)
    rng = np.random.default_rng(0)
    for _ in range(3):
        part = np.sort(rng.choice(index.size, size=9, replace=False))
        assert replay.costs(index[part], values[part]).tobytes() == together[part].tobytes()
    assert all(replay.costs(index[[p]], values[[p]])[0] == together[p] for p in range(0, index.size, 5))
