"""The record rules: the supported NumPy functions on traced values, each recorded as a node the
replay evaluates: ``record_ufunc`` for every elementwise ufunc, one rule per other function
(``traced_dot``, ``traced_sum``, ..., ``traced_index``), and ``recorded_call``, any function as a
generic node. ``ops`` declares which NumPy function each rule records. First, how any operation
is recorded (``operands_of``, ``wrap``) and how views are followed (``Alias``, ``_view``: a write
into one array must reach the others).

About 340 lines because the rules are read as one table: each sits beside the others that share
its helpers (``_reduce``, ``traced_reshape``).

``Traced`` (``array``) calls these functions from its methods; they know it as ``TracedValue``
and make new ones through the tape (``Tape.make``), so they do not import it.
"""

from __future__ import annotations

import operator
import weakref

import numpy as np

from gradjob.trace.attrs import Axes, Call, Key, NoAttrs, Reduction, Shape, Slot, Ufunc
from gradjob.trace.casts import untangle
from gradjob.trace.graph import Ref, Tape, TracedValue, current_tape, np_name, refuse

LANES_REFUSED = ("x[mask] with a mask computed from the parameters is supported in elementwise operations with "
                 "scalars, stored back with the same mask (z[mask] = f(x[mask]))")  # see lanes


# --- recording ----------------------------------------------------------------------------------

class Alias:
    """TracedValue arrays that share memory (an array and its views), and whether one is a parameter."""

    def __init__(self, parameter: bool = False):
        self.parameter, self._members = parameter, []

    def add(self, traced: TracedValue) -> None:
        self._members.append(weakref.ref(traced))
        traced._alias = self

    def members(self):
        live = [m for m in (ref() for ref in self._members) if m is not None]
        if len(live) < len(self._members):  # views die in loops: a write must not visit each one ever taken
            self._members = [weakref.ref(m) for m in live]
        return live


def _view(source: TracedValue, view: TracedValue) -> TracedValue:
    """``view`` shares ``source``'s memory (as NumPy's .T, reshape, basic indexing do)."""
    if source._alias is None:
        Alias().add(source)
    source._alias.add(view)
    return view


def operands_of(values) -> tuple[Tape, tuple, list]:
    """(tape, recorded operands, plain values) for a call's operands."""
    tape = None
    for v in values:  # the trace under way; a value left by an earlier one is a constant here
        if isinstance(v, TracedValue) and v._tape.open:
            if v.is_lanes:
                refuse(LANES_REFUSED)
            if tape is None:
                tape = v._tape
            elif v._tape is not tape:
                refuse("values traced in two different traces are combined")
    if tape is None or not tape.open or current_tape.get() is not tape:
        refuse("a traced value is used outside its trace (kept from an earlier call?)")
    values = [np.array(v._value) if isinstance(v, TracedValue) and v._tape is not tape else tape.substitute(v)
              for v in values]
    recorded = tuple(Ref(v._id) if isinstance(v, TracedValue) else tape.constant(v) for v in values)
    return tape, recorded, [plain(v) for v in values]


def wrap(tape: Tape, op: str, operands: tuple, attrs, value) -> TracedValue:
    return tape.make(tape, tape.add(op, operands, attrs, value), value)


def unary_node(op: str, x: TracedValue, attrs, value) -> TracedValue:
    tape, operands, _ = operands_of([x])
    return wrap(tape, op, operands, attrs, value)


def plain(obj):
    """The NumPy value of an operand (a TracedValue's value at θ)."""
    return obj._value if isinstance(obj, TracedValue) else obj


# --- the functions ------------------------------------------------------------------------------

def record_ufunc(ufunc, method, inputs, kwargs):
    inputs, kwargs = untangle(inputs), untangle(kwargs)
    name = np_name(ufunc)
    if method != "__call__":
        refuse(f"{name}.{method} is not supported")
    if kwargs.get("out") is not None:
        refuse(f"{name} with out= is not supported")  # only out= of one array, see writes.inplace_out
    if "where" in kwargs:
        refuse(f"{name} with where= is not supported")
    for key in kwargs:
        if key not in ("dtype", "casting", "signature", "order", "subok", "out"):
            refuse(f"{name} with {key}= is not supported")
    kwargs = {k: v for k, v in kwargs.items() if k not in ("out", "order", "subok")}
    if ufunc is np.matmul:
        if kwargs:
            refuse(f"{name} with {', '.join(kwargs)}= is not supported")
        return _matmul(*inputs, name="np.matmul")
    if ufunc.signature is not None or ufunc.nout != 1:
        refuse(f"{name} is not supported")
    lanes = next((x for x in inputs if isinstance(x, TracedValue) and x.is_lanes), None)
    if lanes is not None:  # x[mask] with a traced mask: see lanes
        return lanes.elementwise(record_ufunc, ufunc, inputs, kwargs)
    tape, operands, values = operands_of(inputs)
    value = ufunc(*values, **kwargs)
    return wrap(tape, "elementwise", operands, Ufunc(ufunc, kwargs), value)


