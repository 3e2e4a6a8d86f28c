"""What ``gradjob bench`` measures the pipeline against, each timed in the bench's own process:

- the seed-style loop: per parameter copy θ, rebuild the dict, run the full forward (±), as the
  seed's ``gradient_check_n`` does, on one core;
- ``torch.autograd.gradcheck`` in full mode on the same network, when torch is installed;
- the black-box floor of a model file: two forward calls per parameter, timed on the workers of
  an embedded cluster (the best any evaluator that only calls the forward can do there);
- the generic path (θ perturbed in place, one forward call per evaluation) on sampled elements,
  both for its speed and as the reference the pipeline's numbers are compared with.

Baselines that would take too long run on a fixed random subset of elements and are scaled per
element; the bench's output says so.
"""

from __future__ import annotations

import time

import numpy as np

from gradjob.model.cases import Case, random_case
from gradjob.model.layout import Layout
from gradjob.model.networks import network_forward
from gradjob.model.spec import Model, cost_function
from gradjob.numerics.evaluate import in_place_costs, numerical_gradient

SUBSET = 64  # elements timed for each baseline; spread over every tensor, fixed seed


def subset(layout: Layout, size: int = SUBSET) -> np.ndarray:
    """A fixed random subset of θ's indices with the tensors represented in proportion."""
    rng = np.random.default_rng(0)
    return np.sort(rng.choice(layout.n_parameters, size=min(size, layout.n_parameters), replace=False))


def timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def seed_loop_seconds_per_parameter(layers, examples: int, epsilon: float = 1e-7) -> float:
    """The seed's loop: copy the vector, perturb, rebuild the dict, full forward, for + and −."""
    case = random_case(layers, examples, 0)
    layout = Layout.of(case.parameters)
    values = layout.flatten(case.parameters)
    picked = subset(layout)

    def vector_to_dictionary(theta):
        return {t.name: theta[t.offset:t.stop].reshape(t.shape).copy() for t in layout.tensors}

    def loop():
        for i in picked:
            theta_plus = np.copy(values)
            theta_plus[i] += epsilon
            j_plus, _ = network_forward(case.X, case.Y, vector_to_dictionary(theta_plus))
            theta_minus = np.copy(values)
            theta_minus[i] -= epsilon
            j_minus, _ = network_forward(case.X, case.Y, vector_to_dictionary(theta_minus))
            _ = (j_plus - j_minus) / (2 * epsilon)

    return timed(loop) / picked.size


def torch_seconds_per_parameter(layers, examples: int) -> float | None:
    """torch.autograd.gradcheck, full mode, over a fixed subset of θ's elements; None without torch."""
    try:
        import torch
    except ImportError:
        return None
    case = random_case(layers, examples, 0)
    layout = Layout.of(case.parameters)
    base = torch.tensor(layout.flatten(case.parameters), dtype=torch.float64)
    X = torch.tensor(case.X, dtype=torch.float64)
    Y = torch.tensor(case.Y, dtype=torch.float64)
    picked = torch.tensor(subset(layout))

    def cost(values):
        theta = base.index_put((picked,), values)
        A = X
        for k, t in enumerate(layout.tensors[0::2], start=1):
            b = layout.tensors[2 * k - 1]
            W = theta[t.offset:t.stop].reshape(t.shape)
            bias = theta[b.offset:b.stop].reshape(b.shape)
            Z = W @ A + bias
            A = torch.relu(Z) if k < len(layout.tensors) // 2 else torch.sigmoid(Z)
        return (-(torch.log(A) * Y) - torch.log(1 - A) * (1 - Y)).sum() / X.shape[1]

    values = base[picked].clone().requires_grad_(True)
    return timed(lambda: torch.autograd.gradcheck(cost, (values,), eps=1e-6, atol=1e-4, fast_mode=False)) / picked.numel()


def forward_seconds(model: Model, case: Case, repeats: int = 5) -> float:
    """One bare forward call of the model at θ, best of ``repeats`` after a warm-up."""
    layout = Layout.of(case.parameters)
    parameters = layout.views(layout.flatten(case.parameters))
    model.forward(case.X, case.Y, parameters)
    return min(timed(lambda: model.forward(case.X, case.Y, parameters)) for _ in range(repeats))


def floor_params_per_second(spec, case: Case, workers: int) -> float:
    """The black-box floor over ``workers`` workers of the embedded cluster: each worker times bare
    forward calls at once (workers run single-threaded BLAS, as the pipeline's do), and the floor
    is the sum over workers of one parameter per two forward calls."""
    from gradjob.executors.cluster import DaskExecutor

    with DaskExecutor(None, workers) as executor:
        seconds = executor.client.run(_worker_forward_seconds, spec, case)
    return sum(1 / (2 * s) for s in seconds.values())


def _worker_forward_seconds(spec, case: Case) -> float:
    from gradjob.model.spec import load_model

    return forward_seconds(load_model(spec), case)


GENERIC_BUDGET_SECONDS = 1.0  # bare forward calls per timing of the generic path's overhead, at most


def generic_overhead(model: Model, case: Case, calls: int = 2000, repeats: int = 7) -> dict:
    """Time of the generic path over the same number of bare forward calls; each side best of
    ``repeats`` after a warm-up, interleaved so that both see the same drift. At most ``calls``
    calls, and as many as take about ``GENERIC_BUDGET_SECONDS`` (a naive conv's forward takes 40 ms:
    2,000 calls 14 times would take 20 minutes)."""
    layout = Layout.of(case.parameters)
    theta = layout.flatten(case.parameters)
    parameters = layout.views(theta)
    costs = in_place_costs(cost_function(model, case.X, case.Y, parameters), theta)
    affordable = int(GENERIC_BUDGET_SECONDS / (2 * forward_seconds(model, case, repeats=1)))
    count = max(1, min(calls // 2, theta.size, affordable))
    steps, noise = np.full(count, 1e-6), np.zeros(count)

    def bare_calls():
        for _ in range(2 * count):
            model.forward(case.X, case.Y, parameters)

    def generic_calls():
        numerical_gradient(costs, theta[:count].copy(), 0, steps, noise)

    bare_calls(), generic_calls()  # warm-up
    times = [(timed(bare_calls), timed(generic_calls)) for _ in range(repeats)]
    bare, generic = min(t[0] for t in times), min(t[1] for t in times)
    return {"forward_calls": 2 * count, "bare_seconds": bare, "generic_seconds": generic,
            "overhead": generic / bare - 1}


def generic_on_sample(model: Model, layout: Layout, theta: np.ndarray, X, Y, picked: np.ndarray,
                      steps: np.ndarray) -> tuple[np.ndarray, float]:
    """gradapprox by the generic path at ``picked`` with the given steps, and seconds per element."""
    own = theta.copy()
    costs = in_place_costs(cost_function(model, X, Y, layout.views(own)), own)
    out = np.empty(picked.size)

    def evaluate():
        for k, (i, h) in enumerate(zip(picked, steps)):
            out[k] = numerical_gradient(costs, own[i:i + 1].copy(), int(i), np.array([h]), np.zeros(1)).gradapprox[0]

    return out, timed(evaluate) / picked.size
