"""``gradjob bench``: the pipeline's speed and memory, against baselines timed in the same run.

- the pipeline: a full check of the built-in network through ``check.run`` (real cluster, real
  store), once per requested worker count;
- the seed-style loop: per parameter copy θ, rebuild the dict, run the full forward (±), as the
  seed's ``gradient_check_n`` does, on one core;
- ``torch.autograd.gradcheck`` in full mode on the same network, when torch is installed;
- the generic path's overhead over bare forward calls, on a user model file.

Baselines that would take too long run on a fixed random subset of elements and are scaled per
element; the output says so.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from . import check
from .cases import check_network_shape, random_case
from .evaluate import in_place_costs, numerical_gradient
from .layout import Layout
from .models import cost_function, load_model, model_spec
from .networks import network_forward
from .types import Request

SUBSET = 64  # elements timed for each baseline; spread over every tensor, fixed seed
USER_MODEL = Path(__file__).resolve().parents[1] / "jobs" / "models" / "fraud_network.py"


def subset(layout: Layout, size: int = SUBSET) -> np.ndarray:
    """A fixed random subset of θ's indices with the tensors represented in proportion."""
    rng = np.random.default_rng(0)
    return np.sort(rng.choice(layout.n_parameters, size=min(size, layout.n_parameters), replace=False))


def seed_loop_seconds_per_parameter(layers, examples: int, epsilon: float = 1e-7) -> float:
    """The seed's loop: copy the vector, perturb, rebuild the dict, full forward, for + and −."""
    case = random_case(layers, examples, 0)
    layout = Layout.of(case.parameters)
    values = layout.flatten(case.parameters)
    picked = subset(layout)

    def vector_to_dictionary(theta):
        return {t.name: theta[t.offset:t.stop].reshape(t.shape).copy() for t in layout.tensors}

    started = time.perf_counter()
    for i in picked:
        theta_plus = np.copy(values)
        theta_plus[i] += epsilon
        j_plus, _ = network_forward(case.X, case.Y, vector_to_dictionary(theta_plus))
        theta_minus = np.copy(values)
        theta_minus[i] -= epsilon
        j_minus, _ = network_forward(case.X, case.Y, vector_to_dictionary(theta_minus))
        _ = (j_plus - j_minus) / (2 * epsilon)
    return (time.perf_counter() - started) / picked.size


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
    started = time.perf_counter()
    torch.autograd.gradcheck(cost, (values,), eps=1e-6, atol=1e-4, fast_mode=False)
    return (time.perf_counter() - started) / picked.numel()


