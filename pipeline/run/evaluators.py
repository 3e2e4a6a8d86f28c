"""The evaluators: J at θ with one element changed, for many elements at a time.

- ``forward``: θ perturbed in place and the user's forward called, once per evaluation; works
  for any model.
- ``incremental``: the built-in network's exact incremental evaluation (see ``fastpath``).
- ``traced``: a user's forward traced once and replayed incrementally (see ``trace``); chosen
  only after it matched the real forward at θ and at sampled perturbations.

The client builds the same evaluator as the workers, to measure noise with the numbers the
chunks will produce and to validate a traced model before any task runs.
"""

from __future__ import annotations

from typing import Callable

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
           computed_dtype: str) -> tuple[str, str | None]:
    """The fastest evaluator that gives this model's own numbers, and a note when a model file
    falls back to one forward call per evaluation."""
    if not fast or method == "complex-step":
        return "forward", None
    if spec.is_builtin:
        return ("incremental" if spec.name == "network" and FastNetwork.supports(layout, X) else "forward"), None
    try:
        replay = Replay.of(model.forward, X, Y, layout, theta)  # the trace copies what it keeps
    except Untraceable as exc:
        return "forward", f"the traced fast path is off for this model: {exc}; each evaluation calls the forward"
    arithmetic = min(computed_dtype, replay.arithmetic_dtype, key=lambda d: np.dtype(d).itemsize)
    problem = mismatch(replay.costs, build("forward", model, layout, X, Y, theta.copy()), layout, theta, arithmetic,
                       np.arange(layout.n_parameters))
    if problem:
        return "forward", f"the traced fast path is off for this model: {problem}; each evaluation calls the forward"
    return "traced", None


def mismatch(costs: Costs, real: Costs, layout: Layout, theta: np.ndarray, computed_dtype: str,
             candidates: np.ndarray, samples: int = VALIDATION_SAMPLES) -> str | None:
    """Compare ``costs`` with ``real`` (the forward evaluator) at θ and on both sides of θ at an
    element of every tensor ``candidates`` reach (one-element tensors too) and a few more drawn from
    them; the first disagreement beyond round-off, in words, or None. The replay raising anything
    is a disagreement: the forward decides."""
    picks = _picks(layout, candidates, samples)
    step = 1e-3 * np.maximum(1.0, np.abs(theta[picks]))
    indices = np.concatenate([picks[:1], picks, picks])
    values = np.concatenate([theta[picks[:1]], (theta[picks] + step).astype(theta.dtype),
                             (theta[picks] - step).astype(theta.dtype)])  # the first: no change at all, J(θ)
    try:
        replayed = costs(indices, values, "~")
    except PerturbationFailure as failure:
        return f"the replay failed at {layout.describe(failure.index)} ({failure.detail})"
    except Exception as exc:  # e.g. an operation the replay mishandles: never a traceback
        return f"the replay raised {type(exc).__name__}: {exc}"
    try:  # θ moved by 1e-3 here, far more than any step: a forward failing there is judged at the steps
        expected = real(indices, values, "~")
    except PerturbationFailure as failure:
        return f"the forward itself failed at {layout.describe(failure.index)} moved by 1e-3 ({failure.detail})"
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