def _matmul(a, b, name: str):
    a, b = untangle(a), untangle(b)
    if np.ndim(plain(a)) == 0 or np.ndim(plain(b)) == 0:
        if name == "np.matmul":
            raise ValueError("matmul: Input operand does not have enough dimensions")
        # np.dot with a scalar multiplies, its operands converted to arrays (no weak Python scalars)
        return np.multiply(*(v if isinstance(v, TracedValue) else np.asarray(v) for v in (a, b)))
    if np.ndim(plain(a)) > 2 or np.ndim(plain(b)) > 2:  # batched (attention's Q @ K.transpose(0, 2, 1))
        return recorded_call(np.dot if name == "np.dot" else np.matmul, "matmul_nd")(a, b)
    tape, operands, values = operands_of([a, b])
    value = np.dot(*values) if name == "np.dot" else np.matmul(*values)
    return wrap(tape, "matmul", operands, NoAttrs(), value)


def traced_dot(a, b, out=None):
    if out is not None:
        refuse("np.dot with out= is not supported")
    return _matmul(a, b, "np.dot")


def _axes(axis, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    return tuple(sorted(operator.index(a) % ndim if ndim else 0 for a in axes))


def _reduce(kind, function, a, axis, dtype, out, keepdims, extra):
    a = untangle(a)
    if out is not None:
        refuse(f"{np_name(function)} with out= is not supported")
    for key, given in extra.items():
        refuse(f"{np_name(function)} with {key}= is not supported")
    if not isinstance(a, TracedValue):
        return function(a, axis=axis, **({"dtype": dtype} if dtype is not None else {}), keepdims=keepdims)
    keepdims = bool(keepdims) if keepdims is not np._NoValue else False
    kwargs = {"dtype": dtype} if dtype is not None else {}
    value = function(a._value, axis=axis, keepdims=keepdims, **kwargs)
    attrs = Reduction(kind, _axes(axis, a.ndim), keepdims, None if dtype is None else np.dtype(dtype))
    return unary_node("reduce", a, attrs, value)


def traced_sum(a, axis=None, dtype=None, out=None, keepdims=False, **extra):
    return _reduce("sum", np.sum, a, axis, dtype, out, keepdims, extra)


def traced_mean(a, axis=None, dtype=None, out=None, keepdims=False, **extra):
    return _reduce("mean", np.mean, a, axis, dtype, out, keepdims, extra)


def traced_max(a, axis=None, out=None, keepdims=False, **extra):
    return _reduce("max", np.max, a, axis, None, out, keepdims, extra)


def traced_min(a, axis=None, out=None, keepdims=False, **extra):
    return _reduce("min", np.min, a, axis, None, out, keepdims, extra)


def traced_nansum(a, axis=None, dtype=None, out=None, keepdims=False, **extra):
    return _reduce("nansum", np.nansum, a, axis, dtype, out, keepdims, extra)


def traced_nanmax(a, axis=None, out=None, keepdims=False, **extra):
    return _reduce("nanmax", np.nanmax, a, axis, None, out, keepdims, extra)


def traced_nanmin(a, axis=None, out=None, keepdims=False, **extra):
    return _reduce("nanmin", np.nanmin, a, axis, None, out, keepdims, extra)


def traced_var(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False, **extra):
    """``np.var`` as NumPy's ``_methods._var`` computes it, step by step, in recorded operations."""
    a = untangle(a)
    if out is not None or extra:
        refuse(f"np.var/np.std with {'out' if out is not None else next(iter(extra))}= is not supported")
    if a.dtype.kind not in "fiub":
        refuse("np.var/np.std of a complex array is not supported")
    count = np.intp(int(np.prod([a.shape[x] for x in _axes(axis, a.ndim)], dtype=np.int64)))
    if dtype is None and a.dtype.kind in "iub":
        dtype = np.dtype("f8")
    mean = traced_sum(a, axis, dtype, keepdims=True)
    mean = _divided(mean, count)
    x = np.square(np.subtract(a, mean))
    total = traced_sum(x, axis, dtype, keepdims=keepdims)
    return _divided(total, np.maximum(count - ddof, 0))


def _divided(value, count):
    """``true_divide(value, count, out=value, casting='unsafe')``: the division in the promoted
    type, the result in value's own."""
    result = np.true_divide(value, count)
    return result if result.dtype == value.dtype else result.astype(value.dtype)


def traced_std(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False, **extra):
    return np.sqrt(traced_var(a, axis, dtype, out, ddof, keepdims, **extra))


def traced_norm(x, ord=None, axis=None, keepdims=False):
    """``np.linalg.norm`` of a real array as NumPy computes it by default: sqrt(x·x) over all
    elements (the 2-norm of a vector, the Frobenius norm of a matrix)."""
    x = untangle(x)
    default = ord is None or (ord in ("f", "fro") and x.ndim == 2) or (ord == 2 and x.ndim == 1)
    if axis is not None or keepdims or not default or x.dtype.kind not in "f":
        refuse("np.linalg.norm other than the default norm of a real array over all its elements is not supported")
    flat = traced_reshape(x, (-1,))
    return np.sqrt(_matmul(flat, flat, "np.dot"))


def traced_transpose(a, axes=None):
    a = untangle(a)
    value = np.transpose(plain(a), axes)
    perm = tuple(range(a.ndim))[::-1] if axes is None else tuple(operator.index(x) % a.ndim for x in axes)
    return _view(a, unary_node("transpose", a, Axes(perm), value))


def traced_reshape(a, shape=None, order="C", *, newshape=None, copy=None):
    a = untangle(a)
    if order != "C":
        refuse(f"reshape with order={order!r} is not supported")
    value = np.reshape(plain(a), shape if shape is not None else newshape)
    if value.shape == a.shape:
        return a
    return _view(a, unary_node("reshape", a, Shape(value.shape), value))


def traced_squeeze(a, axis=None):
    a = untangle(a)
    return traced_reshape(a, np.squeeze(plain(a), axis).shape)


def traced_expand_dims(a, axis):
    a = untangle(a)
    return traced_reshape(a, np.expand_dims(plain(a), axis).shape)


def traced_ravel(a, order="C"):
    return traced_reshape(untangle(a), (-1,), order)


def traced_copy(a, order="K", subok=False):
    return untangle(a).copy()


def traced_astype(x, dtype, /, *, copy=True, device=None):
    return untangle(x).astype(dtype, copy=copy)


def traced_where(condition, x=None, y=None, /):
    if x is None or y is None:
        refuse("np.where with one argument (the indices where a condition holds) is not supported")
    tape, operands, values = operands_of(untangle([condition, x, y]))
    return wrap(tape, "elementwise", operands, Ufunc(np.where, {}), np.where(*values))


def traced_clip(a, a_min=np._NoValue, a_max=np._NoValue, out=None, *, min=np._NoValue, max=np._NoValue, **kwargs):
    if out is not None or kwargs:
        refuse("np.clip with out= or other keywords is not supported")
    low = a_min if a_min is not np._NoValue else (None if min is np._NoValue else min)
    high = a_max if a_max is not np._NoValue else (None if max is np._NoValue else max)
    tape, operands, values = operands_of(untangle([a, low, high]))
    return wrap(tape, "elementwise", operands, Ufunc(np.clip, {}), np.clip(*values))


def constant_like(function):
    def constant(a, *args, **kwargs):
        return function(plain(untangle(a)), *args, **kwargs)  # depends on shape and dtype only

    return constant


def traced_index(a, key):
    a = untangle(a)
    key = untangle(key)
    if isinstance(key, TracedValue):  # x[mask], the mask computed from the parameters
        return a._tape.select(a, key)
    parts = key if isinstance(key, tuple) else (key,)
    if any(isinstance(p, TracedValue) for p in parts):
        refuse("indexing with a traced array (an index computed from the parameters) is not supported")
    parts = tuple(p if isinstance(p, (int, np.integer, slice)) or p is None or p is Ellipsis
                  else np.asarray(p) for p in parts)
    for p in parts:
        if isinstance(p, np.ndarray) and p.dtype.kind not in "iub":
            raise IndexError("only integers, slices (`:`), ellipsis (`...`), numpy.newaxis (`None`) and "
                             "integer or boolean arrays are valid indices")
    value = a._value[parts]
    basic = not any(isinstance(p, np.ndarray) for p in parts)
    tape, operands, _ = operands_of([a])
    frozen = tuple(tape.constant(p) if isinstance(p, np.ndarray) else p for p in parts)
    result = wrap(tape, "index", operands, Key(frozen), value)
    return _view(a, result) if basic else result


# --- any other function: a generic node (see ``generic``) ---------------------------------------

_CONSTANT = (str, bytes, bool, int, float, complex, slice, type, np.dtype, np.generic)


def recorded_call(function, op: str):
    """The record rule of ``function`` as a generic ``Call`` node ``op``: the arrays among its
    positional arguments (in lists and tuples too) are its operands, every other argument is kept
    as given. Its keywords must be constants."""
    title = np_name(function)

    def rule(*args, **kwargs):
        args, kwargs = untangle(args), untangle(kwargs)
        if kwargs.get("out") is not None:
            refuse(f"{title} with out= is not supported")
        for key, given in kwargs.items():
            if isinstance(given, TracedValue):
                refuse(f"{title} with a traced {key}= is not supported")
        leaves: list = []
        template = _template(args, leaves)
        tape, operands, values = operands_of(leaves)
        attrs = Call(function, template, dict(kwargs))
        value = function(*attrs.arguments(values), **kwargs)
        if not isinstance(value, (np.ndarray, np.generic)):
            refuse(f"{title} giving a {type(value).__name__} is not supported")
        return wrap(tape, op, operands, attrs, value)

    rule.__name__ = f"recorded_{op}"
    return rule


def _template(obj, leaves: list):
    """``obj`` with each array in it replaced by its ``Slot`` (appended to ``leaves``)."""
    if isinstance(obj, (tuple, list)):
        parts = [_template(o, leaves) for o in obj]
        return tuple(parts) if isinstance(obj, tuple) else parts
    if obj is None or obj is Ellipsis or isinstance(obj, _CONSTANT):
        return obj
    leaves.append(obj)
    return Slot(len(leaves) - 1)
