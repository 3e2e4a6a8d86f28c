"""One check, top to bottom: prepare → plan → evaluate → verify → reduce → outcome.

Every step that can refuse the request (``preflight``, ``reuse``) runs before the store is
touched. Work runs on an executor (``serial.SerialExecutor`` or ``cluster.DaskExecutor``),
opened only when there is work left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import platform
import sys
import time
from typing import Callable, NamedTuple

import numpy as np

from gradjob.errors import InputError, JobError
from gradjob.executors import limits
from gradjob.executors.protocol import Executor
from gradjob.executors.serial import SerialExecutor
from gradjob.model.cases import Case
from gradjob.model.spec import ModelSpec
from gradjob.numerics import noise, verdict, verify
from gradjob.numerics.reduce import reduce_gradients
from gradjob.run import evaluators, identity, preflight, reuse, reverify, tasks
from gradjob.run.plan import Plan, clamped_chunk_size, default_chunk_size, make_plan
from gradjob.run.progress import Progress
from gradjob.storage import lock, store, urls, verification
from gradjob.trace import Untraceable
from gradjob.types import Calibration, Outcome, Request, StoreMeta
from gradjob.version import __version__


# Under this much forward work (the calibration's time per evaluation × the evaluations left) a
# check runs in this process: an embedded cluster takes seconds to start (2 workers: ~6 s for the
# seed network's 47 parameters, whose evaluations take milliseconds).
SMALL_WORK_SECONDS = 2.0
PROBE_EVALUATIONS = 2  # a resumed store's evaluation time: the faster of this many


def run(request: Request, progress: Progress | None = None,
        executor: Callable[[], contextlib.AbstractContextManager] | None = None,
        model: ModelSpec | None = None, case: Case | None = None,
        cluster: Callable[[], contextlib.AbstractContextManager] | None = None) -> Outcome:
    """Run one check end to end and return its verdict. ``executor()`` opens where tasks run
    (default: ``cluster()``, the Dask cluster the request names, or this process when the work is
    small and no cluster was asked for, see ``SMALL_WORK_SECONDS``); ``model`` and ``case`` (the
    Python API) stand for the request's model and case names."""
    progress = progress or Progress()
    cluster = cluster or (lambda: _dask(request))
    if executor is None and (request.cluster or request.scheduler):
        executor = cluster
    seconds, notes = {}, []
    with _user_output_to_stderr():
        started = time.perf_counter()
        prepared = preflight.prepare(request, model, case)
        store_notes, afresh = reuse.existing_store(prepared)
        notes += [*prepared.notes, *store_notes]
        seconds["prepare"] = time.perf_counter() - started
        tracker = _Tracker(progress)
        with lock.holding(prepared.store, request.break_lock) as lock_note:
            notes += [lock_note] if lock_note else []
            resumed = None if afresh or not urls.exists(prepared.store) else resume(prepared)
            notes += resumed.notes if resumed else []
            if resumed and not resumed.plan.todo and resumed.verdicts is not None:
                meta, plan, verdicts = resumed.meta, resumed.plan, resumed.verdicts  # finished: nothing to run
                notes.append(f"verdict of the finished store {prepared.store}, no evaluation")
            elif executor is not None:
                with executor() as ex:  # connected first: an unreachable cluster refuses before a store is written
                    meta, plan, per_evaluation = started_job(prepared, resumed, seconds)
                    verdicts = evaluate(prepared, meta, plan, ex, progress, tracker, seconds, per_evaluation)
            else:
                meta, plan, per_evaluation = started_job(prepared, resumed, seconds)
                work = per_evaluation * evaluations(plan.todo, meta.method)
                if work < SMALL_WORK_SECONDS:
                    notes.append(f"ran in this process: about {work:.2g} s of forward work, less than starting a "
                                 "cluster takes (--workers N or --scheduler runs it on one)")
                with (SerialExecutor() if work < SMALL_WORK_SECONDS else cluster()) as ex:
                    verdicts = evaluate(prepared, meta, plan, ex, progress, tracker, seconds, per_evaluation)
        started = time.perf_counter()
        outcome = reduce_store(prepared.store, request.threshold, verdicts)  # a threshold asked now wins
        seconds["reduce"] = time.perf_counter() - started
    outcome.evaluated_chunks = len(plan.todo)
    outcome.notes = notes + tracker.notes
    outcome.task_seconds, outcome.peak_worker_rss_bytes, outcome.seconds = tracker.task_seconds, tracker.peak_rss, seconds
    return outcome


