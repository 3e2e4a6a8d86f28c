"""One check from request to verdict: prepare (validate, hash) → store → evaluate → reduce.

All validation happens before the store is touched, so a refused request never changes an
existing store.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__, cluster, lock, store
from .cases import Case, load_case
from .errors import InputError
from .layout import Layout
from .evaluate import METHODS, PerturbationFailure, in_place_costs, numerical_gradient
from .fastpath import FastNetwork
from .models import BUILTIN_CASE_FOR, ModelSpec, as_cost, cost_function, load_model, model_spec
from .plan import Chunk, default_chunk_size, plan_chunks
from .reduce import IncompleteStore, Reduction, reduce_gradients
from .tasks import TaskContext, evaluate_chunk

# The seed's 2e-7 for float64; float32 round-off is ~1e9 times larger, so its differences are too.
DEFAULT_THRESHOLDS = {"float64": 2e-7, "float32": 1e-3, "float16": 1e-1}


@dataclass(frozen=True)
class Request:
    """Everything ``gradjob submit`` was asked for."""

    model: str = "seed-buggy"
    forward: str | None = None
    backward: str | None = None
    case: str | None = None
    layers: tuple[int, ...] = (4, 5, 3, 1)
    examples: int = 16
    seed: int = 0
    epsilon: float | None = None
    method: str = "central"
    fast: bool = True  # incremental evaluation where the model has it (the built-in network)
    threshold: float | None = None  # None: by θ's dtype, see DEFAULT_THRESHOLDS
    chunk_size: int | None = None
    workers: int = 2
    scheduler: str | None = None
    store: str | None = None
    store_dir: str = "gradjob-stores"  # where the default, identity-named store goes
    overwrite: bool = False
    resume: bool = False
    break_lock: bool = False


@dataclass
class Prepared:
    """A validated request: the model, the case as a flat θ, the analytic gradient, identity."""

    request: Request
    spec: ModelSpec
    case: Case
    layout: Layout
    theta: np.ndarray
    grad: np.ndarray
    cost: float
    threshold: float
    fast: bool
    identity: dict
    store: str


@dataclass
class Outcome:
    reduction: Reduction
    meta: dict
    store: str
    evaluated_chunks: int = 0
    notes: list[str] = field(default_factory=list)
    task_seconds: list[float] = field(default_factory=list)  # compute time of each chunk evaluated
    peak_worker_rss_bytes: int | None = None


class Progress:
    """Hooks for a progress display; the default shows nothing."""

    def start(self, total: int, already_done: int, dashboard: str | None) -> None: ...

    def advance(self) -> None: ...

    def note(self, text: str) -> None: ...


def check_options(request: Request) -> None:
    if request.epsilon is not None and not (math.isfinite(request.epsilon) and request.epsilon > 0):
        raise InputError(f"--epsilon must be a positive finite number; got {request.epsilon}")
    if request.threshold is not None and not (math.isfinite(request.threshold) and request.threshold > 0):
        raise InputError(f"--threshold must be a positive finite number; got {request.threshold}")
    if request.method not in METHODS:
        raise InputError(f"--method must be one of {', '.join(METHODS)}; got {request.method!r}")
    if request.chunk_size is not None and request.chunk_size < 1:
        raise InputError(f"--chunk-size must be at least 1; got {request.chunk_size}")
    if request.workers < 1:
        raise InputError(f"--workers must be at least 1; got {request.workers}")
    if request.overwrite and request.resume:
        raise InputError("--overwrite and --resume contradict each other; choose one")


def prepare(request: Request) -> Prepared:
    """Validate everything that can be validated on the client and compute the analytic gradient."""
    check_options(request)
    spec = model_spec(request.model, request.forward, request.backward)
    case_name = request.case or BUILTIN_CASE_FOR.get(request.model, "seed")
    case = load_case(case_name, list(request.layers), request.examples, request.seed)
    layout = Layout.of(case.parameters)
    theta = layout.flatten(case.parameters)
    model = load_model(spec)
    cost, grad = analytic_gradient(model, case, layout, theta)
    if request.method == "complex-step":
        check_complex_safe(model, case, layout, theta)
    identity = {
        "model": spec.digest(),
        "case": case.digest(),
        "theta": hashlib.sha256(theta.tobytes()).hexdigest(),
        "layout": hashlib.sha256(repr(layout.to_json()).encode()).hexdigest(),
        "epsilon": request.epsilon if request.epsilon is not None else "auto",
        "method": request.method,
    }
    fast = (request.fast and spec.is_builtin and spec.name == "network" and request.method != "complex-step"
            and FastNetwork.supports(layout, case.X))
    identity["evaluator"] = "incremental" if fast else "forward"
    path = request.store or default_store_path(spec, case_name, identity, request.store_dir)
    threshold = request.threshold if request.threshold is not None else default_threshold(layout.dtype)
    return Prepared(request, spec, case, layout, theta, grad, cost, threshold, fast, identity, path)


def default_threshold(dtype: str) -> float:
    return DEFAULT_THRESHOLDS.get(dtype, DEFAULT_THRESHOLDS["float64"])


def analytic_gradient(model, case: Case, layout: Layout, theta: np.ndarray) -> tuple[float, np.ndarray]:
    """J(θ) and the backward's gradient at θ; refuses a forward that is not deterministic."""
    views = layout.views(theta)
    try:
        first = model.forward(case.X, case.Y, views)
        second = model.forward(case.X, case.Y, views)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"the forward raised at the case's parameters: {type(exc).__name__}: {exc}") from None
    cost, again = as_cost(first), as_cost(second)
    if not math.isfinite(cost):
        raise InputError(f"the forward's cost at the case's parameters is {cost}; the check needs a finite cost")
    if cost != again:
        raise InputError(
            f"the forward is not deterministic: two evaluations at the same θ gave {cost!r} and {again!r}; "
            "fix its randomness (e.g. one dropout mask for the whole job) before checking"
        )
    cache = first[1] if isinstance(first, tuple) and len(first) > 1 else None
    try:
        gradients = model.backward(case.X, case.Y, cache)
    except Exception as exc:
        raise InputError(f"the backward raised: {type(exc).__name__}: {exc}") from None
    grad = layout.flatten_gradients(gradients)
    if not np.all(np.isfinite(grad)):
        raise InputError(f"the backward returned non-finite gradient values (first at {layout.describe(int(np.flatnonzero(~np.isfinite(grad))[0]))})")
    return cost, grad


