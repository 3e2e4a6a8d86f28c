"""``gradjob bench``: the pipeline's speed and memory, against baselines timed in the same run.

- the built-in network through ``job.run`` (real cluster, real store), once per worker count,
  against the seed-style loop and ``torch.autograd.gradcheck`` (see ``baselines``);
- a user's model file (``--model``, else the shipped ``examples/seed_style.py`` at the same
  layers) through the same pipeline, against its black-box floor (two forward calls per
  parameter over the same workers), and the generic path on sampled elements, whose numbers the
  pipeline's must equal to round-off;
- the share of wall time spent measuring noise and re-verifying suspects;
- start-up: README's main job on the seed network against ``python -c "import gradjob"``, each a
  fresh process, timed in this run (issue 18 asks for at most 3×: small checks run in-process).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from typing import Callable

import numpy as np

from gradjob import examples
from gradjob.bench import baselines
from gradjob.errors import JobError
from gradjob.model.cases import check_network_shape, load_case
from gradjob.model.spec import load_model, model_spec
from gradjob.run import job
from gradjob.storage import store
from gradjob.types import Outcome, Request


def run_pipeline(request: Request, after: Callable[[Outcome], dict] | None = None) -> dict:
    """One full check in a temporary store; ``after(outcome)`` runs while the store still exists."""
    with tempfile.TemporaryDirectory(prefix="gradjob-bench-") as folder:
        request = request.replace(store=os.path.join(folder, "bench.zarr"))
        started = time.perf_counter()
        outcome = job.run(request)
        wall = time.perf_counter() - started
        extra = after(outcome) if after else {}
    return {**run_figures(outcome.reduction.n_parameters, request.workers, wall, outcome.task_seconds, outcome.seconds),
            "evaluator": outcome.evaluator, "evaluator_note": evaluator_note(outcome.notes),
            "chunk_size": outcome.meta.chunk_size,
            "peak_worker_rss_bytes": outcome.peak_worker_rss_bytes,
            "difference": outcome.reduction.difference, "passed": outcome.reduction.passed, **extra}


def evaluator_note(notes) -> str | None:
    """The run's note on its evaluator: which of the replay and the forward measured faster, or why
    the traced path is off (see ``evaluators.choose``)."""
    return next((n for n in notes if n.startswith(("evaluator: ", "the traced fast path is off"))), None)


def run_figures(n: int, workers: int, wall: float, task_seconds, stages: dict) -> dict:
    """What one run's measured times say: rate, tasks, idle share, share spent on verification."""
    busy = sum(task_seconds)
    return {"workers": workers, "n_parameters": n, "wall_seconds": wall, "params_per_second": n / wall,
            "n_tasks": len(task_seconds), "mean_task_seconds": busy / max(1, len(task_seconds)),
            # wall-clock share the workers were not computing: start-up, scheduling, store, reduce
            "overhead_fraction": max(0.0, 1 - busy / (wall * workers)),
            # measuring the forward's noise and re-verifying suspects (issue 11: at most 5 %)
            "verification_fraction": (stages.get("calibrate", 0.0) + stages.get("verify", 0.0)) / wall,
            "seconds": stages}


def baseline_figures(params_per_second: float, seed_seconds: float, torch_seconds: float | None) -> dict:
    """The baselines' rates from their seconds per parameter, and how many times faster gradjob is."""
    return {"seed_loop_params_per_second": 1 / seed_seconds,
            "torch_params_per_second": (1 / torch_seconds) if torch_seconds else None,
            "speedup_vs_seed_loop": params_per_second * seed_seconds,
            "speedup_vs_torch": (params_per_second * torch_seconds) if torch_seconds else None}


