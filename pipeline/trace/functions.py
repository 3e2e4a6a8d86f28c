"""The supported NumPy functions on traced values, each recorded as a node the replay evaluates:
``_record_ufunc`` for every elementwise ufunc, one rule per other function (``_dot``, ``_sum``,
``_mean``, ..., ``_index``), and ``_FUNCTIONS``, the table ``Traced.__array_function__`` looks
them up in. First, how any operation is recorded (``_operands``, ``_wrap``) and how views are
followed (``_Alias``, ``_view``: a write into one array must reach the others).

About 320 lines because the rules are read as one table: each sits beside the others that share
its helpers (``_reduce``, ``_reshape``), above the table that lists them all.

``Traced`` (``traced_array``) calls these functions from its methods, so it imports this module;
the six functions here that make a ``Traced`` or test for one import it when called.
"""

from __future__ import annotations

import operator
import weakref
from typing import TYPE_CHECKING

import numpy as np

from gradjob.trace.casts import _untangle
from gradjob.trace.graph import Ref, _current, _refuse, _Tape, np_name
from gradjob.trace.writes import LANES_REFUSED, inplace_out, substitute, ufunc_at

if TYPE_CHECKING:
    from gradjob.trace.array import Traced


# --- recording ----------------------------------------------------------------------------------

class _Alias:
    """Traced arrays that share memory (an array and its views), and whether one is a parameter."""

    def __init__(self, parameter: bool = False):
        self.parameter, self._members = parameter, []

    def add(self, traced: Traced) -> None:
        self._members.append(weakref.ref(traced))
        traced._alias = self

    def members(self):
        live = [m for m in (ref() for ref in self._members) if m is not None]
        if len(live) < len(self._members):  # views die in loops: a write must not visit each one ever taken
            self._members = [weakref.ref(m) for m in live]
        return live


def _view(source: Traced, view: Traced) -> Traced:
    """``view`` shares ``source``'s memory (as NumPy's .T, reshape, basic indexing do)."""
    if source._alias is None:
        _Alias().add(source)
    source._alias.add(view)
    return view


def _operands(values) -> tuple[_Tape, tuple, list]:
    """(tape, recorded operands, plain values) for a call's operands."""
    from gradjob.trace.array import Traced  # lazy: see the module docstring

    tape = None
    for v in values:  # the trace under way; a value left by an earlier one is a constant here
        if isinstance(v, Traced) and v._tape.open:
            if hasattr(type(v), "_mask_id"):  # lanes.Lanes
                _refuse(LANES_REFUSED)
            if tape is None:
                tape = v._tape
            elif v._tape is not tape:
                _refuse("values traced in two different traces are combined")
    if tape is None or not tape.open or _current.get() is not tape:
        _refuse("a traced value is used outside its trace (kept from an earlier call?)")
    values = [np.array(v._value) if isinstance(v, Traced) and v._tape is not tape else substitute(tape, v)
              for v in values]
    recorded = tuple(Ref(v._id) if isinstance(v, Traced) else tape.constant(v) for v in values)
    return tape, recorded, [_plain(v) for v in values]


def _wrap(tape: _Tape, op: str, operands: tuple, attrs: dict, value) -> Traced:
    from gradjob.trace.array import Traced  # lazy: see the module docstring

    return Traced(tape, tape.add(op, operands, attrs, value), value)


def _unary_node(op: str, x: Traced, attrs: dict, value) -> Traced:
    tape, operands, _ = _operands([x])
    return _wrap(tape, op, operands, attrs, value)


def _plain(obj):
    """The NumPy value of an operand (a Traced's value at θ)."""
    from gradjob.trace.array import Traced  # lazy: see the module docstring

    return obj._value if isinstance(obj, Traced) else obj


# --- the functions ------------------------------------------------------------------------------

def _record_ufunc(ufunc, method, inputs, kwargs):
    inputs, kwargs = _untangle(inputs), _untangle(kwargs)
    name = np_name(ufunc)
    if method == "at" and len(inputs) == 3 and not kwargs:
        return ufunc_at(ufunc, *inputs)
    if method != "__call__":
        _refuse(f"{name}.{method} is not supported")
    if kwargs.get("out") is not None:
        return inplace_out(ufunc, inputs, kwargs, _record_ufunc)  # A += B on a plain array A
    if "where" in kwargs:
        _refuse(f"{name} with where= is not supported")
    for key in kwargs:
        if key not in ("dtype", "casting", "signature", "order", "subok", "out"):
            _refuse(f"{name} with {key}= is not supported")
    kwargs = {k: v for k, v in kwargs.items() if k not in ("out", "order", "subok")}
    if ufunc is np.matmul:
        if kwargs:
            _refuse(f"{name} with {', '.join(kwargs)}= is not supported")
        return _matmul(*inputs, name="np.matmul")
    if ufunc.signature is not None or ufunc.nout != 1:
        _refuse(f"{name} is not supported")
    from gradjob.trace import lanes  # lazy: lanes imports Traced

    if any(isinstance(x, lanes.Lanes) for x in inputs):
        return lanes.ufunc(_record_ufunc, ufunc, inputs, kwargs)
    tape, operands, values = _operands(inputs)
    value = ufunc(*values, **kwargs)
    return _wrap(tape, "elementwise", operands, {"function": ufunc, "kwargs": kwargs}, value)


