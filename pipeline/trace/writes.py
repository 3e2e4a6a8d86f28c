"""Writes into arrays while traced, given functional meaning: ``A[key] = v``, ``A op= v`` and
``np.add.at(A, key, v)`` make a new node, A's next version, and later reads of A see it. A write
into a parameter stays refused (``Traced`` refuses it before coming here).

A plain array written with a traced value (``out = np.zeros(...)``; ``out[n, f, i, j] = s``, or
``dW += dW_t``) gets one stand-in ``Traced`` for the rest of the trace: the local names bound to
it in the writing frame are rebound to the stand-in, and a plain array that other objects still
hold is looked up by identity (``tape.written``) when it is next an operand of a traced
operation. Its own memory is filled with a sentinel, as a ``Cast``'s is: a pure-NumPy read of it
the trace cannot see makes the traced cost differ from the real one at θ, which the caller's
comparison reports. The values at θ are written back when the trace closes.

NumPy gives no hook for ``A[key] = traced`` with A plain: it asks ``Traced.__array__`` for the
value. ``stored`` finds the container and key from the user's statement (the ``STORE_SUBSCR``
instruction under way, and the pure loads before it that give them: its bytecode, which travels
with the function where its source may not), else refuses.

Replay: a write is a batched recompute of the node (the array held in full per perturbation),
written in place when the previous version dies there (a chain of scalar stores): ``replay_write``,
the rule ``ops`` declares for ``setitem`` and ``ufunc_at`` (attributes ``attrs.Write``); a plain
array's version before its first write is a ``constant`` node, never replayed. ``Traced`` reaches
these rules from ``__setitem__``, ``__array__``, ``__index__`` and ``__array_ufunc__``; this module
knows it as ``TracedValue`` and makes stand-ins through the tape (``Tape.make``).
"""

from __future__ import annotations

import ctypes
import dis
import functools
import operator
import sys

import numpy as np

from gradjob.trace.attrs import NoAttrs, Write
from gradjob.trace.batched import Rep, dense
from gradjob.trace.casts import poison, untangle
from gradjob.trace.functions import LANES_REFUSED, operands_of, plain
from gradjob.trace.graph import TracedValue, Untraceable, is_user, refuse, user_line

_STORE_SUBSCR = dis.opmap["STORE_SUBSCR"]
_PASS_OVER = {"CACHE", "SWAP", "COPY", "NOP", "EXTENDED_ARG", "ROT_TWO", "ROT_THREE"}
_LOADS = {"LOAD_FAST", "LOAD_DEREF", "LOAD_CLOSURE", "LOAD_NAME", "LOAD_GLOBAL", "LOAD_CONST", "LOAD_ATTR",
          "BUILD_TUPLE", "BUILD_SLICE", "BINARY_SUBSCR", "BINARY_OP", "COMPARE_OP", "UNARY_NEGATIVE"}
_BINARY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "//": operator.floordiv, "/": operator.truediv,
           "%": operator.mod, "**": operator.pow, "<": operator.lt, "<=": operator.le, ">": operator.gt,
           ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "&": operator.and_, "|": operator.or_}


def masked(target, key, value):
    """``A[mask] = scalar`` with a traced boolean mask of A's shape (``dhidden[hidden <= 0] = 0``), or
    ``A[mask] = f(x[mask])`` (see ``lanes``): ``np.where(mask, ..., A)``, an elementwise node; None
    for any other write."""
    if not (isinstance(key, TracedValue) and key.dtype == bool and key.shape == target.shape):
        return None
    if isinstance(value, TracedValue) and value.is_lanes:  # z[mask] = f(x[mask]): see lanes
        if value._mask_id != key._id:
            refuse(LANES_REFUSED)
        value = value.whole()
    elif np.ndim(plain(value)) != 0:
        return None
    result = np.where(key, value, target)
    if result.dtype != target.dtype:
        result = result.astype(target.dtype)
    target._id, target._value = result._id, result._value
    return target


# --- recording ----------------------------------------------------------------------------------

