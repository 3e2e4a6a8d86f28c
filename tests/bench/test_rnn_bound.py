"""The RNN bound's hand-batched evaluator is exact: its costs are the forward's, for every tensor,
at perturbations of words present and absent, so the bound it gives is a bound of exact evaluators."""

import numpy as np
import pytest

from gradjob.bench import rnn_bound
from gradjob.examples import rnn
from gradjob.model.layout import Layout


@pytest.mark.parametrize("name", ["W_embed", "Wx", "Wh", "b", "W_vocab", "b_vocab"])
def test_the_hand_batched_costs_are_the_forwards(name):
    X, Y, parameters = rnn.small_case()
    hand = rnn_bound.HandBatched(X, Y, parameters)
    tensor = parameters[name]
    rng = np.random.default_rng(3)
    local = np.arange(tensor.size)  # every element: W_embed's rows include words no sequence uses
    coords = np.unravel_index(local, tensor.shape)
    values = tensor[coords] + rng.uniform(-0.5, 0.5, local.size)
    batched = hand.costs(name, coords, values)
    for p in range(local.size):
        moved = {k: v.copy() for k, v in parameters.items()}
        moved[name][tuple(c[p] for c in coords)] = values[p]
        assert batched[p] == pytest.approx(rnn.forward_propagation_n(X, Y, moved)[0], rel=1e-13, abs=1e-13)
    if name == "W_embed":
        absent = sorted(set(range(tensor.shape[0])) - set(np.unique(X)))
        assert absent, "the small case should leave some word unused"
        cost = rnn.forward_propagation_n(X, Y, parameters)[0]
        assert all(batched[p] == cost for p in range(local.size) if coords[0][p] in absent)


def test_the_figures_name_every_tensor_and_compare_like_with_like():
    f = rnn_bound.figures(rnn.small_case, batch=8)
    layout = Layout.of(rnn.small_case()[2])
    assert list(f["tensors"]) == layout.names and f["n_parameters"] == 143
    assert f["largest_deviation"] < 1e-13
    for key in ("hand", "replay", "irreducible"):
        assert f[f"{key}_vs_floor"] == pytest.approx(f["forward_us"] / f[f"{key}_us"])
    assert [f["tensors"][n]["irreducible_us"] == 0 for n in layout.names] == [True, False, False, False, True, True]