def builtin_figures(layers, examples_: int, worker_counts, growth_layers=None) -> dict:
    runs = [run_pipeline(Request(model="network", case="random", layers=tuple(layers), examples=examples_,
                                 workers=w, cluster=True)) for w in worker_counts]
    main = runs[-1]
    seed = baselines.seed_loop_seconds_per_parameter(layers, examples_)
    torch_seconds = baselines.torch_seconds_per_parameter(layers, examples_)
    result = {
        "layers": list(layers), "examples": examples_, **main, "runs": runs,
        **baseline_figures(main["params_per_second"], seed, torch_seconds),
        "baselines_timed_on": f"{baselines.SUBSET} fixed random elements, scaled per element, one core",
    }
    if len(runs) > 1:
        result["scaling"] = runs[-1]["params_per_second"] / runs[0]["params_per_second"]
    if growth_layers:
        larger = run_pipeline(Request(model="network", case="random", layers=tuple(growth_layers),
                                      examples=examples_, workers=worker_counts[-1], cluster=True))
        result["memory_growth"] = {"layers": list(growth_layers), **larger,
                                   "growth": larger["peak_worker_rss_bytes"] / main["peak_worker_rss_bytes"] - 1}
    return result


def user_model_figures(path: str, forward: str | None, backward: str | None, case: str | None, layers,
                       examples_: int, workers: int) -> dict:
    """A model file through the pipeline, against its black-box floor and the generic path."""
    spec = model_spec(path, forward, backward)
    model = load_model(spec)
    the_case = load_case(case or "random", list(layers), examples_, 0)
    request = Request(model=path, forward=forward, backward=backward, case=case or "random", layers=tuple(layers),
                      examples=examples_, workers=workers, cluster=True)

    def sampled(outcome: Outcome) -> dict:
        """The generic path at fixed random elements, with the steps the pipeline took there."""
        group = store.open_existing(outcome.store)
        layout = outcome.meta.layout
        picked = baselines.subset(layout)
        theta = store.read_vector(group, "theta")
        steps, piped, bound = (group[name].get_coordinate_selection(picked) for name in ("step", "gradapprox", "noise"))
        X, Y = store.read_case(group)
        generic, per_element = baselines.generic_on_sample(model, layout, theta, X, Y, picked, steps)
        return {"generic_sample": {"elements": int(picked.size), "seconds_per_element": per_element,
                                   "max_abs_deviation": float(np.max(np.abs(piped - generic))),
                                   "max_deviation_in_noise_bounds": float(np.max(np.abs(piped - generic) / bound))}}

    run = run_pipeline(request, sampled)
    floor = baselines.floor_params_per_second(spec, the_case, workers)
    return {"model": path, **run, "floor_params_per_second": floor, "speedup_vs_floor": run["params_per_second"] / floor,
            "generic_path": baselines.generic_overhead(model, the_case)}


STARTUP_REPEATS = 3  # the fastest of three: other processes on the machine only ever add time
MAIN_JOB = ["submit", "--epsilon", "1e-7", "--json"]  # README's first command: the seed network, 47 parameters


def startup_figures() -> dict:
    """README's main job and a bare ``import gradjob``, each in a fresh process and a fresh folder
    (no finished store to reuse), the fastest of ``STARTUP_REPEATS``."""
    def fastest(arguments: list[str], exit_code: int) -> float:
        times = []
        for _ in range(STARTUP_REPEATS):
            with tempfile.TemporaryDirectory(prefix="gradjob-bench-") as folder:
                started = time.perf_counter()
                run = subprocess.run([sys.executable, *arguments], cwd=folder, capture_output=True, text=True)
                times.append(time.perf_counter() - started)
            if run.returncode != exit_code:  # a time is only a figure of the run that did its work
                raise JobError(f"the start-up figure's run {arguments[-1]!r} exited {run.returncode}: "
                               f"{run.stderr.strip().splitlines()[-1:]}")
        return min(times)

    imported = fastest(["-c", "import gradjob"], 0)
    main = fastest(["-c", "from gradjob.cli import app; app(prog_name='gradjob')", *MAIN_JOB], 1)  # its planted bugs
    return {"import_seconds": imported, "main_job_seconds": main, "ratio": main / imported}


def benchmark(layers, examples_: int, worker_counts, growth_layers=None, model: str | None = None,
              forward: str | None = None, backward: str | None = None, case: str | None = None) -> dict:
    """The figures of ``gradjob bench``: the built-in network (skipped with ``model``, whose case
    need not be the built-in network's) and a user's model file."""
    check_network_shape(layers, examples_)
    if growth_layers:
        check_network_shape(growth_layers, examples_, "--growth-layers")
    user = user_model_figures(model or examples.path("seed_style"), forward, backward, case, layers, examples_,
                              worker_counts[-1])
    result = {"layers": list(layers), "examples": examples_, "user_model": user, "startup": startup_figures()}
    if model is None:
        result.update(builtin_figures(layers, examples_, worker_counts, growth_layers))
        result["user_model"]["peak_rss_vs_builtin"] = user["peak_worker_rss_bytes"] / result["peak_worker_rss_bytes"]
    return result


