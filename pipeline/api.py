"""The Python API: check a hand-written backpropagation from Python, e.g. from a test suite.

    outcome = gradjob.check(forward, backward, X, Y, parameters, epsilon=1e-7)
    gradjob.assert_backprop(forward, backward, X, Y, parameters)      # in a pytest test

and the shapes real code comes in, with no glue (see ``adapters``):

    gradjob.check_loss(model.loss, model.params, X, y)                # cs231n: loss(X, y) -> (loss, grads)
    gradjob.check_lists(net.total_cost, net.backprop,                 # Nielsen: lists of arrays
                        {"biases": net.biases, "weights": net.weights}, data)

Each returns the check's ``Outcome``: ``outcome.passed`` and ``bool(outcome)`` are its verdict
(``.reduction.failing``, ``.reduction.tensors``; ``gradjob.report.to_text(outcome)`` / ``to_json``).
By default the check runs in this process on a temporary store that is removed afterwards: no
cluster, nothing left on disk.

Options (keyword only; they are ``gradjob submit``'s, and a bad value raises
``gradjob.errors.InputError`` with the CLI's one-line message):

- ``epsilon``: one fixed step for every parameter (default: per-tensor steps from the measured
  noise); ``method``: "central", "five-point" or "complex-step"; ``threshold``;
  ``precision``: "float64" (check float32 models in float64 where their code allows) or "model";
- ``fast`` (default True): replay a traced forward instead of calling it per perturbation, where
  the forward is traceable and the replay matches it (``outcome.evaluator`` says which ran);
- ``mode="directional"`` (with ``directions``, ``seed``): a quick screen, a few forward passes
  per tensor, no store;
- ``store``: keep the Zarr store at this path or URL (then ``overwrite``, ``resume``,
  ``break_lock`` as on the command line); ``chunk_size``; ``progress``: a
  ``gradjob.run.progress.Progress`` (default: silent; in a notebook, one line updated in place once a
  check runs more than a few seconds; ``progress=None``: silent there too);
- ``workers=N``: run on an embedded Dask cluster of N processes; ``scheduler="tcp://host:port"``:
  on an existing cluster. The forward and backward (and the objects they reference, e.g. the
  model whose ``loss`` is checked) then travel to the workers by cloudpickle: functions of an
  importable module by reference (the module must be importable on the workers), functions
  defined in ``__main__``, a notebook, inside another function or in a module loaded without a
  ``sys.modules`` entry by value. With ``scheduler=``,
  pass a ``store`` the workers can reach unless they share this machine's temporary directory.

A forward that raises or returns a non-finite cost at some perturbation raises
``gradjob.errors.JobError`` naming the parameter.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from gradjob import options as declared
from gradjob.errors import InputError, JobError
from gradjob.executors.serial import SerialExecutor
from gradjob.model import adapters
from gradjob.model.usercode import with_notes
from gradjob.report.text import to_text
from gradjob.run import job, preflight, screen
from gradjob.run.progress import InPlaceLine, Progress, in_notebook
from gradjob.types import Outcome, Request

__all__ = ["check", "check_loss", "check_lists", "assert_backprop", "assert_passed"]


OPTIONS = (*(option.name for option in declared.of(declared.API)), "progress")


def check(forward, backward, X, Y, parameters, **options) -> Outcome:
    """Check ``backward`` against central differences of ``forward`` at ``parameters``.

    ``forward(X, Y, parameters)`` returns ``cost`` or ``(cost, cache)``; ``backward(X, Y, cache)``
    returns a dict with the gradient of parameter ``W1`` as ``dW1`` or ``W1``. ``parameters`` is a
    dict of arrays (any names and shapes; float32 is checked in float64 where the code allows).
    Options: see the module's docstring. Returns the ``Outcome``; bad input raises ``InputError``.
    """
    __tracebackhide__ = True
    return _users_view(lambda: _run("check", *adapters.functions(forward, backward, X, Y, parameters), options))


def check_loss(loss, params, X, y, **options) -> Outcome:
    """Check a cs231n-style ``loss(X, y) -> (loss, grads)`` that reads its parameters from
    ``params`` (e.g. ``model.params``, checked with ``model.loss``), grads keyed ``W1`` or ``dW1``.

    During the check ``params`` holds gradjob's arrays; afterwards it holds the caller's again.
    Values of ``params`` may be lists of arrays (tensors ``name[0]``, ``name[1]``…, grads as lists
    under ``name``). The loss computes its gradient at every call, so a perturbation that calls it
    also pays for the backward part; with ``fast=True`` (the default) a traceable loss is traced
    once and only what the loss value depends on is replayed per perturbation.
    """
    __tracebackhide__ = True
    return _users_view(lambda: _run("check_loss", *adapters.loss(loss, params, X, y), options))


def check_lists(cost, backprop, parameters, data, *, average: bool = True, **options) -> Outcome:
    """Check Nielsen-style code: parameters in lists, a per-example ``backprop(x, y)``.

    ``parameters`` maps names to the lists the code reads, in the order ``backprop`` returns their
    gradients: ``{"biases": net.biases, "weights": net.weights}`` for ``(nabla_b, nabla_w)``;
    tensors are reported as ``biases[0]``, ``weights[1]``…. ``data`` is a list of ``(x, y)`` pairs;
    ``cost(data)`` is the cost and the mean (``average=False``: the sum) of ``backprop(x, y)``
    over ``data`` is checked as its gradient. The lists hold the caller's arrays again afterwards.
    """
    __tracebackhide__ = True
    return _users_view(lambda: _run("check_lists", *adapters.lists(cost, backprop, parameters, data, average), options))


def assert_passed(outcome: Outcome) -> Outcome:
    """``outcome`` if its check passed, else ``AssertionError`` whose message is the text report and
    the notes the CLI would print (a fallback to another path, a precision kept)."""
    __tracebackhide__ = True  # pytest shows the test's line and the report, not gradjob's frames
    if not outcome.reduction.passed:
        raise AssertionError("\n".join([to_text(outcome), *(f"note: {note}" for note in outcome.notes)]))
    return outcome


def assert_backprop(forward, backward, X, Y, parameters, **options) -> Outcome:
    """For a test suite: ``check`` and raise ``AssertionError`` with the text report (which tensor
    is wrong and how) unless it passes; returns the ``Outcome`` when it does. For the other
    shapes: ``gradjob.assert_passed(gradjob.check_loss(...))``."""
    __tracebackhide__ = True
    return assert_passed(check(forward, backward, X, Y, parameters, **options))


def _users_view(call):
    """``call()``; its one-line errors raised from here, without gradjob's frames (pytest printed
    them with their locals, θ and the case, above the message and the user's own frames)."""
    __tracebackhide__ = True
    try:
        return call()
    except (InputError, JobError) as exc:
        raise exc.with_traceback(None) from None


