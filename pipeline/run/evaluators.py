"""The evaluators: J at θ with one element changed, for many elements at a time.

- ``forward``: θ perturbed in place and the user's forward called, once per evaluation; works
  for any model.
- ``incremental``: the built-in network's exact incremental evaluation (see ``fastpath``).
- ``traced``: a user's forward traced once and replayed incrementally (see ``trace``); chosen
  only after it matched the real forward at θ and at sampled perturbations, and only where it is
  not clearly slower than the forward on them (``faster``: a graph of many small nodes can replay
  slower than the forward itself).

The client builds the same evaluator as the workers, to measure noise with the numbers the
chunks will produce and to validate a traced model before any task runs.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple

import numpy as np

from gradjob.model.layout import Layout
from gradjob.model.spec import Model, ModelSpec, cost_function
from gradjob.numerics.evaluate import Costs, PerturbationFailure, in_place_costs
from gradjob.numerics.fastpath import FastNetwork
from gradjob.trace import Replay, Untraceable

VALIDATION_SAMPLES = 8   # perturbations compared with the real forward before a traced model is used
# how far a replayed cost may differ from the real forward's, relative to max(1, |J|), by the dtype the
# forward computes in: round-off of sums that cancel reaches ~1e-12 in float64 (measured on random programs)
REPLAY_RTOL = {"float64": 1e-11, "float32": 1e-5, "float16": 1e-2}
EVALUATIONS_PER_PARAMETER = {"central": 2, "five-point": 4, "complex-step": 1}
# The forward replaces a validated replay only when it is clearly faster per evaluation (timings on a
# shared machine vary by tens of percent) and saves real time over the check: otherwise the replay
# stays, since it also finds kinks by its switches (``Replay.flips``).
FORWARD_FASTER_BY = 1.5
FORWARD_SAVES_SECONDS = 2.0
TIMING_BATCH = 256          # a replay that lost on the validation's few perturbations is timed on this many,
TIMING_BUDGET_SECONDS = 0.5  # or on fewer, so that one timing takes about this long at most,
TIMINGS = 2                  # the best of this many: a process descheduled mid-call only ever adds time


class Choice(NamedTuple):
    """Which evaluator a new store runs, the note that says why, and the evaluator the job's
    identity names: "traced" for a validated replay whichever of it and the forward measured
    faster, so that a resubmitted job finds its store again (a resumed store keeps its own)."""

    evaluator: str
    note: str | None
    identity: str


def build(kind: str, model: Model, layout: Layout, X, Y, theta: np.ndarray,
          read: Callable[[int, int], np.ndarray] | None = None) -> Costs:
    """The evaluator ``kind`` for the model at θ. ``theta`` is this evaluator's own copy: the
    forward evaluator perturbs it in place. ``read`` lets the incremental one stream W1."""
    if kind == "incremental":
        return FastNetwork(layout, read or (lambda a, b: theta[a:b].copy()), X, Y).costs
    if kind == "traced":
        return Replay.of(model.forward, X, Y, layout, theta).costs
    return in_place_costs(cost_function(model, X, Y, layout.views(theta)), theta)


def switches(costs: Costs) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """``flips(indices, values)`` of the replay behind ``costs`` (see ``Replay.flips``), or None
    where the forward is not traced."""
    replay = getattr(costs, "__self__", None)
    return replay.flips if isinstance(replay, Replay) else None


def choose(spec: ModelSpec, model: Model, layout: Layout, X, Y, theta: np.ndarray, fast: bool, method: str,
           computed_dtype: str, measure: bool = True) -> Choice:
    """The fastest evaluator that gives this model's own numbers, and a note when a model file
    falls back to one forward call per evaluation or, ``measure``d, runs on the faster of the two
    (not measured for the directional screen, which calls the forward alone)."""
    if not fast or method == "complex-step":
        return Choice("forward", None, "forward")
    if spec.is_builtin:
        kind = "incremental" if spec.name == "network" and FastNetwork.supports(layout, X) else "forward"
        return Choice(kind, None, kind)
    try:
        replay = Replay.of(model.forward, X, Y, layout, theta)  # the trace copies what it keeps
    except Untraceable as exc:
        return Choice("forward", f"the traced fast path is off for this model: {exc}; each evaluation calls the "
                                 "forward", "forward")
    arithmetic = min(computed_dtype, replay.arithmetic_dtype, key=lambda d: np.dtype(d).itemsize)
    timings: dict = {}
    problem = mismatch(replay.costs, build("forward", model, layout, X, Y, theta.copy()), layout, theta, arithmetic,
                       np.arange(layout.n_parameters), timings=timings)
    if problem:
        return Choice("forward", f"the traced fast path is off for this model: {problem}; each evaluation calls the "
                                 "forward", "forward")
    if not measure:
        return Choice("traced", None, "traced")
    per_parameter = EVALUATIONS_PER_PARAMETER[method]
    replay_seconds, forward_seconds = timings["replay"], timings["forward"]
    if forward_seconds * FORWARD_FASTER_BY < replay_seconds:  # the replay's few calls carry its overhead per call
        replay_seconds = min(replay_seconds, *(replay_timing(replay.costs, layout, theta, replay_seconds)
                                               for _ in range(TIMINGS)))
    kind, note = faster(replay_seconds, forward_seconds, per_parameter, layout.n_parameters)
    # said only when the forward wins: a kept replay is what "evaluator traced" already says, and a
    # note of this run's timings on every run would make every log differ
    return Choice(kind, note if kind == "forward" else None, "traced")


def faster(replay: float, forward: float, per_parameter: int, n_parameters: int) -> tuple[str, str]:
    """"traced" or "forward" from their measured seconds per evaluation, and the line that says
    which and why. The forward wins only by ``FORWARD_FASTER_BY`` and ``FORWARD_SAVES_SECONDS``."""
    saved = (replay - forward) * per_parameter * n_parameters
    if replay <= forward:
        why = ""
    elif replay < FORWARD_FASTER_BY * forward:
        why = f" (the forward is not {FORWARD_FASTER_BY:g}× faster; the replay finds kinks by its switches)"
    elif saved < FORWARD_SAVES_SECONDS:
        why = (f" (the forward would save about {saved:.2g} s over {n_parameters:,} parameters; the replay finds "
               "kinks by its switches)")
    else:
        return "forward", (f"evaluator: forward, {_ms(forward, per_parameter)} vs replay {_ms(replay, per_parameter)}, "
                           "measured on the same perturbations")
    return "traced", f"evaluator: traced, {_ms(replay, per_parameter)} vs forward {_ms(forward, per_parameter)}{why}"


def _ms(seconds_per_evaluation: float, per_parameter: int) -> str:
    ms = seconds_per_evaluation * per_parameter * 1e3
    return f"{ms:,.0f} ms/param" if ms >= 100 else f"{ms:.2g} ms/param"


def replay_timing(costs: Costs, layout: Layout, theta: np.ndarray, seconds_each: float) -> float:
    """The replay's seconds per evaluation as a chunk sees them: each tensor timed on a run of
    consecutive elements (a chunk's, up to ``TIMING_BATCH``), the largest tensors first while
    ``TIMING_BUDGET_SECONDS`` last, and their times weighted by their sizes. A replay's cost per
    call is shared by a batch of one tensor's elements; scattered elements would charge each its
    own call, and an unweighted sample would rate a model by its small tensors."""
    rng = np.random.default_rng(layout.n_parameters)
    spent = weighted = 0.0
    timed = 0
    for tensor in sorted(layout.tensors, key=lambda t: -t.size):
        left = TIMING_BUDGET_SECONDS - spent
        if left <= 0:
            break
        size = int(min(TIMING_BATCH, tensor.size, max(1, left // max(seconds_each, 1e-9))))
        start = tensor.offset + int(rng.integers(0, tensor.size - size + 1))
        indices = np.arange(start, start + size)
        values = (theta[indices] + 1e-3 * np.maximum(1.0, np.abs(theta[indices]))).astype(theta.dtype)
        started = time.perf_counter()
        try:
            costs(indices, values, "~")
        except Exception:  # e.g. a non-finite cost 1e-3 away: the validation's own figure stands
            return float("inf")
        elapsed = time.perf_counter() - started
        spent += elapsed
        weighted += tensor.size * elapsed / size
        timed += tensor.size
    return weighted / timed


def mismatch(costs: Costs, real: Costs, layout: Layout, theta: np.ndarray, computed_dtype: str,
             candidates: np.ndarray, samples: int = VALIDATION_SAMPLES, timings: dict | None = None) -> str | None:
    """Compare ``costs`` with ``real`` (the forward evaluator) at θ and on both sides of θ at an
    element of every tensor ``candidates`` reach (one-element tensors too) and a few more drawn from
    them; the first disagreement beyond round-off, in words, or None. The replay raising anything
    is a disagreement: the forward decides. ``timings`` receives each one's seconds per evaluation
    ("replay", "forward") on these same perturbations."""
    picks = _picks(layout, candidates, samples)
    step = 1e-3 * np.maximum(1.0, np.abs(theta[picks]))
    indices = np.concatenate([picks[:1], picks, picks])
    values = np.concatenate([theta[picks[:1]], (theta[picks] + step).astype(theta.dtype),
                             (theta[picks] - step).astype(theta.dtype)])  # the first: no change at all, J(θ)
    started = time.perf_counter()
    try:
        replayed = costs(indices, values, "~")
    except PerturbationFailure as failure:
        return f"the replay failed at {layout.describe(failure.index)} ({failure.detail})"
    except Exception as exc:  # e.g. an operation the replay mishandles: never a traceback
        return f"the replay raised {type(exc).__name__}: {exc}"
    replay_seconds, started = time.perf_counter() - started, time.perf_counter()
    try:  # θ moved by 1e-3 here, far more than any step: a forward failing there is judged at the steps
        expected = real(indices, values, "~")
    except PerturbationFailure as failure:
        return f"the forward itself failed at {layout.describe(failure.index)} moved by 1e-3 ({failure.detail})"
    if timings is not None:
        timings.update(replay=replay_seconds / indices.size, forward=(time.perf_counter() - started) / indices.size)
    tolerance = REPLAY_RTOL.get(computed_dtype, 1e-11) * np.maximum(1.0, np.abs(expected))
    bad = np.flatnonzero(~(np.abs(replayed - expected) <= tolerance))
    if bad.size:
        k = int(bad[0])
        return (f"its replayed cost {replayed[k]:.17g} differs from the forward's {expected[k]:.17g} at "
                f"{layout.describe(int(indices[k]))} (hidden state, arithmetic in a lower precision inside the "
                "forward, or an operation that depends on call order?)")
    return None


def _picks(layout: Layout, candidates: np.ndarray, samples: int) -> np.ndarray:
    """One element of every tensor among ``candidates``, and more drawn from them up to ``samples``
    in all; reproducibly."""
    rng = np.random.default_rng(len(candidates))
    lo, hi = int(candidates.min()), int(candidates.max()) + 1
    each = [rng.integers(max(t.offset, lo), min(t.stop, hi)) for t in layout.tensors if t.offset < hi and t.stop > lo]
    more = rng.choice(candidates, size=min(max(0, samples - len(each)), len(candidates)), replace=False)
    return np.unique(np.concatenate([np.asarray(each, dtype=np.int64), more.astype(np.int64)]))


def probe(layout: Layout, model: Model, X, Y, theta: np.ndarray):
    """J at θ with the real forward, as (indices, values, costs): what every worker must reproduce (see
    ``tasks.Probe``). Only at θ: the client must not run the forward where it may crash its process."""
    cost = build("forward", model, layout, X, Y, theta.copy())(np.array([0]), theta[:1].copy(), "~")[0]
    return (0,), (float(np.real(theta[0])),), (float(np.real(cost)),)


def held_bytes(kind: str, layout: Layout, X, Y, chunk_size: int) -> int:
    """Roughly what a worker holds for one job: θ (or the part the fast path keeps), X, Y, the
    unperturbed activations the incremental evaluators keep, and a few chunk-sized buffers."""
    data = np.asarray(X).nbytes + np.asarray(Y).nbytes + 8 * 8 * chunk_size
    itemsize = np.dtype(layout.dtype).itemsize
    if kind == "incremental":
        examples = np.shape(X)[-1] if np.ndim(X) else 1
        rows = sum(t.shape[0] for t in layout.tensors[0::2])
        return data + itemsize * (layout.n_parameters - layout.tensors[0].size) + 8 * rows * examples + (2 << 20)
    if kind == "traced":
        return data + 3 * itemsize * layout.n_parameters + (8 << 20)
    return data + itemsize * layout.n_parameters