def to_text(result: dict) -> str:
    def rate(x):
        return "n/a (torch not installed: pip install 'gradjob[torch]')" if x is None else f"{x:,.0f} params/s"

    lines = []
    if "runs" in result:
        lines.append(f"built-in network {','.join(map(str, result['layers']))}, {result['examples']} examples: "
                     f"{result['n_parameters']:,} parameters")
        for run in result["runs"]:
            lines.append(_run_line(run))
        if "scaling" in result:
            lines.append(f"  scaling {result['runs'][0]['workers']} → {result['runs'][-1]['workers']} workers: "
                         f"{result['scaling']:.2f}×")
        lines.append(f"  seed-style loop (copy θ, rebuild dict, full forward): {rate(result['seed_loop_params_per_second'])}"
                     f" → gradjob is {result['speedup_vs_seed_loop']:.0f}× faster")
        torch_line = f"  torch.autograd.gradcheck, full mode: {rate(result['torch_params_per_second'])}"
        if result["speedup_vs_torch"]:
            torch_line += f" → gradjob is {result['speedup_vs_torch']:.0f}× faster"
        lines.append(torch_line)
        lines.append(f"  (baselines timed on {result['baselines_timed_on']})")
        if "memory_growth" in result:
            larger = result["memory_growth"]
            lines.append(
                f"  memory: peak worker RSS {result['peak_worker_rss_bytes'] / 2**20:.1f} MiB at {result['n_parameters']:,} "
                f"parameters → {larger['peak_worker_rss_bytes'] / 2**20:.1f} MiB at {larger['n_parameters']:,} "
                f"({','.join(map(str, larger['layers']))}, {larger['wall_seconds']:.1f} s, {larger['n_tasks']} tasks): "
                f"{100 * larger['growth']:+.1f}%")
    user = result["user_model"]
    sample = user["generic_sample"]
    lines += [f"model file {user['model']}: {user['n_parameters']:,} parameters",
              _run_line(user),
              f"  black-box floor (2 forward calls per parameter, {user['workers']} worker(s)): "
              f"{user['floor_params_per_second']:,.0f} params/s → gradjob is {user['speedup_vs_floor']:.1f}× faster",
              f"  generic path on {sample['elements']} sampled elements: {1 / sample['seconds_per_element']:,.0f} params/s"
              f" per core; largest deviation from the pipeline's numbers {sample['max_abs_deviation']:.1e} "
              f"({sample['max_deviation_in_noise_bounds']:.2g} of their noise bounds)",
              f"  generic path over {user['generic_path']['forward_calls']} bare forward calls: "
              f"{100 * user['generic_path']['overhead']:+.1f}%"]
    if user.get("evaluator_note"):
        lines.append(f"  {user['evaluator_note']}")
    if "peak_rss_vs_builtin" in user:
        lines.append(f"  peak worker RSS {user['peak_rss_vs_builtin']:.2f}× the built-in fast path's")
    startup = result["startup"]
    lines.append(f"start-up: `gradjob {' '.join(MAIN_JOB)}` (seed network, in-process) "
                 f"{startup['main_job_seconds']:.2f} s "
                 f"against `python -c \"import gradjob\"` {startup['import_seconds']:.2f} s: {startup['ratio']:.1f}×")
    return "\n".join(lines)


def _run_line(run: dict) -> str:
    return (f"  gradjob, {run['workers']} worker(s), {run['evaluator']}: {run['wall_seconds']:.1f} s wall, "
            f"{run['params_per_second']:,.0f} params/s, {run['n_tasks']} tasks of {run['chunk_size']} "
            f"({run['mean_task_seconds']:.2f} s each, {100 * run['overhead_fraction']:.0f}% not computing; noise and "
            f"re-verification {100 * run['verification_fraction']:.1f}%), peak worker RSS "
            f"{(run['peak_worker_rss_bytes'] or 0) / 2**20:.0f} MiB, difference {run['difference']:.2e}")
