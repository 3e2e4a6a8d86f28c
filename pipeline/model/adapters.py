"""The shapes real code comes in, turned into gradjob's model: ``forward(X, Y, parameters)`` and
``backward(X, Y, cache)`` over a flat dict of named arrays (see ``api``).

- ``functions``: the seed's own convention, checked as given.
- ``loss``: one ``loss(X, y) -> (loss, grads)`` that reads its parameters from a dict the caller
  owns (cs231n's ``model.loss`` reading ``model.params``).
- ``lists``: parameters kept in lists (Nielsen's ``net.weights``, ``net.biases``), a cost over a
  list of ``(x, y)`` pairs and a per-example ``backprop(x, y)`` returning one list per parameter
  list; tensors are named ``weights[0]``, ``biases[1]``, ….

The user's code reads its parameters where it always does: each call puts gradjob's arrays (views
of θ, or the traced stand-ins of the fast path) into the caller's dict or lists, runs the code and
puts the caller's own arrays back, under a per-process lock (a worker's threads share the
caller's containers). Nothing is copied per call.

A little over gradjob's usual module size: the three shapes share the put-back discipline above,
which is clearest kept in one place.
"""

from __future__ import annotations

import dataclasses
import inspect
import threading
from typing import Callable, Mapping

import numpy as np

from gradjob.errors import InputError
from gradjob.model.cases import Case
from gradjob.model.imports import digest_of
from gradjob.model.layout import numeric_array
from gradjob.model.naming import shape_text
from gradjob.model.spec import ModelSpec

_LOCK = threading.RLock()


def _exclusive() -> threading.RLock:
    return _LOCK  # a module global: closures that use it still pickle (the lock itself cannot)


def spec_of(name: str, user: dict, forward: Callable, backward: Callable, kind: str) -> ModelSpec:
    """The model gradjob runs (``forward``, ``backward``) for the user's callables ``user`` (by
    role). Its identity is their source, ``kind``, and the modules their files import."""
    for role, function in user.items():
        if not callable(function):
            raise InputError(f"{role} must be callable; got {type(function).__name__}")
    names = [_qualname(f) for f in user.values()]
    source = "\0".join(_source(f) for f in user.values()) + f"\0{kind}"
    spec = ModelSpec(name or " / ".join(names), source, names[0], names[-1], (forward, backward))
    try:  # follow the imports of the user's files, not of this one
        modules = digest_of(dataclasses.replace(spec, functions=tuple(user.values())).imported_modules())
    except TypeError:  # a callable object or a partial: no source file to follow
        modules = ""
    return dataclasses.replace(spec, modules=modules)


def _qualname(function) -> str:
    return getattr(function, "__qualname__", None) or type(function).__name__


def _source(function) -> str:
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return f"{getattr(function, '__module__', '')}.{_qualname(function)}"


def numeric(value, what: str) -> np.ndarray:
    """X, Y and data arrays: real numbers or booleans."""
    return numeric_array(value, what, "fiub")


# --- forward(X, Y, parameters) / backward(X, Y, cache) -------------------------------------------

def functions(forward, backward, X, Y, parameters) -> tuple[ModelSpec, Case]:
    if not isinstance(parameters, Mapping) or not parameters:
        raise InputError("parameters must be a non-empty dict of numeric arrays")
    X, Y = numeric(X, "X"), numeric(Y, "Y")
    spec = spec_of("", {"forward": forward, "backward": backward}, forward, backward,
                   "forward(X, Y, parameters) / backward(X, Y, cache)")
    return spec, Case(X, Y, dict(parameters), f"arrays (X {shape_text(np.shape(X))}, Y {shape_text(np.shape(Y))})")


# --- slots: where the user's code reads each tensor ----------------------------------------------

def _slots(parameters, what: str) -> list[tuple[str, object, object]]:
    """(tensor name, container, key): ``container[key]`` is the array the user's code reads. A
    dict of arrays gives ``W1``…; a dict entry that is a list gives ``weights[0]``…."""
    if not isinstance(parameters, Mapping) or not parameters:
        raise InputError(f"{what} must be a non-empty dict of numeric arrays (or of lists of them)")
    slots = []
    for name, value in parameters.items():
        if isinstance(value, list):
            if not value:
                raise InputError(f"{what}[{name!r}] is an empty list; every list needs at least one array")
            slots += [(f"{name}[{i}]", value, i) for i in range(len(value))]
        elif isinstance(value, tuple):
            raise InputError(f"{what}[{name!r}] is a tuple; give the list the code reads (it is filled in place)")
        else:
            slots.append((str(name), parameters, name))
    return slots