def _key(key):
    """The index parts of a write, as constants: traced indices are refused."""
    key = untangle(key)
    parts = key if isinstance(key, tuple) else (key,)
    if any(isinstance(p, TracedValue) for p in parts):
        refuse("indexing with a traced array (an index computed from the parameters) is not supported")
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
    value = untangle(value)
    parts = _key(key)
    new = np.array(target._value)
    if function is None:
        new[parts if isinstance(key, tuple) else parts[0]] = plain(value)  # NumPy's own errors
    else:
        function.at(new, parts if isinstance(key, tuple) else parts[0], plain(value))
    if isinstance(value, TracedValue) and value.dtype.kind in "fc" and new.dtype.kind not in "fc":
        refuse("writing a floating-point traced value into an integer or boolean array is not supported")
    if any(isinstance(p, np.ndarray) for p in parts) and not _batched(new.shape, parts):
        refuse("a write with array indices separated by a slice is not supported")
    tape, operands, _ = operands_of([target, value])
    frozen = tuple(tape.constant(p) if isinstance(p, np.ndarray) else p for p in parts)
    attrs = Write(frozen, function)
    target._id, target._value = tape.add("setitem" if function is None else "ufunc_at", operands, attrs, new), new
    return target


def stand_in(tape, array: np.ndarray):
    """The one Traced that stands for a plain array written while traced (made at its first write)."""
    kept = tape.written_version(array, "writing into an array that shares memory with another written while "
                                       "traced (a view) is not supported")
    if kept is not None:
        return kept
    value = np.array(array)
    traced = tape.make(tape, tape.add("constant", (tape.constant(array),), NoAttrs(), value), value)
    tape.written[id(array)] = (array, traced, user_line())  # kept alive until the trace closes: ids stay unique
    return traced


def _written(tape, frame, array: np.ndarray, traced) -> None:
    """``array`` now stands for ``traced``: poison its memory, rebind the frame's names of it."""
    poison(array, traced._value)
    names = [name for name, v in frame.f_locals.items() if v is array]
    if names:
        for name in names:
            frame.f_locals[name] = traced
        if sys.version_info < (3, 13):  # since 3.13 f_locals writes through (PEP 667)
            ctypes.pythonapi.PyFrame_LocalsToFast(ctypes.py_object(frame), ctypes.c_int(0))


def user_frame(frame):
    """The innermost frame of the user's code from ``frame`` outwards, or None."""
    while frame is not None and not is_user(frame.f_code.co_filename):
        frame = frame.f_back
    return frame


def next_op(frame) -> str:
    """The instruction the user's frame runs next (past stack shuffles): ``STORE_SUBSCR`` after
    ``A[key] += B``'s operation."""
    if frame is None:
        return ""
    for ins in _instructions(frame.f_code):
        if ins.offset > frame.f_lasti and ins.opname not in _PASS_OVER:
            return ins.opname
    return ""


def stored(traced, frame, dtype):
    """When ``traced`` is being converted for ``A[key] = traced`` with A a plain array (``frame``
    the user's, at that statement): record the write, and the sentinel NumPy should store; else
    None."""
    if frame is None or not is_user(frame.f_code.co_filename) or frame.f_lasti < 0 \
            or frame.f_code.co_code[frame.f_lasti] != _STORE_SUBSCR:
        return None
    target, key = _target(frame)
    tape = traced._tape
    if tape.pending is not None:  # z[mask] = v, mask traced: NumPy converts the key, then a traced value
        refused, mask = tape.pending
        if mask is traced:
            return np.array(traced._value)
        if tape.refused is refused:  # the value is traced: the write can be recorded
            tape.refused = None
        tape.pending, key = None, mask
    version = stand_in(tape, target)
    if masked(version, key, traced) is None:
        write(version, key, traced)
    _written(tape, frame, target, version)
    out = np.empty(traced.shape, dtype=dtype if dtype is not None else traced.dtype)
    poison(out, np.asarray(traced._value, dtype=out.dtype))
    return out


@functools.lru_cache(maxsize=256)
def _instructions(code) -> tuple:
    return tuple(dis.get_instructions(code))


