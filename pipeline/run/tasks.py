"""The units of work that run on a worker: evaluate one chunk and write it to the store; evaluate
the ladders of a batch of suspects.

Everything a task needs besides its chunk (θ, X, Y, the model) is read once per worker thread and
kept: tasks carry only small arguments. A traced model's chunk is also checked against the real
forward at two of its elements; on a mismatch the chunk is evaluated by the forward instead and
the task says why.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from functools import partial

import numpy as np

from gradjob.errors import JobError
from gradjob.model.layout import Layout
from gradjob.model.spec import ModelSpec, load_model
from gradjob.model.usercode import with_notes
from gradjob.numerics import verify
from gradjob.numerics.evaluate import PerturbationFailure, numerical_gradient, per_element, step_sizes
from gradjob.numerics.noise import in_step, own_noise_steps
from gradjob.run import evaluators
from gradjob.run.plan import Chunk
from gradjob.storage import lock, store
from gradjob.trace import Untraceable
from gradjob.types import Calibration


@dataclass(frozen=True)
class Probe:
    """J as the client computed it with the real forward, at θ: every worker computes the same before
    its first chunk (see ``_check_probe``)."""

    indices: tuple[int, ...]
    values: tuple[float, ...]
    costs: tuple[float, ...]


SAME_FUNCTION = ("Likely causes: module-level state the client's calls changed (a dict or global the forward "
                 "reads), randomness drawn at import without a seed, or a cache kept between calls; make the "
                 "forward depend only on its arguments")


@dataclass(frozen=True)
class TaskContext:
    """What every task of one job shares; small, hashable, cheap to send."""

    store: str
    model: ModelSpec
    evaluator: str
    method: str
    epsilon: float | None
    calibration: Calibration
    computed_dtype: str
    token: str  # the job's identity digest: a new job never reuses a worker's cached θ
    probe: Probe | None = None  # a model file's or Python function's J on the client (built-ins: None)
    run: str | None = None  # the store lock's run token: a task outliving its job writes nothing (lock.fenced)


@dataclass(frozen=True)
class ChunkReport:
    seconds: float
    note: str | None = None  # a traced chunk that fell back to the forward, and why
    suspects: int = 0        # elements beyond their noise bound, to be re-verified (progress shows them)


class _Workspace:
    def __init__(self, context: TaskContext):
        self.context = context
        self.group = store.open_existing(context.store, mode="r+")
        self.meta = store.metadata(self.group)
        self.layout: Layout = self.meta.layout
        self.X, self.Y = store.read_case(self.group)
        self.model = load_model(context.model)
        self._forward = None
        if context.evaluator == "incremental":  # the built-in network holds b1…bL and streams W1
            self.costs = evaluators.build("incremental", self.model, self.layout, self.X, self.Y, None,
                                          read=partial(store.read_range, self.group, "theta"))
            self.fast = self.costs.__self__
            self.flips = None
            return
        self.fast = None
        self.theta = store.read_vector(self.group, "theta")  # this thread's own, writable copy
        if context.method == "complex-step":
            self.theta = self.theta.astype(np.result_type(self.theta.dtype, np.complex64))
        if context.probe is not None:  # before anything else calls the model here: its first call may set state
            _check_probe(context.probe, self.forward_costs(), self.layout, context.computed_dtype)
        try:
            self.costs = evaluators.build(context.evaluator, self.model, self.layout, self.X, self.Y, self.theta)
        except Untraceable as exc:
            raise JobError(f"the workers evaluate a different function than the client: the forward was traced on "
                           f"the client but not on a worker ({exc}). {SAME_FUNCTION}") from None
        self.flips = evaluators.switches(self.costs)  # the replay's switch question, whoever evaluates ladders

    def forward_costs(self):
        """The plain forward evaluator, for checking a traced chunk (built once, on first use)."""
        if self._forward is None:
            self._forward = evaluators.build("forward", self.model, self.layout, self.X, self.Y, self.theta.copy())
        return self._forward

    def original(self, start: int, stop: int) -> np.ndarray:
        """θ[start:stop], unperturbed."""
        if self.fast is not None:
            return self.fast.unperturbed(np.arange(start, stop))
        return self.theta[start:stop].copy()


def _check_probe(probe: Probe, forward, layout: Layout, computed_dtype: str) -> None:
    """``JobError`` unless this worker's forward gives the client's costs (to round-off of another
    machine's BLAS; on one machine, bit for bit)."""
    indices = np.asarray(probe.indices, dtype=np.int64)
    expected = np.asarray(probe.costs)
    try:
        got = np.real(forward(indices, np.asarray(probe.values), "~"))
    except PerturbationFailure as failure:
        raise JobError(f"the workers evaluate a different function than the client: the forward fails on a worker "
                       f"where it ran on the client ({failure.detail}). {SAME_FUNCTION}") from None
    bad = np.flatnonzero(~same_cost(expected, got, computed_dtype))
    if bad.size:
        k = int(bad[0])
        where = "J(θ)" if k == 0 else f"J with {layout.describe(int(indices[k]))} moved to {probe.values[k]:.17g}"
        raise JobError(f"the workers evaluate a different function than the client: {where} is {got[k]:.17g} on a "
                       f"worker but {expected[k]:.17g} on the client. {SAME_FUNCTION}")


def cost_changed(before: float, now: float, after: str) -> str:
    """The line ending a job whose forward gave another J at the same θ: no verdict can rest on it."""
    return (f"the forward's cost changed between calls at the same parameters: J(θ) was {before:.17g} and is "
            f"{now:.17g} after {after}; a forward with hidden state (a call counter, a cache, a dropout mask "
            "redrawn, randomness without a fixed seed) gives no verdict: make it depend only on its arguments")


def same_cost(before, now, computed_dtype: str):
    """Whether J asked again agrees with J asked before (on another machine: to its BLAS's round-off),
    for a cost or, elementwise, for arrays of them."""
    rtol = evaluators.REPLAY_RTOL.get(computed_dtype, 1e-11)
    return np.abs(now - before) <= rtol * np.maximum(1.0, np.abs(before))


def _cost_again(workspace: "_Workspace", context: TaskContext, after: str) -> None:
    """``JobError`` unless J(θ), asked again of the real forward after this task's evaluations, is
    still the client's: a forward whose calls change its state would otherwise give a verdict."""
    probe = context.probe
    if probe is None:  # built in: no state
        return
    try:
        now = float(np.real(workspace.forward_costs()(np.asarray(probe.indices[:1], dtype=np.int64),
                                                      np.asarray(probe.values[:1]), "~")[0]))
    except PerturbationFailure as failure:
        raise with_notes(JobError(f"the forward failed at the case's parameters after {after}, where it ran before: "
                                  f"{failure.detail}. {SAME_FUNCTION}"), failure) from None
    if not same_cost(probe.costs[0], now, context.computed_dtype):
        raise JobError(cost_changed(probe.costs[0], now, after))


_local = threading.local()


def _workspace(context: TaskContext) -> _Workspace:
    cached = getattr(_local, "workspace", None)
    key = replace(context, run=None)  # a resubmitted job's run differs; its θ and model do not
    if cached is None or cached[0] != key:
        _local.workspace = None  # free the previous job's θ before reading this one's
        _local.workspace = (key, _Workspace(context))
    return _local.workspace[1]


def _quiet(task):
    """Run ``task`` with the user's prints on stderr: a worker of the embedded cluster shares the
    client's stdout, which belongs to gradjob (``--json``)."""
    @functools.wraps(task)
    def run(*args):
        with contextlib.redirect_stdout(sys.stderr):
            return task(*args)
    return run


@_quiet
def evaluate_chunk(context: TaskContext, chunk: Chunk) -> ChunkReport:
    """The numerical gradient of ``chunk``, written to the store."""
    started = time.perf_counter()
    workspace = _workspace(context)
    layout = workspace.layout
    original = workspace.original(chunk.start, chunk.stop)
    steps = step_sizes(original, layout, chunk.start, context.calibration, context.epsilon)
    tensors = context.calibration.tensors
    noise = per_element(layout, chunk.start, chunk.size, [t.noise for t in tensors])
    curvature = per_element(layout, chunk.start, chunk.size, [t.curvature for t in tensors])
    note = None
    try:
        if context.evaluator == "traced":
            problem = evaluators.mismatch(workspace.costs, workspace.forward_costs(), layout, workspace.theta,
                                          context.computed_dtype, np.arange(chunk.start, chunk.stop), samples=2)
            if problem:
                note = f"chunk {chunk.index}: the traced fast path disagreed with the forward ({problem}); evaluated by the forward"
        fixed = context.epsilon is not None
        if context.evaluator == "traced" and note is None:
            try:
                result = numerical_gradient(workspace.costs, original, chunk.start, steps, noise, context.method,
                                            fixed=fixed, curvature=curvature)
                if workspace.flips is not None and not fixed and context.method == "central":
                    verify.off_kinks(workspace.costs, workspace.flips, original, chunk.start, result, noise, curvature,
                                     store.read_range(workspace.group, "grad", chunk.start, chunk.stop),
                                     layout.gradient_eps)
            except Exception as exc:  # the replay, not the model, failed: the forward decides
                detail = exc.detail if isinstance(exc, PerturbationFailure) else f"{type(exc).__name__}: {exc}"
                note = f"chunk {chunk.index}: the traced fast path failed ({detail}); evaluated by the forward"
        if context.evaluator != "traced" or note is not None:
            costs = workspace.forward_costs() if context.evaluator == "traced" else workspace.costs
            result = numerical_gradient(costs, original, chunk.start, steps, noise, context.method,
                                        fixed=fixed, curvature=curvature)
    except PerturbationFailure as failure:
        where = layout.describe(failure.index)
        raise with_notes(JobError(
            f"the forward failed at {where} {failure.sign} step (parameter {failure.index}, chunk "
            f"{chunk.index}): {failure.detail}; finished chunks are kept in the store"
        ), failure) from None
    _cost_again(workspace, context, f"evaluating chunk {chunk.index}")  # before its numbers are stored
    by_forward = context.evaluator == "traced" and note is not None  # its replay's switches are not used either
    with lock.fenced(context.store, context.run):
        store.write_chunk(workspace.group, chunk, asdict(result), by_forward)
    grad = store.read_range(workspace.group, "grad", chunk.start, chunk.stop)
    beyond = np.abs(grad - result.gradapprox) > verify.tolerance(grad, result.noise, layout.gradient_eps)
    return ChunkReport(time.perf_counter() - started, note, int(np.count_nonzero(beyond)))


def layout_names(layout: Layout, index: np.ndarray) -> str:
    """``W1[0, 2]`` or ``W1[0, 2] and 3 more``: the suspects of a ladder batch, as a line names them."""
    first = layout.describe(int(index[0]))
    return first if index.size == 1 else f"{first} and {index.size - 1} more"


@_quiet
def evaluate_ladders(context: TaskContext, indices: tuple[int, ...], first_steps: tuple[float, ...]) -> dict:
    """J at θ and at θᵢ ± hᵢ·10⁻ᵏ (see ``verify.ladder``) for a batch of suspects, each suspect's
    noise measured along its own coordinate, and, for a traced forward, which evaluations flip a
    switch (``Replay.flips``; -1 on a suspect whose chunk's replay was found wrong, or where the
    replay cannot tell: there the slopes decide)."""
    workspace = _workspace(context)
    index = np.asarray(indices, dtype=np.int64)
    original = np.concatenate([workspace.original(int(i), int(i) + 1) for i in index])
    plus, minus, step_plus, step_minus = verify.ladder(original, np.asarray(first_steps, dtype=np.float64))
    rungs = plus.shape[1]
    repeated = np.repeat(index, rungs)
    # the real forward, not a replay: a chunk's check samples only two of its elements, and a ladder's
    # "agrees" overrides the chunk's numbers (ladders are few evaluations); the replay still answers
    # which switches a rung flips, where the forward is traced
    costs = workspace.forward_costs() if context.evaluator == "traced" else workspace.costs
    flips, switched = workspace.flips, None
    trusted = np.zeros(index.size, dtype=bool)
    if flips is not None:  # where the forward is traced, kinks are found, not guessed, where the replay held
        trusted = ~store.replay_found_wrong(workspace.group, index)
        switched = tuple(np.full((index.size, rungs), -1, dtype=np.int64) for _ in range(2))
        try:
            for values, out in zip((plus, minus), switched if trusted.any() else ()):
                out[trusted] = flips(np.repeat(index[trusted], rungs), values[trusted].ravel()).reshape(-1, rungs)
        except Exception:  # the replay cannot tell: the slopes decide, as for a forward not traced
            trusted[:] = False
            for out in switched:
                out[:] = -1
    try:
        cost = costs(index, original, "")
        cost_plus = costs(repeated, plus.ravel(), "+").reshape(-1, rungs)
        cost_minus = costs(repeated, minus.ravel(), "-").reshape(-1, rungs)
        own = in_step(costs, {int(i): (own_noise_steps(original.dtype, float(c), float(o), bool(ok), h), float(o))
                              for i, o, c, h, ok in zip(index, original, cost, first_steps, trusted)},
                      original.dtype, flips, drop_failures=False)  # the suspects' lines together: one call a round
        noise = np.array([own[int(i)] for i in index])
    except PerturbationFailure as failure:
        raise with_notes(JobError(f"the forward failed at {workspace.layout.describe(failure.index)} while "
                                  f"re-verifying it on smaller steps: {failure.detail}"), failure) from None
    _cost_again(workspace, context, f"re-verifying {layout_names(workspace.layout, index)} on smaller steps")
    ladders = {"index": index, "cost": cost, "cost_plus": cost_plus, "cost_minus": cost_minus,
               "step_plus": step_plus, "step_minus": step_minus, "noise": noise}
    if switched is not None:
        ladders["flip_plus"], ladders["flip_minus"] = switched
    return ladders
