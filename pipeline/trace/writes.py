"""Writes into arrays while traced, given functional meaning: ``A[key] = v``, ``A op= v`` and
``np.add.at(A, key, v)`` make a new node, A's next version, and later reads of A see it. A write
into a parameter stays refused (``Traced`` refuses it before coming here).

A plain array written with a traced value (``out = np.zeros(...)``; ``out[n, f, i, j] = s``, or
``dW += dW_t``) gets one stand-in ``Traced`` for the rest of the trace: the local names bound to
it in the writing frame are rebound to the stand-in, and a plain array that other objects still
hold is looked up by identity (``tape.written``) when it is next an operand of a traced
operation. Its own memory is filled with a sentinel, as a ``_Cast``'s is: a pure-NumPy read of it
the trace cannot see makes the traced cost differ from the real one at θ, which the caller's
comparison reports. The values at θ are written back when the trace closes.

NumPy gives no hook for ``A[key] = traced`` with A plain: it asks ``Traced.__array__`` for the
value. ``stored`` finds the container and key from the user's statement (the ``STORE_SUBSCR``
instruction under way, its source span) when both are plain names and pure expressions, else
refuses.

Replay: a write is a batched recompute of the node (the array held in full per perturbation),
written in place when the previous version dies there (a chain of scalar stores).
"""

from __future__ import annotations

import ast
import ctypes
import dis
import linecache
import sys

import numpy as np

from gradjob.trace.batched import Rep, _dense
from gradjob.trace.casts import _poison, _untangle
from gradjob.trace.graph import Ref, _is_user, _refuse

_STORE_SUBSCR = dis.opmap["STORE_SUBSCR"]
_PASS_OVER = {"CACHE", "SWAP", "COPY", "NOP", "EXTENDED_ARG", "ROT_TWO", "ROT_THREE"}
_PURE = (ast.Expression, ast.Name, ast.Load, ast.Constant, ast.Tuple, ast.List, ast.Slice, ast.BinOp, ast.UnaryOp,
         ast.operator, ast.unaryop, ast.Attribute, ast.Subscript, ast.Compare, ast.cmpop)
WRITE_OPS = ("setitem", "ufunc_at")


def masked(target, key, value):
    """``A[mask] = scalar`` with a traced boolean mask of A's shape (``dhidden[hidden <= 0] = 0``):
    ``np.where(mask, scalar, A)``, an elementwise node; None for any other write."""
    from gradjob.trace.array import Traced  # lazy: array imports this module
    from gradjob.trace.functions import _plain

    if not (isinstance(key, Traced) and key.dtype == bool and key.shape == target.shape
            and np.ndim(_plain(value)) == 0):
        return None
    result = np.where(key, value, target)
    if result.dtype != target.dtype:
        result = result.astype(target.dtype)
    target._id, target._value = result._id, result._value
    return target


# --- recording ----------------------------------------------------------------------------------

def _key(key):
    """The index parts of a write, as constants: traced indices are refused."""
    from gradjob.trace.array import Traced  # lazy: array imports this module

    key = _untangle(key)
    parts = key if isinstance(key, tuple) else (key,)
    if any(isinstance(p, Traced) for p in parts):
        _refuse("indexing with a traced array (an index computed from the parameters) is not supported")
    return tuple(p if isinstance(p, (int, np.integer, slice)) or p is None or p is Ellipsis else np.asarray(p)
                 for p in parts)


def _batched(shape, key) -> bool:
    """Whether ``key`` with a batch axis put first selects the batch axis, then what it selects
    without it (not so when advanced indices around a slice move to the front)."""
    probe = np.broadcast_to(np.int8(0), (2,) + tuple(shape))
    try:
        return probe[(slice(None),) + key].shape == (2,) + probe[0][key].shape
    except IndexError:
        return False