@functools.lru_cache(maxsize=256)
def _key_code(code, offset: int):
    """The instructions that load the container and key of the ``STORE_SUBSCR`` at ``offset``, if
    they are pure loads (names, constants, attributes, tuples, slices, arithmetic, subscripts) in
    straight-line code; else None. ``A[key] += v`` loads them before its ``COPY 2, COPY 2``."""
    instructions = _instructions(code)
    end = next(n for n, ins in enumerate(instructions) if ins.offset == offset)
    if [ins.opname for ins in instructions[end - 2:end]] == ["SWAP", "SWAP"]:
        end = next((n for n in range(end - 3, 1, -1)
                    if [i.opname for i in instructions[n:n + 3]] == ["COPY", "COPY", "BINARY_SUBSCR"]), 0)
    need, start = 2, end
    while need > 0 and start > 0:
        start -= 1
        ins = instructions[start]
        if ins.opname not in _LOADS or (ins.opname in ("BINARY_OP", "COMPARE_OP") and ins.argrepr not in _BINARY) \
                or (ins.opname == "LOAD_GLOBAL" and ins.arg & 1) \
                or (ins.opname == "LOAD_ATTR" and sys.version_info >= (3, 12) and ins.arg & 1):
            return None  # not a pure load, or one that pushes a NULL for a call
        need -= dis.stack_effect(ins.opcode, ins.arg)
    segment = instructions[start:end]
    if need != 0 or any(ins.is_jump_target for ins in segment[1:]):
        return None
    return segment


def store_key(traced, frame) -> bool:
    """Whether ``traced`` is the key of the ``A[key] = ...`` under way in ``frame`` (A plain): then
    refused unless the value NumPy converts next is traced too (see ``stored``)."""
    if frame is None or not is_user(frame.f_code.co_filename) or frame.f_lasti < 0 \
            or frame.f_code.co_code[frame.f_lasti] != _STORE_SUBSCR:
        return False
    if not isinstance(_target(frame)[1], TracedValue):
        return False
    tape = traced._tape
    tape.pending = (Untraceable("storing into a plain array with a mask computed from the parameters is supported "
                                "for a traced value (z[mask] = f(x[mask]), or a traced scalar)", user_line()), traced)
    if tape.refused is None:
        tape.refused = tape.pending[0]
    return True


def _target(frame):
    """The plain array and key of the ``A[key] = ...`` under way in ``frame``, from its bytecode."""
    segment = _key_code(frame.f_code, frame.f_lasti)
    refused = ("storing a traced value into a plain array is supported as `A[key] = value` with A and key made of "
               "names, numbers, slices and arithmetic")
    if segment is None:
        refuse(refused)
    try:
        target, key = _loaded(frame, segment)
    except Exception:  # e.g. a name bound only later: the statement is not what its bytecode seemed
        refuse(refused)
    if type(target) is not np.ndarray:
        refuse(f"storing a traced value into a {type(target).__name__} is not supported")
    return target, key


def _loaded(frame, segment):
    """Run the pure loads of ``segment`` again in ``frame``: the container and key they give."""
    local, stack = frame.f_locals, []
    for ins in segment:
        op, arg = ins.opname, ins.argval
        if op in ("LOAD_FAST", "LOAD_DEREF", "LOAD_CLOSURE", "LOAD_NAME", "LOAD_GLOBAL"):
            scope = (local,) if op != "LOAD_GLOBAL" else ()
            scope += (frame.f_globals, frame.f_builtins) if op in ("LOAD_NAME", "LOAD_GLOBAL") else ()
            stack.append(next(d[arg] for d in scope if arg in d))
        elif op == "LOAD_CONST":
            stack.append(arg)
        elif op == "LOAD_ATTR":
            stack.append(getattr(stack.pop(), arg))
        elif op in ("BUILD_TUPLE", "BUILD_SLICE"):
            parts = stack[len(stack) - ins.arg:]
            del stack[len(stack) - ins.arg:]
            stack.append(tuple(parts) if op == "BUILD_TUPLE" else slice(*parts))
        elif op == "BINARY_SUBSCR":
            key = stack.pop()
            stack.append(stack.pop()[key])
        elif op in ("BINARY_OP", "COMPARE_OP"):
            right = stack.pop()
            stack.append(_BINARY[ins.argrepr](stack.pop(), right))
        else:  # UNARY_NEGATIVE
            stack.append(-stack.pop())
    return stack


