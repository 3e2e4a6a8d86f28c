"""``Traced``: what the forward's parameters, and every value computed from them, are while the
forward is traced (see ``trace``): a stand-in for an ndarray that holds its NumPy value at θ and
its node in the graph. It answers every entry point NumPy and Python have for an array: the
dispatch protocols (NEP 13/18), operators, methods, ``len``/``shape``, text, conversions. It
computes with NumPy itself and records through the rules ``ops`` declares; conversions that
would freeze a value (``if``, ``float()``, text) and writes into parameters are refused.

About 350 lines because it is one class, and each entry point it answers sits in it.
"""

from __future__ import annotations

import sys

import numpy as np

from gradjob.trace import writes
from gradjob.trace.after import after_trace, live, values_of
from gradjob.trace.attrs import DType, NoAttrs
from gradjob.trace.casts import Cast, untangle
from gradjob.trace.functions import (
    Alias,
    traced_clip,
    traced_dot,
    traced_index,
    traced_max,
    traced_mean,
    traced_min,
    operands_of,
    plain,
    record_ufunc,
    traced_reshape,
    traced_squeeze,
    traced_std,
    traced_sum,
    traced_transpose,
    unary_node,
    traced_var,
)
from gradjob.trace.graph import Ref, Tape, TracedValue, Untraceable, np_name, refuse, user_line
from gradjob.trace.ops import FUNCTIONS


def _binary(ufunc):
    def forward(self, other):
        return ufunc(self, other)

    def reflected(self, other):
        return ufunc(other, self)

    return forward, reflected


def _augmented(ufunc):
    def inplace(self, other):
        return self._inplace(ufunc, other)

    return inplace