def started_job(prepared: preflight.Prepared, resumed: "Resumed | None", seconds: dict
                ) -> tuple[StoreMeta, Plan, float]:
    """The store to work on (resumed, or created after calibration) and the forward's measured
    seconds per evaluation, which size the task time limit and choose where small work runs."""
    if resumed is not None:
        return resumed.meta, resumed.plan, seconds_per_evaluation(as_stored(prepared, resumed.meta))
    meta, plan = create(prepared, seconds)
    spent = meta.calibration.evaluations
    per_evaluation = seconds["calibrate"] / spent if spent else seconds_per_evaluation(prepared)
    return meta, plan, per_evaluation


def evaluations(chunks, method: str) -> int:
    """Forward evaluations the chunks take, besides re-verifying suspects."""
    return sum(chunk.size for chunk in chunks) * evaluators.EVALUATIONS_PER_PARAMETER[method]


def seconds_per_evaluation(prepared: preflight.Prepared) -> float:
    """The evaluator's time per evaluation, the faster of ``PROBE_EVALUATIONS`` single ones (the
    first may pay for warming up): a resumed store, or a calibration that measured nothing."""
    layout, theta = prepared.layout, prepared.theta
    costs = evaluators.build(prepared.evaluator, prepared.model, layout, prepared.case.X, prepared.case.Y,
                             theta.copy())
    index = np.arange(1)
    times = []
    for _ in range(PROBE_EVALUATIONS):
        started = time.perf_counter()
        costs(index, theta[index].copy(), "")
        times.append(time.perf_counter() - started)
    return min(times)


class _Tracker:
    """What the chunks report back while they run."""

    def __init__(self, progress: Progress):
        self.progress, self.task_seconds, self.notes, self.peak_rss = progress, [], [], None

    def done(self, chunk, report: tasks.ChunkReport) -> None:
        self.task_seconds.append(report.seconds)
        if report.note:
            self.notes.append(report.note)
        self.progress.advance(chunk.size, report.suspects)


def plan_of(prepared: preflight.Prepared, done=None, chunk_size: int | None = None) -> Plan:
    """The plan of a prepared check, before (``gradjob submit --dry-run``) or after its store exists."""
    request, n = prepared.request, prepared.layout.n_parameters
    size = chunk_size or request.chunk_size or default_chunk_size(n, request.workers)
    steps = (f"ε = {request.epsilon:g}, fixed" if request.epsilon is not None
             else "automatic, from the forward's noise measured per tensor (ECnoise)")
    held = evaluators.held_bytes(prepared.evaluator, prepared.layout, prepared.case.X, prepared.case.Y,
                                 clamped_chunk_size(size, n))
    return make_plan(n, request.workers, size, done, store=prepared.store, evaluator=prepared.evaluator, steps=steps,
                     worker_bytes=held)


def as_stored(prepared: preflight.Prepared, meta: StoreMeta) -> preflight.Prepared:
    """``prepared`` with its store's evaluator: the job's identity names the traced path whichever of the
    replay and the forward measured faster (see ``evaluators.Choice``), and a store keeps the one it began with."""
    return dataclasses.replace(prepared, evaluator=meta.evaluator)


class Resumed(NamedTuple):
    meta: StoreMeta
    plan: Plan
    verdicts: dict | None  # None until the suspects are re-verified
    notes: list[str]