def check_complex_safe(model, case: Case, layout: Layout, theta: np.ndarray, probes: int = 5) -> None:
    """Refuse complex step for a forward that drops or mangles imaginary parts.

    At a few parameters spread over θ the complex-step derivative must agree with central
    differences; abs, comparisons, ``.real`` or real-only functions on θ break that.
    """
    advice = "use --method central or five-point"
    complex_theta = theta.astype(np.result_type(theta.dtype, np.complex64))
    complex_cost = in_place_costs(cost_function(model, case.X, case.Y, layout.views(complex_theta)), complex_theta)
    real_cost = in_place_costs(cost_function(model, case.X, case.Y, layout.views(theta)), theta)
    for i in np.unique(np.linspace(0, theta.size - 1, min(probes, theta.size)).astype(int)):
        where = layout.describe(int(i))
        try:
            by_complex = numerical_gradient(complex_cost, complex_theta[i:i + 1].copy(), i, None, "complex-step").gradapprox[0]
        except PerturbationFailure as failure:
            raise InputError(f"the forward is not complex-safe: with a complex {where} it failed ({failure.detail}); {advice}") from None
        except InputError as exc:
            raise InputError(f"the forward is not complex-safe: with a complex {where}, {exc}; {advice}") from None
        by_central = numerical_gradient(real_cost, theta[i:i + 1].copy(), i, None, "central").gradapprox[0]
        if abs(by_complex - by_central) > 1e-5 * (abs(by_complex) + abs(by_central)) + 1e-9:
            raise InputError(
                f"the forward is not complex-safe: at {where} complex step gives {by_complex:.6g} but central "
                f"differences {by_central:.6g} (abs, comparisons or real-only functions on θ?); {advice}"
            )


def default_store_path(spec: ModelSpec, case_name: str, identity: dict, folder: str = "gradjob-stores") -> str:
    """``<folder>/<model>-<case>-<hash>.zarr``: the same job always finds its own store, and a
    job with other weights or another model never collides with it."""
    stem = Path(spec.name).stem if not spec.is_builtin else spec.name
    digest = hashlib.sha256(repr(sorted(identity.items())).encode()).hexdigest()[:10]
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{stem}-{Path(case_name).name}")
    return store.join(folder, f"{label}-{digest}.zarr")


def check_existing_store(prepared: Prepared) -> None:
    """Refuse, reading only, a store this job may not resume or replace."""
    request, path = prepared.request, prepared.store
    if not store.exists(path):
        if request.resume:
            raise InputError(f"--resume: there is no store at {path} to resume")
        return
    if request.overwrite:
        if not store.recognised(path):
            raise InputError(f"{path} exists and is not a gradjob store; --overwrite deletes only gradjob stores")
        return
    meta = store.metadata(store.open_existing(path, mode="r"))  # refuses a store that is not intact
    differing = [k for k, v in prepared.identity.items() if meta["identity"].get(k) != v]
    if differing:
        raise InputError(
            f"store {path} was made by another job ({', '.join(differing)} differ); "
            "choose another --store or pass --overwrite to start afresh"
        )
    if request.chunk_size is not None and request.chunk_size != meta["chunk_size"]:
        raise InputError(
            f"store {path} is chunked by {meta['chunk_size']}; resume with --chunk-size {meta['chunk_size']} "
            "or pass --overwrite"
        )