class Traced(TracedValue):
    """A value computed from the parameters: its NumPy value at θ and its node in the graph."""

    __slots__ = ("_tape", "_id", "_value", "_alias", "__weakref__")
    __array_priority__ = 1_000_000
    __hash__ = None  # as ndarray

    def __init__(self, tape: Tape, id: int, value):
        self._tape, self._id, self._value = tape, id, value
        self._alias: Alias | None = None  # the arrays this one shares memory with (views), if any

    # -- what is plain data, not a function of θ
    shape = property(lambda self: np.shape(self._value))
    ndim = property(lambda self: np.ndim(self._value))
    size = property(lambda self: int(np.size(self._value)))
    dtype = property(lambda self: self._value.dtype)
    itemsize = property(lambda self: self._value.dtype.itemsize)

    def __len__(self):
        return len(self._value)

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self)))

    # -- text: a value at θ as text could come back as a constant (float(f"{x}")), so not while traced
    def __repr__(self):
        if self._tape.open:
            refuse("a traced value as text (print, str(), repr(), f-strings, format) is not supported: "
                    "its value at θ could come back as a constant")
        return repr(self._value)

    def __str__(self):
        return self.__repr__() and str(self._value)

    def __format__(self, spec):
        return self.__repr__() and format(self._value, spec)

    # -- the NumPy protocols
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if not self._tape.open and not live(inputs, kwargs):
            return getattr(ufunc, method)(*values_of(inputs), **values_of(kwargs))
        if method == "at" and len(inputs) == 3 and not kwargs:  # np.add.at(A, key, v): see writes
            return writes.ufunc_at(ufunc, *untangle(inputs))
        if method == "__call__" and kwargs.get("out") is not None:  # A += B with A plain, np.exp(Z, out=Z)
            return writes.inplace_out(ufunc, untangle(inputs), untangle(kwargs), record_ufunc)
        return record_ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        if not self._tape.open and not live(args, kwargs):
            return func(*values_of(args), **values_of(kwargs))
        handler = FUNCTIONS.get(func)
        if handler is None:
            refuse(f"{np_name(func)} is not supported")
        return handler(*args, **kwargs)

    def __array__(self, dtype=None, copy=None):
        if not self._tape.open:
            return np.array(self._value, dtype=dtype, copy=True if copy else None)
        profile = self._tape.profile
        dot = profile.dot_of(self) if profile is not None else None
        if dot is not None:  # X.dot(self): see _Dot
            return dot.argument if dtype is None else dot.argument_as(np.dtype(dtype))
        stored = writes.stored(self, writes.user_frame(sys._getframe(1)), dtype)  # A[key] = self, A plain: see writes
        if stored is not None:
            return stored
        if dtype is not None and profile is not None and profile.converting():
            refuse(f"{np_name(profile.calls[-1][0])} of a traced array is not supported: it would be a plain array "
                    "holding its value at θ")
        if dtype is not None and self.ndim > 0:
            return Cast.of(self.astype(dtype))  # np.int64(A > 0): a cast, still traced
        refuse("converting a traced array to a plain NumPy array (np.asarray, np.array, storing it into "
                "an array, or a plain array's method such as X.dot(W): write np.dot(X, W) or X @ W) is not supported")

    # -- operators
    __add__, __radd__ = _binary(np.add)
    __sub__, __rsub__ = _binary(np.subtract)
    __mul__, __rmul__ = _binary(np.multiply)
    __truediv__, __rtruediv__ = _binary(np.true_divide)
    __floordiv__, __rfloordiv__ = _binary(np.floor_divide)
    __mod__, __rmod__ = _binary(np.remainder)
    __pow__, __rpow__ = _binary(np.power)
    __matmul__, __rmatmul__ = _binary(np.matmul)
    __and__, __rand__ = _binary(np.bitwise_and)
    __or__, __ror__ = _binary(np.bitwise_or)
    __xor__, __rxor__ = _binary(np.bitwise_xor)
    __lt__ = _binary(np.less)[0]
    __le__ = _binary(np.less_equal)[0]
    __gt__ = _binary(np.greater)[0]
    __ge__ = _binary(np.greater_equal)[0]
    __eq__ = _binary(np.equal)[0]
    __ne__ = _binary(np.not_equal)[0]
    __iadd__ = _augmented(np.add)
    __isub__ = _augmented(np.subtract)
    __imul__ = _augmented(np.multiply)
    __itruediv__ = _augmented(np.true_divide)
    __ifloordiv__ = _augmented(np.floor_divide)
    __imod__ = _augmented(np.remainder)
    __ipow__ = _augmented(np.power)
    __iand__ = _augmented(np.bitwise_and)
    __ior__ = _augmented(np.bitwise_or)
    __ixor__ = _augmented(np.bitwise_xor)

    def __imatmul__(self, other):
        refuse("in-place @= on a traced array is not supported")

    def __neg__(self):
        return np.negative(self)

    def __pos__(self):
        return np.positive(self)

    def __abs__(self):
        return np.absolute(self)

    def __invert__(self):
        return np.invert(self)

    # -- conversions and control flow: the value would be frozen
    def __bool__(self):
        refuse("Python control flow on a traced value (if, while, and, or, not, assert) is not supported")

    def __float__(self):
        return self._number(float, "float()")

    def __int__(self):
        refuse("int() of a traced value is not supported")

    def __complex__(self):
        refuse("complex() of a traced value is not supported")

    def __index__(self):
        if writes.store_key(self, writes.user_frame(sys._getframe(1))):
            raise TypeError("a traced mask, not an index")  # NumPy then asks __array__: see writes.stored
        refuse("using a traced value as an index or size is not supported")

    def __contains__(self, item):
        refuse("`in` on a traced array is not supported")

    def item(self, *args):
        if args:
            refuse(".item(i) of a traced value is not supported")
        return self._number(lambda value: value.item(), ".item()")

    def _number(self, convert, what: str):
        """A plain number made of a traced value is fine only as the cost the forward returns
        (``return float(cost), cache``): kept, and refused after the forward if it is anything else."""
        if self.size != 1 or self.dtype.kind != "f":
            refuse(f"{what} of a traced value is not supported")
        stored = writes.stored(self, writes.user_frame(sys._getframe(1)), None)  # A[i, j] = self, A plain: see writes
        if stored is not None:
            return convert(stored.reshape(()))
        number = convert(np.asarray(self._value).reshape(()))
        self._tape.numbers.append((number, self, Untraceable(
            f"{what} of a traced value is not supported, but on the cost the forward returns", user_line())))
        return number

    def tolist(self):
        refuse(".tolist() of a traced value is not supported")

    def __setitem__(self, key, value):
        """``A[key] = v``: A's next version (see ``writes``); arrays sharing A's memory (views) are
        refused from then on if the cost depends on them."""
        key, value = untangle(key), untangle(value)
        if self._alias is not None and self._alias.parameter:
            refuse("assignment into a parameter or a view of one (A[...] = ...) is not supported")
        if writes.masked(self, key, value) is None:
            writes.write(self, key, value)
        others = [m for m in self._alias.members() if m is not self] if self._alias is not None else []
        if others:
            refused = Untraceable("assignment into an array that shares memory with another (a view) is not "
                                  "supported", user_line())
            for member in others:
                member._id = self._tape.add("assigned", (Ref(member._id),), NoAttrs(), member._value, refused)

    def __reduce__(self):
        refuse("pickling a traced value is not supported")

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    def __getattr__(self, name):
        if name.startswith("__"):  # NumPy probing __array_interface__ and the like
            raise AttributeError(name)
        if not self._tape.open:
            return getattr(self._value, name)
        if hasattr(np.ndarray, name):
            refuse(f"the array method .{name} is not supported")
        raise AttributeError(f"'numpy.ndarray' object has no attribute {name!r}")

    # -- methods
    @property
    def T(self):
        return self.transpose()

    def transpose(self, *axes):
        if len(axes) == 1 and (axes[0] is None or isinstance(axes[0], (tuple, list))):
            axes = axes[0]
        return traced_transpose(self, axes or None)

    def reshape(self, *shape, order="C", copy=None):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = shape[0]
        return traced_reshape(self, tuple(shape), order=order)

    def ravel(self, order="C"):
        return traced_reshape(self, (-1,), order=order)

    def flatten(self, order="C"):
        return traced_reshape(self, (-1,), order=order).copy()

    def squeeze(self, axis=None):
        return traced_squeeze(self, axis)

    def copy(self, order="K"):
        return unary_node("copy", self, NoAttrs(), self._value.copy())

    def astype(self, dtype, order="K", casting="unsafe", subok=True, copy=True):
        dtype = np.dtype(dtype)
        if dtype == self.dtype and not copy:
            return self
        value = self._value.astype(dtype, casting=casting)
        return unary_node("astype", self, DType(dtype), value)

    sum, mean, max, min, var, std, dot = traced_sum, traced_mean, traced_max, traced_min, traced_var, traced_std, traced_dot  # as np.sum(self, ...)

    def clip(self, min=None, max=None, out=None, **kwargs):
        return traced_clip(self, min, max, out, **kwargs)

    def __getitem__(self, key):
        return traced_index(self, key)

    def _inplace(self, ufunc, other):
        """``A op= B``. A NumPy scalar is rebound (NumPy scalars are immutable); an array is
        updated in place, which this object then mirrors: every holder of it sees the new value,
        as with NumPy. Refused at once for parameters (it would write into θ); for an array that
        shares memory with others, all of them are refused if the cost depends on them."""
        if isinstance(self._value, np.generic):
            return ufunc(self, other)
        operator_name = _AUGMENTED.get(ufunc, ufunc.__name__)
        if self._alias is not None and self._alias.parameter:
            refuse(f"in-place {operator_name} on a parameter or a view of one is not supported")
        other = untangle(other)
        probe = self._value.copy()
        ufunc(probe, plain(other), out=probe)  # NumPy's own shape and casting rules, and errors
        if self._alias is not None and writes.next_op(writes.user_frame(sys._getframe(1))) == "STORE_SUBSCR":
            return ufunc(self, other)  # A[key] op= B: the store that follows is the write
        if self._alias is not None:
            self._refused_update(Untraceable(f"in-place {operator_name} on an array that shares memory with "
                                             "another (a view) is not supported", user_line()), probe, other)
            return self
        result = ufunc(self, other)
        if result.dtype != probe.dtype:
            result = unary_node("astype", result, DType(probe.dtype), probe)
        self._id, self._value = result._id, result._value
        return self


def _refused_update(self, refused: Untraceable, new, value) -> None:
    """``self`` was written into: it holds ``new``, and every array sharing its memory changed
    too. None of them can be replayed; each gets a refused node (refused only if the cost
    depends on it)."""
    tape, operands, _ = operands_of([self, value] if isinstance(value, Traced) else [self])
    self._id, self._value = tape.add("assigned", operands, NoAttrs(), new, refused), new
    for member in self._alias.members() if self._alias is not None else ():
        if member is not self:
            member._id = tape.add("assigned", (Ref(member._id),), NoAttrs(), member._value, refused)


Traced._refused_update = _refused_update

# once the trace is over, every method acts on the value at θ (see after_trace)
for _name in ("__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__", "__ipow__",
              "__iand__", "__ior__", "__ixor__", "__imatmul__", "__bool__", "__float__", "__int__", "__complex__",
              "__index__", "__contains__", "item", "tolist", "__setitem__", "__reduce__", "__copy__",
              "__deepcopy__", "transpose", "reshape", "ravel", "flatten", "squeeze", "copy", "astype", "sum",
              "mean", "max", "min", "var", "std", "dot", "clip", "__getitem__"):
    setattr(Traced, _name, after_trace(_name, getattr(Traced, _name)))
Traced.T = property(after_trace("T", Traced.T.fget))


_AUGMENTED = {np.add: "+=", np.subtract: "-=", np.multiply: "*=", np.true_divide: "/=",
              np.floor_divide: "//=", np.remainder: "%=", np.power: "**=", np.bitwise_and: "&=",
              np.bitwise_or: "|=", np.bitwise_xor: "^="}