def write(target, key, value, function=None):
    """``target[key] = value`` (or ``function.at(target, key, value)``) recorded as ``target``'s next
    version. ``target`` is a Traced that is no parameter, whose ``_id`` and ``_value`` move on."""
    from gradjob.trace.array import Traced  # lazy: array imports this module
    from gradjob.trace.functions import _operands, _plain

    value = _untangle(value)
    parts = _key(key)
    new = np.array(target._value)
    if function is None:
        new[parts if isinstance(key, tuple) else parts[0]] = _plain(value)  # NumPy's own errors
    else:
        function.at(new, parts if isinstance(key, tuple) else parts[0], _plain(value))
    if isinstance(value, Traced) and value.dtype.kind in "fc" and new.dtype.kind not in "fc":
        _refuse("writing a floating-point traced value into an integer or boolean array is not supported")
    if not _batched(new.shape, parts):
        _refuse("a write with array indices separated by a slice is not supported")
    tape, operands, _ = _operands([target, value])
    frozen = tuple(tape.constant(p) if isinstance(p, np.ndarray) else p for p in parts)
    attrs = {"key": frozen, "function": function}
    target._id, target._value = tape.add("setitem" if function is None else "ufunc_at", operands, attrs, new), new
    return target


def stand_in(tape, array: np.ndarray):
    """The one Traced that stands for a plain array written while traced (made at its first write)."""
    from gradjob.trace.array import Traced  # lazy: array imports this module

    kept = tape.written.get(id(array))
    if kept is not None and kept[0] is array:
        return kept[1]
    value = np.array(array)
    traced = Traced(tape, tape.add("constant", (tape.constant(array),), {}, value), value)
    tape.written[id(array)] = (array, traced)  # kept alive until the trace closes: ids stay unique
    return traced


def substitute(tape, value):
    """A plain operand that was written while traced → its stand-in."""
    if type(value) is np.ndarray and tape.written:
        kept = tape.written.get(id(value))
        if kept is not None and kept[0] is value:
            return kept[1]
    return value


def _written(tape, frame, array: np.ndarray, traced) -> None:
    """``array`` now stands for ``traced``: poison its memory, rebind the frame's names of it."""
    _poison(array, traced._value)
    names = [name for name, v in frame.f_locals.items() if v is array]
    if names:
        for name in names:
            frame.f_locals[name] = traced
        if sys.version_info < (3, 13):  # since 3.13 f_locals writes through (PEP 667)
            ctypes.pythonapi.PyFrame_LocalsToFast(ctypes.py_object(frame), ctypes.c_int(0))


def user_frame(frame):
    """The innermost frame of the user's code from ``frame`` outwards, or None."""
    while frame is not None and not _is_user(frame.f_code.co_filename):
        frame = frame.f_back
    return frame


def next_op(frame) -> str:
    """The instruction the user's frame runs next (past stack shuffles): ``STORE_SUBSCR`` after
    ``A[key] += B``'s operation."""
    if frame is None:
        return ""
    for ins in dis.get_instructions(frame.f_code):
        if ins.offset > frame.f_lasti and ins.opname not in _PASS_OVER:
            return ins.opname
    return ""


def stored(traced, frame, dtype):
    """When ``traced`` is being converted for ``A[key] = traced`` with A a plain array (``frame``
    the user's, at that statement): record the write, and the sentinel NumPy should store; else
    None."""
    if frame is None or not _is_user(frame.f_code.co_filename) or frame.f_lasti < 0 \
            or frame.f_code.co_code[frame.f_lasti] != _STORE_SUBSCR:
        return None
    target, key = _target(frame)
    tape = traced._tape
    version = write(stand_in(tape, target), key, traced)
    _written(tape, frame, target, version)
    out = np.empty(traced.shape, dtype=dtype if dtype is not None else traced.dtype)
    _poison(out, np.asarray(traced._value, dtype=out.dtype))
    return out