def _bound(slots):
    """``run(code, parameters)``: ``code()`` with gradjob's arrays in the user's containers, and
    the user's own arrays back in them afterwards."""

    def run(code: Callable, parameters: Mapping):
        with _exclusive():
            saved = [container[key] for _, container, key in slots]
            try:
                for name, container, key in slots:
                    container[key] = parameters[name]
                return code()
            finally:
                for (_, container, key), value in zip(slots, saved):
                    container[key] = value

    return run


# --- loss(X, y) -> (loss, grads) -----------------------------------------------------------------

def loss(loss_function, params, X, y) -> tuple[ModelSpec, Case]:
    """cs231n style: ``loss(X, y)`` reads ``params`` (e.g. ``model.params``) and returns
    ``(loss, grads)``, grads keyed ``W1`` or ``dW1`` (lists for list entries)."""
    slots = _slots(params, "params")
    X, y = numeric(X, "X"), numeric(y, "y")
    run = _bound(slots)

    def forward(X, Y, parameters):
        return run(lambda: loss_function(X, Y), parameters)

    names = [name for name, _, _ in slots]

    def backward(X, Y, cache):
        return _with_every_gradient(_flat(cache), names)

    spec = spec_of(f"{_qualname(loss_function)} (loss(X, y) → (loss, grads))", {"loss": loss_function}, forward,
                   backward, "loss(X, y) -> (loss, grads)")
    case = Case(X, y, {name: container[key] for name, container, key in slots},
                f"arrays (X {shape_text(np.shape(X))}, y {shape_text(np.shape(y))})")
    return spec, case


def _with_every_gradient(grads: dict, names: list[str]) -> dict:
    """``grads``, once it holds a gradient for every tensor of ``params`` (under ``W1`` or ``dW1``);
    else the one line naming the keys the loss left out."""
    missing = [name for name in names if name not in grads and f"d{name}" not in grads]
    if missing:
        keys = ", ".join(repr(k) for k in grads) or "none"
        wanted = " and ".join(_entry("grads", name) for name in missing)
        raise InputError(f"loss's grads have no gradient for {', '.join(missing)} (its keys: {keys}); add {wanted}, "
                         f"the gradient of the loss with respect to {_entry('params', missing[0])}"
                         + (" and so on" if len(missing) > 1 else ""))
    return grads


def _entry(container: str, name: str) -> str:
    """``params['W1']`` for tensor ``W1``, ``params['weights'][0]`` for ``weights[0]``."""
    base, bracket, index = name.partition("[")
    return f"{container}[{base!r}][{index}" if bracket and index.endswith("]") else f"{container}[{name!r}]"


def _flat(grads) -> dict:
    """The loss's grads as a flat dict: lists expanded to ``name[0]``…; ``Layout`` then takes
    the gradient of ``W1`` from ``dW1`` or ``W1``."""
    if not isinstance(grads, Mapping):
        raise InputError(f"loss must return (loss, grads) with grads a dict; it returned {type(grads).__name__} "
                         "as grads")
    flat = {}
    for name, value in grads.items():
        if isinstance(value, (list, tuple)):
            flat.update({f"{name}[{i}]": v for i, v in enumerate(value)})
        else:
            flat[name] = value
    return flat


# --- Nielsen: lists of arrays, cost(data), backprop(x, y) -> (nabla_b, nabla_w) --------------------