def open_or_create_store(prepared: Prepared, chunk_size: int | None, n_workers: int) -> tuple[dict, list[Chunk]]:
    """Resume a store of the same job or create a new one; returns metadata and the chunks to do.
    ``check_existing_store`` has already refused what may not be resumed or replaced."""
    request, path = prepared.request, prepared.store
    if store.exists(path) and not request.overwrite:
        group = store.open_existing(path, mode="r")
        meta = store.metadata(group)
        chunks = plan_chunks(prepared.layout.n_parameters, meta["chunk_size"])
        done = store.done_mask(group)
        return meta, [c for c in chunks if not done[c.index]]
    size = chunk_size or default_chunk_size(prepared.layout.n_parameters, n_workers)
    chunks = plan_chunks(prepared.layout.n_parameters, size)
    meta = {
        "identity": prepared.identity,
        "layout": prepared.layout.to_json(),
        "chunk_size": size,
        "n_chunks": len(chunks),
        "epsilon": request.epsilon,
        "method": request.method,
        "threshold": prepared.threshold,
        "cost": prepared.cost,
        "evaluator": prepared.identity["evaluator"],
        "model": prepared.spec.describe(),
        "case": prepared.case.description,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    if request.overwrite and store.exists(path):
        store.remove(path)  # check_existing_store made sure it is a gradjob store (intact or not)
    store.create(path, meta, prepared.theta, prepared.grad, prepared.case.X, prepared.case.Y, size, len(chunks))
    return meta, list(chunks)


def versions() -> dict:
    import dask
    import distributed
    import zarr

    return {"gradjob": __version__, "numpy": np.__version__, "dask": dask.__version__,
            "distributed": distributed.__version__, "zarr": zarr.__version__,
            "python": platform.python_version()}


def submit(request: Request, progress: Progress | None = None) -> Outcome:
    """Run one check end to end and return its verdict."""
    progress = progress or Progress()
    prepared = prepare(request)
    check_existing_store(prepared)
    task_seconds, peak_rss = [], None

    def done(chunk: Chunk, seconds: float) -> None:
        task_seconds.append(seconds)
        progress.advance()

    with lock.holding(prepared.store, request.break_lock) as note:
        meta, todo = open_or_create_store(prepared, request.chunk_size, request.workers)
        if todo:
            context = TaskContext(store.location(prepared.store), prepared.spec, request.epsilon, request.method,
                                  prepared.fast, hashlib.sha256(
                repr(sorted(prepared.identity.items())).encode()).hexdigest())
            with cluster.dask_client(request.scheduler, request.workers) as client:
                progress.start(meta["n_chunks"], meta["n_chunks"] - len(todo), cluster.dashboard_link(client))
                cluster.run_chunks(client, evaluate_chunk, context, todo, done, prepared.layout.describe,
                                   progress.note)
                peak_rss = cluster.peak_worker_rss(client)
    outcome = reduce_store(prepared.store, prepared.threshold)
    outcome.evaluated_chunks = len(todo)
    outcome.notes += [note] if note else []
    outcome.task_seconds, outcome.peak_worker_rss_bytes = task_seconds, peak_rss
    return outcome


def reduce_store(path: str, threshold: float | None = None) -> Outcome:
    """The verdict of a finished store (``gradjob report``)."""
    if not store.exists(path):
        raise InputError(f"there is no store at {path}")
    group = store.open_existing(path)
    meta = store.metadata(group)
    layout = Layout.from_json(meta["layout"])
    done = store.done_mask(group)
    if not done.all():
        missing = int((~done).sum())
        raise InputError(f"store {path} is unfinished: {missing} of {done.size} chunks not done; resubmit the job to resume")
    threshold = threshold if threshold is not None else meta["threshold"]
    try:
        reduction = reduce_gradients(layout, lambda a, b: store.iter_blocks(group, a, b), threshold, meta["cost"])
    except IncompleteStore as gap:
        raise InputError(
            f"store {path} is corrupted: chunk data for {layout.describe(gap.index)} is missing although its "
            "chunk is marked done; resubmit with --overwrite"
        ) from None
    return Outcome(reduction, meta, path)
