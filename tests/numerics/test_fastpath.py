"""Issue 4: the incremental evaluation equals the plain forward to round-off, on random networks."""

import json

import numpy as np
import pytest
import zarr

from gradjob.model import networks
from gradjob.model.cases import random_case
from gradjob.model.layout import Layout
from gradjob.model.spec import Model, cost_function
from gradjob.numerics import fastpath
from gradjob.numerics.evaluate import PerturbationFailure, in_place_costs, numerical_gradient
from gradjob.numerics.fastpath import FastNetwork


def reader(theta, reads=None):
    """θ[start:stop] as the store gives it on a worker: a new array; ``reads`` records each range."""
    def read(start, stop):
        if reads is not None:
            reads.append((start, stop))
        return theta[start:stop].copy()
    return read


@pytest.mark.parametrize("layers, examples, seed", [
    ([4, 5, 3, 1], 3, 0), ([7, 6, 5, 4, 1], 9, 1), ([30, 20, 1], 16, 2), ([6, 1], 5, 3), ([5, 8, 8, 8, 1], 1, 4),
])
def test_incremental_costs_equal_plain_forward_to_round_off(layers, examples, seed):
    case = random_case(layers, examples, seed)
    layout = Layout.of(case.parameters)
    theta = layout.flatten(case.parameters)
    fast = FastNetwork(layout, reader(theta), case.X, case.Y)
    plain = in_place_costs(cost_function(Model(networks.network_forward, None), case.X, case.Y,
                                         layout.views(theta)), theta)
    rng = np.random.default_rng(seed)
    index = np.arange(theta.size)
    for scale in (1e-6, 1e-2, 1.0):  # small steps, and steps that switch ReLUs on and off
        values = theta + scale * rng.standard_normal(theta.size)
        np.testing.assert_allclose(fast.costs(index, values), plain(index, values, "+"), rtol=1e-13, atol=0)
    before = theta.copy()
    steps, noise = 2.4e-5 * np.maximum(1.0, np.abs(theta)), np.zeros(theta.size)
    a = numerical_gradient(fast.costs, theta.copy(), 0, steps, noise).gradapprox
    b = numerical_gradient(plain, theta.copy(), 0, steps, noise).gradapprox
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-9 * np.abs(b).max())
    assert theta.tobytes() == before.tobytes()


def test_fast_path_only_for_the_network_shape():
    case = random_case([4, 3, 1], 2, 0)
    assert FastNetwork.supports(Layout.of(case.parameters), case.X)
    renamed = {"V1" if k == "W1" else k: v for k, v in case.parameters.items()}
    assert not FastNetwork.supports(Layout.of(renamed), case.X)
    two_outputs = random_case([4, 3, 1], 2, 0).parameters
    two_outputs["W2"], two_outputs["b2"] = np.ones((2, 3)), np.ones((2, 1))
    assert not FastNetwork.supports(Layout.of(two_outputs), case.X)


def test_fast_path_results_do_not_depend_on_chunking(gradjob, cluster_address, tmp_path):
    results = []
    for size in (97, 1000):
        run = gradjob("submit", "--json", "--model", "network", "--layers", "40,30,20,1", "--examples", "16",
                      "--chunk-size", size, "--store", f"s{size}.zarr", "--scheduler", cluster_address)
        assert run.exit_code == 0, run.stderr
        results.append((json.loads(run.stdout), zarr.open_group(tmp_path / f"s{size}.zarr")["gradapprox"][:]))
    (first, a), (second, b) = results
    assert first["difference"] == second["difference"] and a.tobytes() == b.tobytes()
    assert first["difference"] < 1e-8


def test_non_finite_cost_in_the_fast_path_names_the_parameter():
    case = random_case([3, 2, 1], 4, 0)
    case.parameters["b2"][:] = 800.0  # the sigmoid saturates to exactly 1: 0 · log(1 - A) is nan
    layout = Layout.of(case.parameters)
    theta = layout.flatten(case.parameters)
    with pytest.raises(PerturbationFailure) as info, np.errstate(all="ignore"):  # log(0) is expected here
        fast = FastNetwork(layout, reader(theta), case.X, case.Y)
        numerical_gradient(fast.costs, theta.copy(), 0, np.full(theta.size, 1e-5), np.zeros(theta.size))
    assert (info.value.index, info.value.sign, info.value.detail) == (0, "+", "the cost is nan")


def test_fast_path_holds_the_tensors_after_w1_and_streams_w1(monkeypatch):
    monkeypatch.setattr(fastpath, "ROW_BLOCK_ELEMENTS", 3000)  # W1 (40×300) spans four row blocks
    case = random_case([300, 40, 20, 1], 8, 5)
    layout = Layout.of(case.parameters)
    theta = layout.flatten(case.parameters)
    reads = []
    fast = FastNetwork(layout, reader(theta, reads), case.X, case.Y)
    assert reads == [(12000, theta.size), (0, 3000), (3000, 6000), (6000, 9000), (9000, 12000)]
    assert fast.held.size == theta.size - 12000
    reads.clear()
    chunk = slice(5000, 5100)  # inside W1: the call reads exactly the chunk's unperturbed values
    values = theta[chunk] + 1e-3
    plain = in_place_costs(cost_function(Model(networks.network_forward, None), case.X, case.Y,
                                         layout.views(theta)), theta)
    index = np.arange(chunk.start, chunk.stop)
    np.testing.assert_allclose(fast.costs(index, values), plain(index, values, "+"), rtol=1e-13, atol=0)
    assert reads == [(5000, 5100)]