def lists(cost, backprop, parameters, data, average: bool = True) -> tuple[ModelSpec, Case]:
    """``parameters`` maps names to the lists the code reads, in the order ``backprop`` returns
    their gradients (Nielsen: ``{"biases": net.biases, "weights": net.weights}`` for
    ``(nabla_b, nabla_w)``); ``data`` is a list of ``(x, y)`` pairs; ``cost(data)`` is the cost,
    the mean (``average=True``) or sum of ``backprop(x, y)`` over ``data`` its gradient."""
    if not isinstance(parameters, Mapping) or not all(isinstance(v, list) for v in parameters.values()):
        raise InputError("parameters must be a dict of the lists of arrays the code reads, "
                         "e.g. {'biases': net.biases, 'weights': net.weights}")
    slots = _slots(parameters, "parameters")
    X, Y = _stacked(data)
    groups = [(name, len(value)) for name, value in parameters.items()]
    run = _bound(slots)
    examples = _Examples()

    def forward(X, Y, parameters):
        return run(lambda: cost(examples.of(X, Y)), parameters), parameters

    def backward(X, Y, cache):
        pairs = examples.of(X, Y)
        total = None
        for nablas in run(lambda: [backprop(x, y) for x, y in pairs], cache):
            flat = _per_list(nablas, groups, cache)
            total = flat if total is None else {k: total[k] + v for k, v in flat.items()}
        return {k: v / len(pairs) for k, v in total.items()} if average else total

    spec = spec_of(f"{_qualname(cost)} / {_qualname(backprop)} (lists {', '.join(parameters)})",
                   {"cost": cost, "backprop": backprop}, forward, backward,
                   f"lists: cost(data) / backprop(x, y) averaged={average}")
    case = Case(X, Y, {name: container[key] for name, container, key in slots},
                f"data: {len(X)} (x, y) pairs, x {shape_text(np.shape(X[0]))}, y {shape_text(np.shape(Y[0]))}")
    return spec, case


class _Examples:
    """``data`` as the code takes it, rebuilt from the stacked X and Y once per process."""

    def __init__(self):
        self.key, self.pairs = None, None

    def of(self, X, Y) -> list:
        if self.key is None or self.key[0] is not X or self.key[1] is not Y:
            self.key, self.pairs = (X, Y), [(x, y.item() if y.ndim == 0 and y.dtype.kind in "iub" else y)
                                            for x, y in zip(X, Y)]
        return self.pairs

    def __reduce__(self):  # sent to workers empty
        return (_Examples, ())


def _stacked(data) -> tuple[np.ndarray, np.ndarray]:
    try:
        pairs = list(data)
    except TypeError:
        raise InputError(f"data must be a list of (x, y) pairs; got {type(data).__name__}") from None
    if not pairs or not all(isinstance(p, tuple) and len(p) == 2 for p in pairs):
        raise InputError("data must be a non-empty list of (x, y) pairs")
    try:
        X, Y = np.stack([np.asarray(x) for x, _ in pairs]), np.stack([np.asarray(y) for _, y in pairs])
    except ValueError:
        raise InputError("data: every x must have the same shape, and every y") from None
    return numeric(X, "data's x"), numeric(Y, "data's y")


def _per_list(nablas, groups, parameters) -> dict:
    """backprop's result (one list per parameter list, in order, or a dict of lists by name),
    keyed ``weights[0]``…; a list in another order than ``parameters`` is refused by its shapes."""
    if isinstance(nablas, Mapping):
        nablas = [nablas.get(name, nablas.get("d" + name)) for name, _ in groups]
    order = ", ".join(f"{name} ({size} arrays)" for name, size in groups)
    if not isinstance(nablas, (list, tuple)) or len(nablas) != len(groups) or \
            any(not isinstance(n, (list, tuple)) or len(n) != size for n, (_, size) in zip(nablas, groups)):
        raise InputError(f"backprop must return one list of gradients per parameter list, in the order {order}")
    flat = {}
    for k, ((name, _), n) in enumerate(zip(groups, nablas)):
        shapes = [np.shape(g) for g in n]
        wanted = [np.shape(parameters[f"{name}[{i}]"]) for i in range(len(n))]
        if [np.size(g) for g in n] != [int(np.prod(w)) for w in wanted]:
            raise InputError(f"backprop's list {k + 1} has shapes {shapes} but {name!r} has {wanted}; list the "
                             f"parameters in the order backprop returns their gradients (now {order})")
        flat.update({f"{name}[{i}]": np.asarray(g) for i, g in enumerate(n)})
    return flat