def _target(frame):
    """The plain array and key of the ``A[key] = ...`` under way in ``frame``, from its source."""
    refused = ("storing a traced value into a plain array is supported as `name[key] = value`, with a local "
               "array name and a key of names, numbers and slices")
    try:
        line, end, col, end_col = list(frame.f_code.co_positions())[frame.f_lasti // 2]
        lines = [linecache.getline(frame.f_code.co_filename, n).encode() for n in range(line, end + 1)]
        if len(lines) == 1:
            text = lines[0][col:end_col]
        else:
            text = lines[0][col:] + b"".join(lines[1:-1]) + lines[-1][:end_col]
        tree = ast.parse(b"(" + text.strip() + b")", mode="eval")
    except (SyntaxError, TypeError, ValueError, IndexError):
        _refuse(refused)
    node = tree.body
    if not isinstance(node, ast.Subscript) or not isinstance(node.value, ast.Name) \
            or not all(isinstance(n, _PURE) for n in ast.walk(node.slice)):
        _refuse(refused)
    local = frame.f_locals
    target = local.get(node.value.id)
    if type(target) is not np.ndarray:
        _refuse(refused)
    key = eval(compile(ast.Expression(node.slice), "<key>", "eval"), frame.f_globals, local)
    return target, key


def inplace_out(ufunc, inputs, kwargs, record):
    """``A op= traced`` or ``np.op(..., out=A)`` with A a plain array: A's next version. With A a
    view, only when the statement then stores it back (``A[key] += traced``)."""
    from gradjob.trace.array import Traced  # lazy: array imports this module
    from gradjob.trace.functions import _plain

    out = kwargs.pop("out")
    out = out[0] if isinstance(out, tuple) and len(out) == 1 else out
    name = f"np.{ufunc.__name__}"
    if type(out) is not np.ndarray:
        _refuse(f"{name} with out= other than one plain array is not supported")
    probe = np.array(out)
    ufunc(*[_plain(v) for v in inputs], out=probe, **kwargs)  # NumPy's own shape and casting rules, and errors
    result = record(ufunc, "__call__", inputs, kwargs)
    if not isinstance(result, Traced):
        return result
    if result.dtype != probe.dtype:
        result = result.astype(probe.dtype)
    frame = user_frame(sys._getframe(1))
    if frame is not None and next_op(frame) == "STORE_SUBSCR":
        return result  # A[key] += traced: the store that follows records it
    if out.base is not None:
        _refuse(f"{name} into a view of a plain array (out= or an in-place operator) is not supported")
    tape = result._tape
    version = stand_in(tape, out)
    version._id, version._value = result._id, result._value
    if frame is not None:
        _written(tape, frame, out, version)
    else:
        _poison(out, version._value)
    return version


def ufunc_at(ufunc, a, key, value):
    """``np.add.at(A, key, value)`` with a traced value or A written before: A's next version."""
    from gradjob.trace.array import Traced  # lazy: array imports this module

    a = _untangle(a)
    if isinstance(a, Traced):
        if a._alias is not None:
            _refuse(f"np.{ufunc.__name__}.at into a traced array that shares memory with another is not supported")
        return write(a, key, value, ufunc)
    if type(a) is not np.ndarray or a.base is not None:
        _refuse(f"np.{ufunc.__name__}.at into anything but a plain array that owns its memory is not supported")
    tape = _untangle(value)._tape if isinstance(_untangle(value), Traced) else None
    if tape is None:
        return ufunc.at(a, key, value)
    version = write(stand_in(tape, a), key, value, ufunc)
    _written(tape, user_frame(sys._getframe(1)), a, version)
    return None


# --- replay -------------------------------------------------------------------------------------

def replay_write(replay, node, i: int, reps, B: int, dying=()) -> Rep:
    """A write under a batch: the array in full per perturbation, the value written into each."""
    base = replay.base[i]
    shape, dtype = base.shape, base.dtype
    replay._split_by_size(B, max(1, base.size) * dtype.itemsize)
    target, value = reps
    operand = node.operands[0]
    if target is None:
        data = np.array(np.broadcast_to(replay._operand_value(operand), (B,) + shape), dtype=dtype)
    else:
        full = _dense(target)
        data = np.moveaxis(full.data, full.bpos, 0)
        if not (target.owned and full is target and target.bpos == 0 and operand.id in dying):
            data = np.array(data, dtype=dtype)  # else: the previous version dies here, written over
    key = (slice(None),) + node.attrs["key"]
    if value is None:
        v = replay._operand_value(node.operands[1])
    else:
        full = _dense(value)
        v = np.moveaxis(full.data, full.bpos, 0)
        region = np.ndim(base[node.attrs["key"]])
        if v.ndim - 1 > region:
            v = v.reshape((B,) + v.shape[v.ndim - region:])
        elif v.ndim - 1 < region:
            v = v.reshape((B,) + (1,) * (region - v.ndim + 1) + v.shape[1:])
    function = node.attrs["function"]
    if function is None:
        data[key] = v
    else:
        function.at(data, key, v)
    return Rep(("F",) * len(shape), (None,) * len(shape), data, 0, shape, base, owned=True)