def resume(prepared: preflight.Prepared) -> Resumed:
    """The existing store of this job: its metadata, what is left to do (done chunks whose results
    fail their checksum are evaluated again), its verified suspects."""
    group = store.open_existing(prepared.store, mode="r")
    meta = store.metadata(group)
    done, notes = store.undamaged(group, meta, prepared.store)
    if meta.evaluator != prepared.evaluator:  # measured faster when the store was started: kept to its end
        notes.append(f"this store was started with the {meta.evaluator} evaluator; its remaining chunks use it too")
        prepared = as_stored(prepared, meta)
    verdicts, damaged = verification.read_to_resume(group, prepared.store)
    return Resumed(meta, plan_of(prepared, done, meta.chunk_size), verdicts, notes + damaged)


def create(prepared: preflight.Prepared, seconds: dict) -> tuple[StoreMeta, Plan]:
    """A new store for this job (replacing one of other code or ``--overwrite``), after measuring
    the forward's noise, which sets its steps."""
    request, path = prepared.request, prepared.store
    plan = plan_of(prepared)
    started = time.perf_counter()
    calibration = calibrate(prepared)
    seconds["calibrate"] = time.perf_counter() - started
    cost_again(prepared, "calibrating")
    meta = StoreMeta(
        identity=prepared.identity, layout=prepared.layout, chunk_size=plan.chunk_size, n_chunks=len(plan.chunks),
        epsilon=request.epsilon, method=request.method, threshold=prepared.threshold, cost=prepared.cost,
        evaluator=plan.evaluator, precision=prepared.precision, calibration=calibration,
        model=prepared.spec.describe(), case=prepared.case.description,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), versions=versions())
    if urls.exists(path):
        urls.remove(path)  # --overwrite of a gradjob store, or a store of other code (see ``reuse``)
    store.create(path, meta, prepared.theta, prepared.grad, prepared.case.X, prepared.case.Y)
    return meta, plan


def evaluate(prepared: preflight.Prepared, meta: StoreMeta, plan: Plan, executor: Executor, progress: Progress,
             tracker: "_Tracker", seconds: dict, per_evaluation: float) -> dict:
    """The chunks still to do, then the re-verification of suspects, on ``executor``, each task
    within the time limit (``--task-timeout``, else from ``per_evaluation``)."""
    context = task_context(prepared, meta)
    largest = max(evaluations([plan.chunks[0]], meta.method), reverify.LADDER_BATCH * (1 + 2 * verify.RUNGS))
    executor.task_timeout = prepared.request.task_timeout or limits.default_limit(per_evaluation, largest)
    progress.start(len(plan.chunks), len(plan.chunks) - len(plan.todo), executor.dashboard)
    started = time.perf_counter()
    executor.run_chunks(tasks.evaluate_chunk, context, plan.todo, tracker.done, meta.layout.describe, progress.note)
    seconds["evaluate"] = time.perf_counter() - started
    started = time.perf_counter()
    group = store.open_existing(prepared.store, mode="r+")
    verdicts = reverify.verify_suspects(group, prepared.store, meta, context, executor, progress)
    seconds["verify"] = time.perf_counter() - started
    tracker.peak_rss = executor.peak_worker_rss()
    progress.finish()
    return verdicts


def calibrate(prepared: preflight.Prepared) -> Calibration:
    """The forward's noise and the steps per tensor, measured with the chunks' own evaluator."""
    layout, theta = prepared.layout, prepared.theta
    if prepared.request.method == "complex-step":
        eps = float(np.finfo(theta.dtype).eps)
        return noise.fixed_calibration(layout, eps * abs(prepared.cost), noise.COMPLEX_STEP)
    try:
        costs = evaluators.build(prepared.evaluator, prepared.model, layout, prepared.case.X,
                                 prepared.case.Y, theta.copy())
    except Untraceable as exc:  # traced in preflight, not now: before the store is written
        raise InputError(f"the forward was traced once but not a second time ({exc}): it does not depend on its "
                         "arguments alone (module-level state its calls change, or a cache kept between calls); "
                         "make it so, or turn the traced fast path off (--no-fast, fast=False)") from None
    return noise.calibrate(costs, layout, theta, prepared.cost, prepared.request.method,
                           np.dtype(prepared.precision.checked))