def generic_overhead(examples: int, calls: int = 2000, repeats: int = 7) -> dict:
    """Time of the generic path over the same number of bare forward calls, on the user model file
    ``USER_MODEL``; each side best of ``repeats`` after a warm-up."""
    spec = model_spec(str(USER_MODEL))
    case = random_case([64, 128, 64, 1], examples, 0)
    layout = Layout.of(case.parameters)
    theta = layout.flatten(case.parameters)
    parameters = layout.views(theta)
    forward = load_model(spec).forward
    costs = in_place_costs(cost_function(load_model(spec), case.X, case.Y, parameters), theta)

    def bare_calls():
        for _ in range(calls):
            forward(case.X, case.Y, parameters)

    steps, noise = np.full(calls // 2, 1e-6), np.zeros(calls // 2)

    def generic_calls():
        numerical_gradient(costs, theta[:calls // 2].copy(), 0, steps, noise)

    def timed(run) -> float:
        started = time.perf_counter()
        run()
        return time.perf_counter() - started

    bare_calls(), generic_calls()  # warm-up
    times = [(timed(bare_calls), timed(generic_calls)) for _ in range(repeats)]  # interleaved: same drift
    bare, generic = min(t[0] for t in times), min(t[1] for t in times)
    return {"model": str(USER_MODEL.relative_to(USER_MODEL.parents[2])), "forward_calls": calls,
            "bare_seconds": bare, "generic_seconds": generic, "overhead": generic / bare - 1}


def run_pipeline(layers, examples: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="gradjob-bench-") as folder:
        request = Request(model="network", case="random", layers=tuple(layers), examples=examples,
                          workers=workers, store=os.path.join(folder, "bench.zarr"))
        started = time.perf_counter()
        outcome = check.run(request)
        wall = time.perf_counter() - started
    n = outcome.reduction.n_parameters
    busy = sum(outcome.task_seconds)
    return {"workers": workers, "n_parameters": n, "wall_seconds": wall, "params_per_second": n / wall,
            "n_tasks": len(outcome.task_seconds), "chunk_size": outcome.meta.chunk_size,
            "mean_task_seconds": busy / max(1, len(outcome.task_seconds)),
            # wall-clock share the workers were not computing: start-up, scheduling, store, reduce
            "overhead_fraction": max(0.0, 1 - busy / (wall * workers)),
            "peak_worker_rss_bytes": outcome.peak_worker_rss_bytes,
            "difference": outcome.reduction.difference, "passed": outcome.reduction.passed}


def benchmark(layers, examples: int, worker_counts, growth_layers=None) -> dict:
    """The figures of ``gradjob bench``; with ``growth_layers``, also the pipeline alone on that
    (larger) network with the last worker count, and how peak worker memory grew."""
    check_network_shape(layers, examples)
    if growth_layers:
        check_network_shape(growth_layers, examples, "--growth-layers")
    generic = generic_overhead(examples)  # first, on a quiet process: no cluster, no torch threads
    runs = [run_pipeline(layers, examples, w) for w in worker_counts]
    main = runs[-1]
    growth = None
    if growth_layers:
        larger = run_pipeline(growth_layers, examples, worker_counts[-1])
        growth = {"layers": list(growth_layers), **larger,
                  "growth": larger["peak_worker_rss_bytes"] / main["peak_worker_rss_bytes"] - 1}
    seed = seed_loop_seconds_per_parameter(layers, examples)
    torch_seconds = torch_seconds_per_parameter(layers, examples)
    result = {
        "layers": list(layers), "examples": examples, **main, "runs": runs,
        "seed_loop_params_per_second": 1 / seed,
        "torch_params_per_second": (1 / torch_seconds) if torch_seconds else None,
        "speedup_vs_seed_loop": main["params_per_second"] * seed,
        "speedup_vs_torch": (main["params_per_second"] * torch_seconds) if torch_seconds else None,
        "baselines_timed_on": f"{SUBSET} fixed random elements, scaled per element, one core",
        "generic_path": generic,
    }
    if growth:
        result["memory_growth"] = growth
    if len(runs) > 1:
        result["scaling"] = runs[-1]["params_per_second"] / runs[0]["params_per_second"]
    return result


def to_text(result: dict) -> str:
    def rate(x):
        return "n/a (torch not installed: pip install 'gradjob[torch]')" if x is None else f"{x:,.0f} params/s"

    lines = [f"network {','.join(map(str, result['layers']))}, {result['examples']} examples: "
             f"{result['n_parameters']:,} parameters"]
    for run in result["runs"]:
        lines.append(
            f"  gradjob, {run['workers']} worker(s): {run['wall_seconds']:.1f} s wall, {run['params_per_second']:,.0f} params/s, "
            f"{run['n_tasks']} tasks of {run['chunk_size']} ({run['mean_task_seconds']:.2f} s each, "
            f"{100 * run['overhead_fraction']:.0f}% not computing), peak worker RSS "
            f"{(run['peak_worker_rss_bytes'] or 0) / 2**20:.0f} MiB, difference {run['difference']:.2e}")
    if "scaling" in result:
        lines.append(f"  scaling {result['runs'][0]['workers']} → {result['runs'][-1]['workers']} workers: {result['scaling']:.2f}×")
    lines.append(f"  seed-style loop (copy θ, rebuild dict, full forward): {rate(result['seed_loop_params_per_second'])}"
                 f" → gradjob is {result['speedup_vs_seed_loop']:.0f}× faster")
    torch_line = f"  torch.autograd.gradcheck, full mode: {rate(result['torch_params_per_second'])}"
    if result["speedup_vs_torch"]:
        torch_line += f" → gradjob is {result['speedup_vs_torch']:.0f}× faster"
    lines.append(torch_line)
    lines.append(f"  (baselines timed on {result['baselines_timed_on']})")
    g = result["generic_path"]
    lines.append(f"  generic path on {g['model']}: {100 * g['overhead']:+.1f}% over {g['forward_calls']} bare forward calls "
                 f"({g['generic_seconds']:.3f} s vs {g['bare_seconds']:.3f} s)")
    if "memory_growth" in result:
        larger = result["memory_growth"]
        lines.append(
            f"  memory: peak worker RSS {result['peak_worker_rss_bytes'] / 2**20:.1f} MiB at {result['n_parameters']:,} "
            f"parameters → {larger['peak_worker_rss_bytes'] / 2**20:.1f} MiB at {larger['n_parameters']:,} "
            f"({','.join(map(str, larger['layers']))}, {larger['wall_seconds']:.1f} s, {larger['n_tasks']} tasks): "
            f"{100 * larger['growth']:+.1f}%")
    return "\n".join(lines)