def request_of(function: str, options: dict) -> tuple[Request, Progress | None]:
    """The ``Request`` the options stand for, each value parsed as the CLI parses it."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"{function}() got an unexpected keyword argument {unknown[0]!r}; "
                        f"options are {', '.join(OPTIONS)}")
    if options.get("progress") is not None and not isinstance(options["progress"], Progress):
        raise TypeError(f"{function}(): progress must be a gradjob.run.progress.Progress (e.g. LogLines()) or None")
    values = {k: declared.BY_NAME[k].read(v) for k, v in options.items() if k != "progress" and v is not None}
    if "workers" in values and values.get("scheduler"):
        raise InputError(declared.WORKERS_WITH_SCHEDULER)
    if "workers" not in values and not values.get("scheduler"):
        values["workers"] = 1  # the serial executor: chunks sized for one
    values["cluster"] = options.get("workers") is not None  # workers=N asks for the embedded cluster, whatever the work
    progress = options["progress"] if "progress" in options else default_progress()
    return Request(model="python", **values), progress


def default_progress() -> Progress | None:
    """A line updated in place in a notebook (once a check runs a few seconds); silent elsewhere."""
    return InPlaceLine() if in_notebook() else None


def _run(function: str, spec, case, options: dict) -> Outcome:
    request, progress = request_of(function, options)
    if request.mode == "directional":
        return screen.screen(preflight.prepare(request, spec, case), request.directions, request.seed)
    on_dask = options.get("workers") is not None or bool(request.scheduler)
    executor = None if on_dask else SerialExecutor
    if request.store is not None:
        return job.run(request, progress, executor, spec, case)
    folder = tempfile.mkdtemp(prefix="gradjob-")
    try:
        outcome = job.run(request.replace(store=os.path.join(folder, "check.zarr")), progress, executor, spec, case)
        outcome.store = None  # removed below: no report names it
        return outcome
    except JobError as exc:
        kept = "; finished chunks are kept in the store"
        if kept not in str(exc):
            raise
        raise with_notes(JobError(str(exc).replace(kept, "; the temporary store is removed (pass store= to keep "
                                                         "finished chunks)")), exc) from exc.__cause__
    finally:
        shutil.rmtree(folder, ignore_errors=True)