def cost_again(prepared: preflight.Prepared, after: str) -> tasks.Probe | None:
    """J(θ) asked again of the real forward on the client, as the probe every worker must reproduce
    (built-in models: None); ``JobError`` where it is no longer the J(θ) ``prepare`` computed."""
    if prepared.spec.is_builtin:
        return None
    probe = tasks.Probe(*evaluators.probe(prepared.layout, prepared.model, prepared.case.X, prepared.case.Y,
                                          prepared.theta))
    if not tasks.same_cost(prepared.cost, probe.costs[0], prepared.precision.checked):
        raise JobError(tasks.cost_changed(prepared.cost, probe.costs[0], after))
    return probe


def task_context(prepared: preflight.Prepared, meta: StoreMeta) -> tasks.TaskContext:
    probe = cost_again(prepared, "preparing the job")  # workers must reproduce it
    return tasks.TaskContext(urls.location(prepared.store), prepared.spec, meta.evaluator, meta.method, meta.epsilon,
                             meta.calibration, meta.precision.checked, identity.digest(meta.identity), probe,
                             lock.run_token(prepared.store))


def reduce_store(path: str, threshold: float | None = None, verdicts: dict | None = None) -> Outcome:
    """The verdict of a finished store (``gradjob report``)."""
    if not urls.exists(path):
        raise InputError(f"there is no store at {path}")
    group = store.open_existing(path)
    meta = store.metadata(group)
    done = store.done_mask(group)
    if not done.all():
        missing = int((~done).sum())
        raise InputError(f"store {path} is unfinished: {missing} of {done.size} chunks not done; resubmit the job to resume")
    if verdicts is None:
        verdicts = verification.read_verification(group, path)
        if verdicts is None:
            raise InputError(f"store {path} is unfinished: its suspects were not re-verified yet; resubmit the job "
                             "to resume")
    threshold = verdict.asked_threshold(threshold, meta.threshold)
    with reverify.intact(path, meta):
        reduction = reduce_gradients(meta.layout, lambda a, b: store.iter_blocks(group, a, b), threshold, meta.cost,
                                     meta.calibration, verdicts, meta.layout.gradient_eps,
                                     replace=meta.epsilon is None)
    return Outcome(reduction, meta, path, meta.method, step_text(meta), meta.model, meta.case, meta.precision,
                   meta.evaluator)


def step_text(meta: StoreMeta) -> str:
    if meta.epsilon is not None:
        return f"ε = {meta.epsilon:g}, fixed"
    if meta.method == "complex-step":
        return f"h = {noise.COMPLEX_STEP:g}·max(1, |θᵢ|)"
    scales = [t.step_scale for t in meta.calibration.tensors]
    return (f"automatic per tensor from the measured noise: {min(scales):.2g}–{max(scales):.2g}·max(1, |θᵢ|)"
            if len(set(scales)) > 1 else f"automatic from the measured noise: {scales[0]:.2g}·max(1, |θᵢ|)")


def versions() -> dict:
    """The versions a store records, read from the installed packages' metadata: importing
    ``distributed`` for its version took 0.7 s of a 2.6 s check run in this process."""
    import importlib.metadata

    return {"gradjob": __version__, "numpy": np.__version__,
            **{name: importlib.metadata.version(name) for name in ("dask", "distributed", "zarr")},
            "python": platform.python_version()}


def _dask(request: Request):
    from gradjob.executors.cluster import DaskExecutor

    return DaskExecutor(request.scheduler, request.workers)


@contextlib.contextmanager
def _user_output_to_stderr():
    """Whatever the user's code prints goes to stderr: stdout is gradjob's (``--json``)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield
