"""Recording a user's NumPy forward once, as a graph that ``replay`` evaluates incrementally.

Longer than gradjob's other modules (about 1,100 lines) because it is one protocol: ``Traced``
must answer every NumPy entry point (NEP 13/18 dispatch, operators, methods, casts) and each
supported function's recording rule sits in one table beside the others. Splitting the table
from the class is planned work.

``Replay.of(forward, X, Y, layout, theta)`` calls the forward once with each parameter wrapped in
``Traced``, a stand-in for an ndarray that computes every operation with NumPy itself (so the
traced cost is the real forward's, bit for bit) and records it. X, Y and everything not computed
from the parameters stay plain arrays: constants of the graph (copied when recorded). Values
derived from parameters are never frozen: a mask such as ``Z > 0`` is a node of the graph,
recomputed under every perturbation.

Supported on parameters and on values computed from them (this list is the README's):

- ``np.dot``, ``@``/``np.matmul``, ``.dot`` (operands of 1 or 2 dimensions; ``np.dot`` with a
  scalar), including ``X.dot(W)`` with X a plain array;
- every elementwise NumPy ufunc, called or through an operator, with broadcasting, with Python
  scalars or constant arrays on either side: ``+ - * / // % **``, unary ``-``, ``abs()``,
  ``np.add``/``subtract``/``multiply``/``divide``/``power``/``negative``,
  ``np.maximum``/``minimum``, ``np.exp``/``log``/``log1p``/``tanh``/``sqrt``/``abs``/``square``
  and the rest; comparisons (``A > 0``) and ``& | ^`` on masks; ``np.where(cond, a, b)``,
  ``np.clip``/``.clip``;
- ``np.sum``/``mean``/``max``/``min``/``amax``/``amin``/``nansum``/``nanmax``/``nanmin`` and the
  methods ``.sum``/``.mean``/``.max``/``.min``, with ``axis``, ``keepdims`` and ``dtype``;
  ``np.var``/``np.std``/``.var``/``.std`` (with ``ddof``); ``np.linalg.norm(x)`` (the default
  norm, over all elements);
- ``.T``, ``np.transpose``/``.transpose``, ``np.reshape``/``.reshape``, ``np.squeeze``/``.squeeze``,
  ``np.expand_dims``, ``np.ravel``/``.ravel``/``.flatten``, ``np.copy``/``.copy``,
  ``.astype``/``np.astype``, and NumPy's scalar types as casts (``np.int64(A > 0)``);
- indexing with constants: integers, slices, ``None``, ``...``, integer and boolean arrays
  (``scores[np.arange(N), y]``);
- ``len()``, ``.shape``, ``.ndim``, ``.size``, ``.dtype``, iterating over the first axis,
  ``np.zeros_like``/``ones_like``/``full_like`` (constants), printing a value;
- augmented assignment: ``loss += reg`` on scalars; ``scores -= scores.max(axis=1, keepdims=True)``
  on arrays that share memory with no other (no views).

Values keep the dtypes the real forward gives them (a forward computing in float32 is replayed
in float32). Anything else raises ``Untraceable`` naming the operation and the user's line
(``file.py:LINE``, the innermost frame outside NumPy and gradjob):

- NumPy functions outside the list (``np.linalg.svd``, ``np.concatenate``, ``np.einsum``, ...),
  ufunc methods (``np.add.reduce``), ufuncs with more than one output;
- ``out=`` and ``where=`` arguments, which includes ``A += B`` with A a plain array;
- writing into a parameter or a view of one (``W[0] = 0``, ``W += 1``);
- Python control flow or conversion on a traced value: ``if``/``while``/``and``/``assert``,
  ``float()``, ``int()``, ``.item()``, ``.tolist()``, ``np.asarray``/``np.array``, storing it into
  a plain array; indexing with a traced index (``v[v > 0]``);
- a cost not computed from the parameters, or not one floating-point value;
- and, only when the cost depends on the array written: assignment into a traced array
  (``A[...] = v``) and augmented assignment to an array that shares memory with another. So a
  gradient computed beside the loss (cs231n's ``dx[np.arange(N), y] -= 1``) is no obstacle.

A forward that raises while traced is refused with its error. Tracing leaves the user's objects
as a real forward would: a traced value the forward kept (a running mean in a dict) acts as its
value at θ once the trace is over.
"""

from __future__ import annotations

import builtins
import contextvars
import operator
import os
import sys
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_NUMPY_DIR = os.path.dirname(np.__file__) + os.sep
_OWN_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class Untraceable(Exception):
    """The forward cannot be replayed. str(exc) is one line naming the operation and the user's
    line, e.g. "np.linalg.svd is not supported (model.py:42)"."""

    def __init__(self, reason: str, where: str = ""):
        super().__init__(f"{reason} ({where})" if where else reason)
        self.reason, self.where = reason, where


def user_line() -> str:
    """``file.py:LINE`` of the innermost frame outside NumPy and gradjob, or ""."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        if not (name.startswith(_NUMPY_DIR) or name.startswith(_OWN_DIR) or name.startswith("<frozen")):
            return f"{os.path.basename(name)}:{frame.f_lineno}"
        frame = frame.f_back
    return ""


def _refuse(reason: str):
    exc = Untraceable(reason, user_line())
    tape = _current.get()
    if tape is not None and tape.refused is None:
        tape.refused = exc  # raised again after the forward, even if the forward caught it
    raise exc


def np_name(function) -> str:
    """``np.linalg.svd``, ``np.add``: a NumPy callable as a user writes it."""
    name = getattr(function, "__name__", repr(function))
    module = getattr(function, "__module__", None) or "numpy"
    if isinstance(function, np.ufunc) or module == "numpy" or module.startswith("numpy._"):
        return f"np.{name}"
    if module.startswith("numpy."):
        return f"np.{module[len('numpy.'):]}.{name}"
    return f"{module}.{name}"


# --- the graph ----------------------------------------------------------------------------------

class Ref:
    """An operand that is a node of the graph (every other operand is a constant)."""

    __slots__ = ("id",)

    def __init__(self, id: int):
        self.id = id

    def __repr__(self):
        return f"Ref({self.id})"


@dataclass
class Node:
    """``op`` applied to ``operands`` (``Ref`` or constants) with ``attrs``; ``value`` is its
    value at θ, computed by NumPy during the trace."""

    op: str
    operands: tuple
    attrs: dict
    value: Any

    @property
    def inputs(self) -> list[int]:
        return [a.id for a in self.operands if isinstance(a, Ref)]

    @property
    def shape(self) -> tuple[int, ...]:
        return np.shape(self.value)

    @property
    def dtype(self) -> np.dtype:
        return np.asarray(self.value).dtype if not hasattr(self.value, "dtype") else self.value.dtype


@dataclass
class Graph:
    nodes: list[Node] = field(default_factory=list)
    params: dict[str, int] = field(default_factory=dict)
    cost: int = -1


class _Tape:
    """The graph being recorded, and the constants it has snapshotted (by identity)."""

    def __init__(self):
        self.graph = Graph()
        self.open = True
        self.refused: Untraceable | None = None
        self.profile: _Profile | None = None
        self.poisoned: dict[int, Untraceable] = {}  # nodes the replay cannot compute, and why
        self.casts: list = []  # weak references to every _Cast, given their values back at the end
        self._snapshots: dict[int, tuple[object, np.ndarray]] = {}

    def close(self):
        """End of the trace: traced values left behind act as their values; casts hold theirs."""
        self.open = False
        for ref in self.casts:
            array = ref()
            traced = None if array is None else array.__dict__.get("_traced")
            if traced is not None:
                np.copyto(array.view(np.ndarray), traced._value, casting="unsafe")
        self._snapshots = {}

    def add(self, op: str, operands: tuple, attrs: dict, value, refused: Untraceable | None = None) -> int:
        if isinstance(value, np.ndarray):
            value.flags.writeable = False  # a forward that writes into a recorded value fails
        self.graph.nodes.append(Node(op, operands, attrs, value))
        i = len(self.graph.nodes) - 1
        if refused is None:  # a value computed from a refused one is refused too
            refused = next((self.poisoned[a.id] for a in operands if isinstance(a, Ref) and a.id in self.poisoned), None)
        if refused is not None:
            self.poisoned[i] = refused
        return i

    def constant(self, value):
        """A constant operand as recorded: arrays are copied (the forward may change them later),
        Python and NumPy scalars are kept as they are, so NumPy promotes them the same way."""
        if isinstance(value, (bool, int, float, complex, np.generic)) or value is None:
            return value
        if isinstance(value, np.ndarray):
            kept = self._snapshots.get(id(value))
            if kept is not None and kept[1].dtype == value.dtype and kept[1].shape == value.shape \
                    and kept[1].tobytes() == value.tobytes():
                return kept[1]
            copy = value.copy()
            copy.flags.writeable = False
            self._snapshots[id(value)] = (value, copy)
            return copy
        return self.constant(np.asarray(value))


_current: contextvars.ContextVar[_Tape | None] = contextvars.ContextVar("gradjob_trace_tape", default=None)


# --- the traced array ---------------------------------------------------------------------------

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


class Traced:
    """A value computed from the parameters: its NumPy value at θ and its node in the graph."""

    __slots__ = ("_tape", "_id", "_value", "_alias", "__weakref__")
    __array_priority__ = 1_000_000
    __hash__ = None  # as ndarray

    def __init__(self, tape: _Tape, id: int, value, alias: "_Alias | None" = None):
        self._tape, self._id, self._value = tape, id, value
        self._alias = alias  # the arrays this one shares memory with (views), if any

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

    def __repr__(self):
        return repr(self._value)

    def __str__(self):
        return str(self._value)

    def __format__(self, spec):
        return format(self._value, spec)

    # -- the NumPy protocols
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if not self._tape.open and not _live(inputs, kwargs):
            return getattr(ufunc, method)(*_values(inputs), **_values(kwargs))
        return _record_ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        if not self._tape.open and not _live(args, kwargs):
            return func(*_values(args), **_values(kwargs))
        handler = _FUNCTIONS.get(func)
        if handler is None:
            _refuse(f"{np_name(func)} is not supported")
        return handler(*args, **kwargs)

    def __array__(self, dtype=None, copy=None):
        if not self._tape.open:
            return np.array(self._value, dtype=dtype, copy=True if copy else None)
        profile = self._tape.profile
        dot = profile.dot_of(self) if profile is not None and self._tape.open else None
        if dot is not None:  # X.dot(self): see _Dot
            return dot.argument if dtype is None else dot.argument_as(np.dtype(dtype))
        if dtype is not None and self.ndim > 0:
            return _Cast.of(self.astype(dtype))  # np.int64(A > 0): a cast, still traced
        _refuse("converting a traced array to a plain NumPy array (np.asarray, np.array, storing it into "
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
        _refuse("in-place @= on a traced array is not supported")

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
        _refuse("Python control flow on a traced value (if, while, and, or, not, assert) is not supported")

    def __float__(self):
        _refuse("float() of a traced value is not supported")

    def __int__(self):
        _refuse("int() of a traced value is not supported")

    def __complex__(self):
        _refuse("complex() of a traced value is not supported")

    def __index__(self):
        _refuse("using a traced value as an index or size is not supported")

    def __contains__(self, item):
        _refuse("`in` on a traced array is not supported")

    def item(self, *args):
        _refuse(".item() of a traced value is not supported")

    def tolist(self):
        _refuse(".tolist() of a traced value is not supported")

    def __setitem__(self, key, value):
        """``A[key] = v`` is recorded as refused: fine while the cost does not depend on A (e.g. a
        gradient computed beside the loss), refused by ``Replay.of`` if it does."""
        key, value = _untangle(key), _untangle(value)
        if self._alias is not None and self._alias.parameter:
            _refuse("assignment into a parameter or a view of one (A[...] = ...) is not supported")
        if any(isinstance(p, Traced) for p in (key if isinstance(key, tuple) else (key,))):
            _refuse("indexing with a traced array (an index computed from the parameters) is not supported")
        new = np.array(self._value)
        new[key] = _plain(value)
        refused = Untraceable("assignment into a traced array (A[...] = ...) is not supported", user_line())
        self._refused_update(refused, new, value)

    def __reduce__(self):
        _refuse("pickling a traced value is not supported")

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
            _refuse(f"the array method .{name} is not supported")
        raise AttributeError(f"'numpy.ndarray' object has no attribute {name!r}")

    # -- methods
    @property
    def T(self):
        return self.transpose()

    def transpose(self, *axes):
        if len(axes) == 1 and (axes[0] is None or isinstance(axes[0], (tuple, list))):
            axes = axes[0]
        return _transpose(self, axes or None)

    def reshape(self, *shape, order="C", copy=None):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = shape[0]
        return _reshape(self, tuple(shape), order=order)

    def ravel(self, order="C"):
        return _reshape(self, (-1,), order=order)

    def flatten(self, order="C"):
        return _reshape(self, (-1,), order=order).copy()

    def squeeze(self, axis=None):
        return _squeeze(self, axis)

    def copy(self, order="K"):
        return _unary_node("copy", self, {}, self._value.copy())

    def astype(self, dtype, order="K", casting="unsafe", subok=True, copy=True):
        dtype = np.dtype(dtype)
        if dtype == self.dtype and not copy:
            return self
        value = self._value.astype(dtype, casting=casting)
        return _unary_node("astype", self, {"dtype": dtype}, value)

    def sum(self, axis=None, dtype=None, out=None, keepdims=False, **kwargs):
        return _reduce("sum", np.sum, self, axis, dtype, out, keepdims, kwargs)

    def mean(self, axis=None, dtype=None, out=None, keepdims=False, **kwargs):
        return _reduce("mean", np.mean, self, axis, dtype, out, keepdims, kwargs)

    def max(self, axis=None, out=None, keepdims=False, **kwargs):
        return _reduce("max", np.max, self, axis, None, out, keepdims, kwargs)

    def min(self, axis=None, out=None, keepdims=False, **kwargs):
        return _reduce("min", np.min, self, axis, None, out, keepdims, kwargs)

    def var(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False, **kwargs):
        return _var(self, axis, dtype, out, ddof, keepdims, **kwargs)

    def std(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False, **kwargs):
        return _std(self, axis, dtype, out, ddof, keepdims, **kwargs)

    def dot(self, other, out=None):
        return _dot(self, other, out)

    def clip(self, min=None, max=None, out=None, **kwargs):
        return _clip(self, min, max, out, **kwargs)

    def __getitem__(self, key):
        return _index(self, key)

    def _inplace(self, ufunc, other):
        """``A op= B``. A NumPy scalar is rebound (NumPy scalars are immutable); an array is
        updated in place, which this object then mirrors: every holder of it sees the new value,
        as with NumPy. Refused at once for parameters (it would write into θ); for an array that
        shares memory with others, all of them are refused if the cost depends on them."""
        if isinstance(self._value, np.generic):
            return ufunc(self, other)
        operator_name = _AUGMENTED.get(ufunc, ufunc.__name__)
        if self._alias is not None and self._alias.parameter:
            _refuse(f"in-place {operator_name} on a parameter or a view of one is not supported")
        other = _untangle(other)
        probe = self._value.copy()
        ufunc(probe, _plain(other), out=probe)  # NumPy's own shape and casting rules, and errors
        if self._alias is not None:
            self._refused_update(Untraceable(f"in-place {operator_name} on an array that shares memory with "
                                             "another (a view) is not supported", user_line()), probe, other)
            return self
        result = ufunc(self, other)
        if result.dtype != probe.dtype:
            result = _unary_node("astype", result, {"dtype": probe.dtype}, probe)
        self._id, self._value = result._id, result._value
        return self


def _refused_update(self, refused: Untraceable, new, value) -> None:
    """``self`` was written into: it holds ``new``, and every array sharing its memory changed
    too. None of them can be replayed; each gets a refused node (refused only if the cost
    depends on it)."""
    tape, operands, _ = _operands([self, value] if isinstance(value, Traced) else [self])
    self._id, self._value = tape.add("assigned", operands, {}, new, refused), new
    for member in self._alias.members() if self._alias is not None else ():
        if member is not self:
            member._id = tape.add("assigned", (Ref(member._id),), {}, member._value, refused)


Traced._refused_update = _refused_update


class _Alias:
    """Traced arrays that share memory (an array and its views), and whether one is a parameter."""

    def __init__(self, parameter: bool = False):
        self.parameter, self._members = parameter, []

    def add(self, traced: Traced) -> None:
        self._members.append(weakref.ref(traced))
        traced._alias = self

    def members(self):
        return [m for m in (ref() for ref in self._members) if m is not None]


def _view(source: Traced, view: Traced) -> Traced:
    """``view`` shares ``source``'s memory (as NumPy's .T, reshape, basic indexing do)."""
    if source._alias is None:
        _Alias().add(source)
    source._alias.add(view)
    return view


def _after_trace(name: str, method):
    """Once its trace is over, a Traced left in the user's objects (e.g. a running mean kept in
    a dict) behaves as its value at θ, as if the real forward had stored that."""

    def wrapper(self, *args, **kwargs):
        if self._tape.open:
            return method(self, *args, **kwargs)
        if _live(args, kwargs):  # a value of this trace meets one left by an earlier trace: a constant
            receiver = np.array(self._value)
            return receiver.T if name == "T" else getattr(receiver, name)(*args, **kwargs)
        args, kwargs = _values(args), _values(kwargs)
        if name.startswith("__i") and name[3:-2] in _INPLACE_OPERATORS or name == "__setitem__":
            if isinstance(self._value, np.ndarray) and not self._value.flags.writeable:
                self._value = np.array(self._value)  # the recorded value stays as it was
            if name == "__setitem__":
                return self._value.__setitem__(*args)
            result = getattr(operator, name.strip("_"))(self._value, *args)
            if result is self._value:
                return self
            return result
        if name == "T":
            return self._value.T
        if name in ("__bool__", "__float__", "__int__", "__complex__", "__index__"):
            return getattr(builtins, name.strip("_"))(self._value) if name != "__index__" \
                else operator.index(self._value)
        if name in ("__copy__", "__deepcopy__"):
            return np.array(self._value)
        if name == "__reduce__":
            return np.array(self._value).__reduce__()
        return getattr(self._value, name)(*args, **kwargs)

    wrapper.__name__ = name
    return wrapper


_INPLACE_OPERATORS = {"add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor", "matmul"}

for _name in ("__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__", "__ipow__",
              "__iand__", "__ior__", "__ixor__", "__imatmul__", "__bool__", "__float__", "__int__", "__complex__",
              "__index__", "__contains__", "item", "tolist", "__setitem__", "__reduce__", "__copy__",
              "__deepcopy__", "transpose", "reshape", "ravel", "flatten", "squeeze", "copy", "astype", "sum",
              "mean", "max", "min", "var", "std", "dot", "clip", "__getitem__"):
    setattr(Traced, _name, _after_trace(_name, getattr(Traced, _name)))
Traced.T = property(_after_trace("T", Traced.T.fget))


def _live(*objs) -> bool:
    """Whether a value of the trace under way is among ``objs`` (in tuples, lists, dicts)."""
    for obj in objs:
        if isinstance(obj, _Cast):
            obj = np.ndarray.__getattribute__(obj, "_traced")
        if isinstance(obj, Traced):
            if obj._tape.open:
                return True
        elif isinstance(obj, (tuple, list)):
            if _live(*obj):
                return True
        elif isinstance(obj, dict):
            if _live(*obj.values()):
                return True
    return False


def _values(obj):
    """Traced → its value, inside argument tuples, lists and dicts (after the trace)."""
    obj = _untangle(obj)
    if isinstance(obj, Traced):
        return obj._value
    if isinstance(obj, tuple):
        return tuple(_values(o) for o in obj)
    if isinstance(obj, list):
        return [_values(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _values(v) for k, v in obj.items()}
    return obj


_AUGMENTED = {np.add: "+=", np.subtract: "-=", np.multiply: "*=", np.true_divide: "/=",
              np.floor_divide: "//=", np.remainder: "%=", np.power: "**=", np.bitwise_and: "&=",
              np.bitwise_or: "|=", np.bitwise_xor: "^="}


class _Cast(np.ndarray):
    """What ``np.int64(A > 0)`` returns: NumPy's scalar types call ``__array__(dtype)`` and keep
    an ndarray subclass, so the cast stays traced. Every use goes to the ``Traced`` it carries.
    Its own memory is filled with a sentinel, not the values: were it ever read as a plain array
    (``np.asarray`` strips subclasses), the forward's cost would differ from the real one, which
    the caller's comparison at θ reports."""

    _traced: Traced
    __array_priority__ = 1_000_000  # NumPy makes X.dot(W)'s result of this type (see _Dot)

    @classmethod
    def of(cls, traced: Traced) -> "_Cast":
        out = np.empty(traced.shape, dtype=traced.dtype).view(cls)
        _poison(out, traced._value)
        out._traced = traced
        traced._tape.casts.append(weakref.ref(out))
        return out

    def __array_finalize__(self, obj):
        self._traced = None  # an array NumPy derived from a cast on its own: refused on use
        tape = _current.get()
        calls = tape.profile.calls if tape is not None and tape.profile is not None else None
        if calls and calls[-1][1] is not None:  # made within X.dot(W): maybe the product
            calls[-1][1].results.append(self)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return _record_ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        handler = _FUNCTIONS.get(func)
        if handler is None:
            _refuse(f"{np_name(func)} is not supported")
        return handler(*_untangle(args), **_untangle(kwargs))

    def __getattribute__(self, name):
        if name in ("_traced", "__class__", "__array_ufunc__", "__array_function__", "__array_finalize__",
                    "__array_priority__", "__array_interface__", "__array_struct__", "__array_wrap__",
                    "__dict__", "shape", "ndim", "dtype", "size", "strides", "flags", "base", "data",
                    "itemsize", "nbytes", "__len__", "view", "__reduce_ex__", "__array__"):
            return super().__getattribute__(name)
        return getattr(_untangle(self), name)


def _poison(array: np.ndarray, value) -> None:
    """Fill an array that stands for a traced value with values that differ from ``value``."""
    if array.dtype.kind == "b":
        np.ndarray.__setitem__(array, Ellipsis, ~np.asarray(value, dtype=bool))
    elif array.dtype.kind in "iu":
        np.ndarray.fill(array, np.iinfo(array.dtype).min)
    else:
        np.ndarray.fill(array, np.nan)


class _Dot:
    """``X.dot(W)`` with X a plain array and W traced. ``ndarray.dot`` has no dispatch: it
    converts W with ``__array__``, which cannot return a traced value. So during the trace a
    profile hook follows C calls; when ``__array__`` is asked for within ``X.dot``, it gives a
    ``_Cast`` holding W's values, of higher priority, so that NumPy makes the product a ``_Cast``
    too; when the call returns, the product is recorded and that array from then on stands for it
    (its memory poisoned, like every ``_Cast``'s)."""

    def __init__(self, X: np.ndarray, traced: Traced):
        self.X, self.traced, self.results = X, traced, []
        self.argument = np.array(traced._value).view(_Cast)
        self.argument._traced = traced
        self.converted: list[_Cast] = []

    def argument_as(self, dtype: np.dtype) -> "_Cast":
        """W's values in the dtype NumPy asks for (it converts W to the product's type)."""
        if dtype == self.argument.dtype:
            return self.argument
        converted = np.array(self.traced._value, dtype=dtype).view(_Cast)
        converted._traced = self.traced.astype(dtype)
        self.converted.append(converted)
        return converted

    def finish(self, returned: bool, frame) -> None:
        expected = self.X.shape[:-1] + self.traced.shape[1:]
        given = [a.view(np.ndarray) for a in [self.argument, *self.converted]]
        results = [r for r in self.results if r.shape == expected
                   and not any(np.shares_memory(r.view(np.ndarray), a) for a in given)]
        for a in [self.argument, *self.converted]:
            _poison(a, np.ndarray.__getattribute__(a, "_traced")._value)
        if not returned:
            return
        tape = self.traced._tape
        if len(results) != 1:
            where = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"
            if tape.refused is None:
                tape.refused = Untraceable("X.dot(W) with X a plain array and W traced, with out= or giving a "
                                           "scalar, is not supported: write np.dot(X, W)", where)
            return
        product = results[0]
        value = np.array(product.view(np.ndarray))
        node = tape.add("matmul", (tape.constant(self.X), Ref(self.traced._id)), {}, value)
        product._traced = Traced(tape, node, value)
        _poison(product, value)
        tape.casts.extend(weakref.ref(a) for a in (product, self.argument, *self.converted))


class _Profile:
    """The C calls under way while tracing (a profile hook, chained to any other profiler)."""

    def __init__(self, previous):
        self.previous, self.calls = previous, []

    def __call__(self, frame, event, arg):
        if event == "c_call":
            self.calls.append([arg, None])
        elif event in ("c_return", "c_exception") and self.calls:
            function, dot = self.calls.pop()
            if dot is not None:
                dot.finish(event == "c_return", frame)
        if self.previous is not None:
            self.previous(frame, event, arg)

    def dot_of(self, traced: Traced):
        """The ``_Dot`` when ``traced`` is being converted as the argument of X.dot, else None."""
        if not self.calls:
            return None
        if self.calls[-1][1] is not None:  # NumPy may ask twice
            return self.calls[-1][1] if self.calls[-1][1].traced is traced else None
        function = self.calls[-1][0]
        X = getattr(function, "__self__", None)
        if type(X) is not np.ndarray or getattr(function, "__name__", "") != "dot" or function != X.dot:
            return None
        if not (1 <= X.ndim <= 2 and 1 <= traced.ndim <= 2) or X.ndim == traced.ndim == 1:
            return None
        self.calls[-1][1] = dot = _Dot(X, traced)
        return dot


def _cast_delegate(name):
    def method(self, *args):
        return getattr(_untangle(self), name)(*args)

    method.__name__ = name
    return method