def _matmul(a, b, name: str):
    from gradjob.trace.array import Traced  # lazy: see the module docstring

    a, b = _untangle(a), _untangle(b)
    if np.ndim(_plain(a)) == 0 or np.ndim(_plain(b)) == 0:
        if name == "np.matmul":
            raise ValueError("matmul: Input operand does not have enough dimensions")
        # np.dot with a scalar multiplies, its operands converted to arrays (no weak Python scalars)
        return np.multiply(*(v if isinstance(v, Traced) else np.asarray(v) for v in (a, b)))
    if np.ndim(_plain(a)) > 2 or np.ndim(_plain(b)) > 2:
        _refuse(f"{name} of arrays with more than 2 dimensions is not supported")
    tape, operands, values = _operands([a, b])
    value = np.dot(*values) if name == "np.dot" else np.matmul(*values)
    return _wrap(tape, "matmul", operands, {}, value)


def _dot(a, b, out=None):
    if out is not None:
        _refuse("np.dot with out= is not supported")
    return _matmul(a, b, "np.dot")


def _axes(axis, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    return tuple(sorted(operator.index(a) % ndim if ndim else 0 for a in axes))


def _reduce(kind, function, a, axis, dtype, out, keepdims, extra):
    from gradjob.trace.array import Traced  # lazy: see the module docstring

    a = _untangle(a)
    if out is not None:
        _refuse(f"{np_name(function)} with out= is not supported")
    for key, given in extra.items():
        _refuse(f"{np_name(function)} with {key}= is not supported")
    if not isinstance(a, Traced):
        return function(a, axis=axis, **({"dtype": dtype} if dtype is not None else {}), keepdims=keepdims)
    keepdims = bool(keepdims) if keepdims is not np._NoValue else False
    kwargs = {"dtype": dtype} if dtype is not None else {}
    value = function(a._value, axis=axis, keepdims=keepdims, **kwargs)
    attrs = {"kind": kind, "axes": _axes(axis, a.ndim), "keepdims": keepdims,
             "dtype": None if dtype is None else np.dtype(dtype)}
    return _unary_node("reduce", a, attrs, value)


def _sum(a, axis=None, dtype=None, out=None, keepdims=False, **extra):
    return _reduce("sum", np.sum, a, axis, dtype, out, keepdims, extra)


def _mean(a, axis=None, dtype=None, out=None, keepdims=False, **extra):
    return _reduce("mean", np.mean, a, axis, dtype, out, keepdims, extra)


def _max(a, axis=None, out=None, keepdims=False, **extra):
    return _reduce("max", np.max, a, axis, None, out, keepdims, extra)


def _min(a, axis=None, out=None, keepdims=False, **extra):
    return _reduce("min", np.min, a, axis, None, out, keepdims, extra)


def _nansum(a, axis=None, dtype=None, out=None, keepdims=False, **extra):
    return _reduce("nansum", np.nansum, a, axis, dtype, out, keepdims, extra)


def _nanmax(a, axis=None, out=None, keepdims=False, **extra):
    return _reduce("nanmax", np.nanmax, a, axis, None, out, keepdims, extra)


def _nanmin(a, axis=None, out=None, keepdims=False, **extra):
    return _reduce("nanmin", np.nanmin, a, axis, None, out, keepdims, extra)


def _var(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False, **extra):
    """``np.var`` as NumPy's ``_methods._var`` computes it, step by step, in recorded operations."""
    a = _untangle(a)
    if out is not None or extra:
        _refuse(f"np.var/np.std with {'out' if out is not None else next(iter(extra))}= is not supported")
    if a.dtype.kind not in "fiub":
        _refuse("np.var/np.std of a complex array is not supported")
    count = np.intp(int(np.prod([a.shape[x] for x in _axes(axis, a.ndim)], dtype=np.int64)))
    if dtype is None and a.dtype.kind in "iub":
        dtype = np.dtype("f8")
    mean = _sum(a, axis, dtype, keepdims=True)
    mean = _divided(mean, count)
    x = np.square(np.subtract(a, mean))
    total = _sum(x, axis, dtype, keepdims=keepdims)
    return _divided(total, np.maximum(count - ddof, 0))


def _divided(value, count):
    """``true_divide(value, count, out=value, casting='unsafe')``: the division in the promoted
    type, the result in value's own."""
    result = np.true_divide(value, count)
    return result if result.dtype == value.dtype else result.astype(value.dtype)


def _std(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False, **extra):
    return np.sqrt(_var(a, axis, dtype, out, ddof, keepdims, **extra))


def _norm(x, ord=None, axis=None, keepdims=False):
    """``np.linalg.norm`` of a real array as NumPy computes it by default: sqrt(x·x) over all
    elements (the 2-norm of a vector, the Frobenius norm of a matrix)."""
    x = _untangle(x)
    default = ord is None or (ord in ("f", "fro") and x.ndim == 2) or (ord == 2 and x.ndim == 1)
    if axis is not None or keepdims or not default or x.dtype.kind not in "f":
        _refuse("np.linalg.norm other than the default norm of a real array over all its elements is not supported")
    flat = _reshape(x, (-1,))
    return np.sqrt(_matmul(flat, flat, "np.dot"))


def _transpose(a, axes=None):
    a = _untangle(a)
    value = np.transpose(_plain(a), axes)
    perm = tuple(range(a.ndim))[::-1] if axes is None else tuple(operator.index(x) % a.ndim for x in axes)
    return _view(a, _unary_node("transpose", a, {"axes": perm}, value))


def _reshape(a, shape=None, order="C", *, newshape=None, copy=None):
    a = _untangle(a)
    if order != "C":
        _refuse(f"reshape with order={order!r} is not supported")
    value = np.reshape(_plain(a), shape if shape is not None else newshape)
    if value.shape == a.shape:
        return a
    return _view(a, _unary_node("reshape", a, {"shape": value.shape}, value))


def _squeeze(a, axis=None):
    a = _untangle(a)
    return _reshape(a, np.squeeze(_plain(a), axis).shape)


def _expand_dims(a, axis):
    a = _untangle(a)
    return _reshape(a, np.expand_dims(_plain(a), axis).shape)


def _ravel(a, order="C"):
    return _reshape(_untangle(a), (-1,), order)


def _copy(a, order="K", subok=False):
    return _untangle(a).copy()


def _astype(x, dtype, /, *, copy=True, device=None):
    return _untangle(x).astype(dtype, copy=copy)


def _where(condition, x=None, y=None, /):
    if x is None or y is None:
        _refuse("np.where with one argument (the indices where a condition holds) is not supported")
    tape, operands, values = _operands(_untangle([condition, x, y]))
    return _wrap(tape, "elementwise", operands, {"function": np.where, "kwargs": {}}, np.where(*values))


def _clip(a, a_min=np._NoValue, a_max=np._NoValue, out=None, *, min=np._NoValue, max=np._NoValue, **kwargs):
    if out is not None or kwargs:
        _refuse("np.clip with out= or other keywords is not supported")
    low = a_min if a_min is not np._NoValue else (None if min is np._NoValue else min)
    high = a_max if a_max is not np._NoValue else (None if max is np._NoValue else max)
    tape, operands, values = _operands(_untangle([a, low, high]))
    return _wrap(tape, "elementwise", operands, {"function": np.clip, "kwargs": {}}, np.clip(*values))


def _like(function):
    def constant(a, *args, **kwargs):
        return function(_plain(_untangle(a)), *args, **kwargs)  # depends on shape and dtype only

    return constant


def _index(a, key):
    from gradjob.trace.array import Traced  # lazy: see the module docstring

    a = _untangle(a)
    key = _untangle(key)
    if isinstance(key, Traced):  # x[mask], the mask computed from the parameters
        from gradjob.trace.lanes import select  # lazy: lanes imports Traced

        return select(a, key)
    parts = key if isinstance(key, tuple) else (key,)
    if any(isinstance(p, Traced) for p in parts):
        _refuse("indexing with a traced array (an index computed from the parameters) is not supported")
    parts = tuple(p if isinstance(p, (int, np.integer, slice)) or p is None or p is Ellipsis
                  else np.asarray(p) for p in parts)
    for p in parts:
        if isinstance(p, np.ndarray) and p.dtype.kind not in "iub":
            raise IndexError("only integers, slices (`:`), ellipsis (`...`), numpy.newaxis (`None`) and "
                             "integer or boolean arrays are valid indices")
    value = a._value[parts]
    basic = not any(isinstance(p, np.ndarray) for p in parts)
    tape, operands, _ = _operands([a])
    frozen = tuple(tape.constant(p) if isinstance(p, np.ndarray) else p for p in parts)
    result = _wrap(tape, "index", operands, {"key": frozen}, value)
    return _view(a, result) if basic else result


_FUNCTIONS = {
    np.dot: _dot, np.sum: _sum, np.mean: _mean, np.max: _max, np.amax: _max, np.min: _min, np.amin: _min,
    np.transpose: _transpose, np.reshape: _reshape, np.squeeze: _squeeze, np.expand_dims: _expand_dims,
    np.var: _var, np.std: _std, np.nansum: _nansum, np.nanmax: _nanmax, np.nanmin: _nanmin, np.linalg.norm: _norm, np.ravel: _ravel, np.copy: _copy, np.astype: _astype, np.where: _where, np.clip: _clip,
    np.zeros_like: _like(np.zeros_like), np.ones_like: _like(np.ones_like), np.full_like: _like(np.full_like),
    np.shape: lambda a: np.shape(_plain(_untangle(a))), np.ndim: lambda a: np.ndim(_plain(_untangle(a))),
    np.size: lambda a, axis=None: np.size(_plain(_untangle(a)), axis),
}