def inplace_out(ufunc, inputs, kwargs, record):
    """``A op= traced`` or ``np.op(..., out=A)`` with A a plain or traced (not parameter) array: A's
    next version. With A a plain view, only when the statement then stores it back (``A[key] +=
    traced``)."""
    out = kwargs.pop("out")
    out = out[0] if isinstance(out, tuple) and len(out) == 1 else out
    name = f"np.{ufunc.__name__}"
    out = untangle(out)
    if isinstance(out, TracedValue) and out._alias is not None:
        refuse(f"{name} with out= a parameter or an array that shares memory with another is not supported")
    if type(out) is not np.ndarray and not isinstance(out, TracedValue):
        refuse(f"{name} with out= other than one array is not supported")
    probe = np.array(plain(out))
    ufunc(*[plain(v) for v in inputs], out=probe, **kwargs)  # NumPy's own shape and casting rules, and errors
    result = record(ufunc, "__call__", inputs, kwargs)
    if not isinstance(result, TracedValue):
        return result
    if result.dtype != probe.dtype:
        result = result.astype(probe.dtype)
    if isinstance(out, TracedValue):  # np.exp(Z, out=Z): Z's next version
        out._id, out._value = result._id, result._value
        return out
    frame = user_frame(sys._getframe(1))
    if frame is not None and next_op(frame) == "STORE_SUBSCR":
        return result  # A[key] += traced: the store that follows records it
    if out.base is not None:
        refuse(f"{name} into a view of a plain array (out= or an in-place operator) is not supported")
    tape = result._tape
    version = stand_in(tape, out)
    version._id, version._value = result._id, result._value
    if frame is not None:
        _written(tape, frame, out, version)
    else:
        poison(out, version._value)
    return version


def ufunc_at(ufunc, a, key, value):
    """``np.add.at(A, key, value)`` with a traced value or A written before: A's next version."""
    a = untangle(a)
    if isinstance(a, TracedValue):
        if a._alias is not None and a._alias.parameter:
            refuse(f"np.{ufunc.__name__}.at into a parameter or a view of one is not supported")
        if a._alias is not None:
            refuse(f"np.{ufunc.__name__}.at into a traced array that shares memory with another is not supported")
        return write(a, key, value, ufunc)
    if type(a) is not np.ndarray or a.base is not None:
        refuse(f"np.{ufunc.__name__}.at into anything but a plain array that owns its memory is not supported")
    tape = untangle(value)._tape if isinstance(untangle(value), TracedValue) else None
    if tape is None:
        return ufunc.at(a, key, value)
    version = write(stand_in(tape, a), key, value, ufunc)
    _written(tape, user_frame(sys._getframe(1)), a, version)
    return None


# --- replay -------------------------------------------------------------------------------------

def replay_write(replay, node, i: int, reps, B: int, plan, pos: int, dying=()):
    """A write under a batch: the array in full per perturbation, the value written into each;
    ``(Rep, None)`` as every replay rule returns (see ``ops``)."""
    base = replay.base[i]
    shape, dtype = base.shape, base.dtype
    replay._split_by_size(B, max(1, base.size) * dtype.itemsize)
    target, value = reps
    operand = node.operands[0]
    if target is None:
        data = np.array(np.broadcast_to(replay._operand_value(operand), (B,) + shape), dtype=dtype)
    else:
        full = dense(target)
        data = np.moveaxis(full.data, full.bpos, 0)
        if not (target.owned and full is target and target.bpos == 0 and operand.id in dying):
            data = np.array(data, dtype=dtype)  # else: the previous version dies here, written over
    key = (slice(None),) + node.attrs.key
    if value is None:
        v = replay._operand_value(node.operands[1])
    else:
        full = dense(value)
        v = np.moveaxis(full.data, full.bpos, 0)
        region = np.ndim(base[node.attrs.key])
        if v.ndim - 1 > region:
            v = v.reshape((B,) + v.shape[v.ndim - region:])
        elif v.ndim - 1 < region:
            v = v.reshape((B,) + (1,) * (region - v.ndim + 1) + v.shape[1:])
    function = node.attrs.function
    if function is None:
        data[key] = v
    else:
        function.at(data, key, v)
    return Rep(("F",) * len(shape), (None,) * len(shape), data, 0, shape, base, owned=True), None