for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__",
              "__rtruediv__", "__floordiv__", "__rfloordiv__", "__mod__", "__rmod__", "__pow__", "__rpow__",
              "__matmul__", "__rmatmul__", "__and__", "__rand__", "__or__", "__ror__", "__xor__", "__rxor__",
              "__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__", "__iadd__", "__isub__", "__imul__",
              "__itruediv__", "__ifloordiv__", "__imod__", "__ipow__", "__iand__", "__ior__", "__ixor__",
              "__imatmul__", "__neg__", "__pos__", "__abs__", "__invert__", "__bool__", "__float__", "__int__",
              "__complex__", "__index__", "__contains__", "__getitem__", "__setitem__", "__iter__", "__repr__",
              "__str__", "__format__", "__copy__", "__deepcopy__", "__reduce__"):
    setattr(_Cast, _name, _cast_delegate(_name))


def _untangle(obj):
    """``_Cast`` → its ``Traced``, inside argument tuples, lists and dicts."""
    if isinstance(obj, _Cast):
        traced = np.ndarray.__getattribute__(obj, "_traced")
        if traced is None and _current.get() is None:
            return obj.view(np.ndarray)  # after the trace: an array like any other
        if traced is None:
            _refuse("converting a cast of a traced array again (e.g. np.float64(np.int64(A > 0))) is not supported")
        return traced
    if isinstance(obj, tuple):
        return tuple(_untangle(o) for o in obj)
    if isinstance(obj, list):
        return [_untangle(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _untangle(v) for k, v in obj.items()}
    return obj


def _plain(obj):
    """The NumPy value of an operand (a Traced's value at θ)."""
    return obj._value if isinstance(obj, Traced) else obj


# --- recording ---------------------------------------------------------------------------------

def _operands(values) -> tuple[_Tape, tuple, list]:
    """(tape, recorded operands, plain values) for a call's operands."""
    tape = None
    for v in values:  # the trace under way; a value left by an earlier one is a constant here
        if isinstance(v, Traced) and v._tape.open:
            if tape is None:
                tape = v._tape
            elif v._tape is not tape:
                _refuse("values traced in two different traces are combined")
    if tape is None or not tape.open or _current.get() is not tape:
        _refuse("a traced value is used outside its trace (kept from an earlier call?)")
    values = [np.array(v._value) if isinstance(v, Traced) and v._tape is not tape else v for v in values]
    recorded = tuple(Ref(v._id) if isinstance(v, Traced) else tape.constant(v) for v in values)
    return tape, recorded, [_plain(v) for v in values]


def _wrap(tape: _Tape, op: str, operands: tuple, attrs: dict, value) -> Traced:
    return Traced(tape, tape.add(op, operands, attrs, value), value)


def _unary_node(op: str, x: Traced, attrs: dict, value) -> Traced:
    tape, operands, _ = _operands([x])
    return _wrap(tape, op, operands, attrs, value)


def _record_ufunc(ufunc, method, inputs, kwargs):
    inputs, kwargs = _untangle(inputs), _untangle(kwargs)
    name = np_name(ufunc)
    if method != "__call__":
        _refuse(f"{name}.{method} is not supported")
    if kwargs.get("out") is not None:
        _refuse(f"{name} with out= (in-place into an array, e.g. `A += B` on a plain array) is not supported")
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
    tape, operands, values = _operands(inputs)
    value = ufunc(*values, **kwargs)
    return _wrap(tape, "elementwise", operands, {"function": ufunc, "kwargs": kwargs}, value)


def _matmul(a, b, name: str):
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
    a = _untangle(a)
    key = _untangle(key)
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


def record(forward, X, Y, layout, theta) -> Graph:
    """Run the forward once on traced parameters; the graph of the cost, pruned to what it
    depends on. Raises ``Untraceable``."""
    tape = _Tape()
    params = {}
    for t in layout.tensors:
        value = np.array(theta[t.offset:t.stop]).reshape(t.shape)  # a copy: θ may change after
        value.flags.writeable = False
        tape.graph.params[t.name] = tape.add("param", (), {"name": t.name}, value)
        params[t.name] = Traced(tape, tape.graph.params[t.name], value)
        _Alias(parameter=True).add(params[t.name])  # a view of θ
    token = _current.set(tape)
    previous = sys.getprofile()
    tape.profile = _Profile(previous)
    sys.setprofile(tape.profile)
    try:
        result = forward(X, Y, params)
    except Untraceable:
        raise
    except Exception as exc:
        where = _traceback_line(exc.__traceback__)
        raise Untraceable(f"the forward raised {type(exc).__name__} while traced: {exc}", where) from exc
    finally:
        sys.setprofile(previous)
        _current.reset(token)
        tape.close()
    if tape.refused is not None:
        raise tape.refused
    cost = _untangle(result[0] if isinstance(result, tuple) else result)
    code = getattr(forward, "__code__", None)
    where = f"{os.path.basename(code.co_filename)}:{code.co_firstlineno}" if code else ""
    if not isinstance(cost, Traced):
        raise Untraceable("the cost the forward returns is not computed from the parameters", where)
    if cost.size != 1 or cost.dtype.kind not in "fc":
        raise Untraceable(f"the cost the forward returns has shape {cost.shape} and dtype {cost.dtype}, "
                          "not one floating-point value", where)
    graph, poisoned = tape.graph, tape.poisoned
    tape.graph, tape.poisoned, tape.casts = Graph(), {}, []  # values left in user objects keep only themselves
    graph.cost = cost._id
    return _pruned(graph, poisoned)


def _traceback_line(tb) -> str:
    where = ""
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if not (name.startswith(_NUMPY_DIR) or name.startswith(_OWN_DIR) or name.startswith("<frozen")):
            where = f"{os.path.basename(name)}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


def _pruned(graph: Graph, poisoned: dict) -> Graph:
    """Only the nodes the cost depends on (and the parameters), renumbered in the same order.
    Raises the refusal of the first refused node the cost depends on."""
    needed = {graph.cost, *graph.params.values()}
    for i in range(graph.cost, -1, -1):
        if i in needed:
            needed.update(graph.nodes[i].inputs)
    refused = sorted(i for i in needed if i in poisoned)
    if refused:
        raise poisoned[refused[0]]
    keep = sorted(needed)
    new_id = {old: new for new, old in enumerate(keep)}
    nodes = []
    for old in keep:
        node = graph.nodes[old]
        operands = tuple(Ref(new_id[a.id]) if isinstance(a, Ref) else a for a in node.operands)
        nodes.append(Node(node.op, operands, node.attrs, node.value))
    return Graph(nodes, {name: new_id[i] for name, i in graph.params.items()}, new_id[graph.cost])


def __getattr__(name: str):
    """``Replay`` lives in ``replay`` (which imports this module); ``from gradjob.trace import
    Replay`` finds it here."""
    if name == "Replay":
        from .replay import Replay
        return Replay
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Untraceable", "Replay", "record", "Traced"]
