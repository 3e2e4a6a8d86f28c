"""Recording a user's NumPy forward once, as a graph that ``replay`` evaluates incrementally.

``Replay.of(forward, X, Y, layout, theta)`` calls the forward once with each parameter wrapped in
``Traced``, a stand-in for an ndarray that computes every operation with NumPy itself (so the
traced cost is the real forward's, bit for bit) and records it. X, Y and everything not computed
from the parameters stay plain arrays: constants of the graph (copied when recorded). Values
derived from parameters are never frozen: a mask such as ``Z > 0`` is a node of the graph,
recomputed under every perturbation.

Supported on parameters and on values computed from them: the operations declared in ``ops``
(README's list is made from it, the writes among them), and augmented assignment: ``loss += reg``
on scalars; ``scores -= scores.max(axis=1, keepdims=True)`` on arrays that share memory with no
other (no views).

Values keep the dtypes the real forward gives them (a forward computing in float32 is replayed
in float32). Anything else raises ``Untraceable`` naming the operation and the user's line
(``file.py:LINE``, the innermost frame outside NumPy and gradjob):

- NumPy functions outside the list (``np.linalg.svd``, ``np.cumsum``, ...),
  ufunc methods (``np.add.reduce``), ufuncs with more than one output;
- ``where=`` arguments; ``out=`` into a plain view not stored back (``V = A[1:]; V += B``);
- writing into a parameter or a view of one (``W[0] = 0``, ``W += 1``), and a plain array written
  with a traced value read through a view taken before, or by plain NumPy (its memory holds a
  sentinel while traced: the cost then is not the forward's);
- Python control flow or conversion on a traced value: ``if``/``while``/``and``/``assert``,
  ``float()`` and ``.item()`` (but on the cost the forward returns: ``return float(cost), cache``
  or ``np.float64(cost)``),
  ``int()``, ``.tolist()``, ``np.asarray``/``np.array`` (with ``dtype=`` too), storing it into a plain
  array but as ``A[key] = v`` (A and key made of names, numbers, slices, arithmetic); a traced
  value as text (``print``, ``str``, f-strings: it could come back as a constant); indexing
  with a traced index (``v[i]``, or ``v[v > 0]`` but elementwise and stored back as above);
- a cost not computed from the parameters, or not one floating-point value;
- and, only when the cost depends on them: the other views of an array written into, and augmented
  assignment to an array that shares memory with another. So a gradient computed beside the loss
  is no obstacle.

A forward that raises while traced is refused with its error. Tracing leaves the user's objects
as a real forward would: a traced value the forward kept (a running mean in a dict) acts as its
value at θ once the trace is over.

The trace, module by module; each imports only those listed before it (no cycles, no private
names between them: tests/trace/test_ops.py checks both):

- ``attrs``: the typed attributes of the graph's nodes;
- ``graph``: the graph (``Ref``, ``Node``, ``Graph``), the tape that records it, ``Untraceable``;
- ``casts``: where NumPy converts instead of dispatching (``np.int64(A > 0)``, ``X.dot(W)``);
- ``functions``: the record rules, each recording a node (``recorded_call``: any function, generically);
- ``batched``, ``elementwise``, ``indexing``, ``products``, ``reductions``, ``generic``: the replay rules;
- ``writes``: writes into arrays, recorded as new versions (``A[key] = v``, ``A += v``, ``np.add.at``),
  and their replay rule;
- ``ops``: the registry, each operation declared once (name, doc line, attributes, record and replay rules);
- ``after``: a traced value the forward kept, once the trace is over;
- ``array``: ``Traced``, the stand-in array;
- ``lanes``: ``x[mask]`` with a traced mask (``Lanes``, a ``Traced``; the tape's ``select``);
- here: ``record``; then ``replay``, which evaluates the graph through ``ops``.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from gradjob.trace.array import Traced
from gradjob.trace.attrs import Param
from gradjob.trace.casts import Profile, untangle
from gradjob.trace.functions import Alias
from gradjob.trace.graph import Graph, Untraceable, current_tape, pruned, Tape, traceback_line
from gradjob.trace.lanes import select


def record(forward, X, Y, layout, theta) -> Graph:
    """Run the forward once on traced parameters; the graph of the cost, pruned to what it
    depends on. Raises ``Untraceable``."""
    tape = Tape(Traced, select)
    params = {}
    for t in layout.tensors:
        value = np.array(theta[t.offset:t.stop]).reshape(t.shape)  # a copy: θ may change after (read-only once added)
        tape.graph.params[t.name] = tape.add("param", (), Param(t.name), value)
        params[t.name] = Traced(tape, tape.graph.params[t.name], value)
        Alias(parameter=True).add(params[t.name])  # a view of θ
    token = current_tape.set(tape)
    previous = sys.getprofile()
    tape.profile = Profile(previous)
    sys.setprofile(tape.profile)
    try:
        result = forward(X, Y, params)
    except Untraceable:
        raise
    except Exception as exc:
        if tape.refused is not None:  # refused where NumPy turned the refusal into its own error
            raise tape.refused from exc
        where = traceback_line(exc.__traceback__)
        raise Untraceable(f"the forward raised {type(exc).__name__} while traced: {exc}", where) from exc
    finally:
        sys.setprofile(previous)
        current_tape.reset(token)
        wrote = [where for _, _, where in tape.written.values()]  # the plain arrays written into, where first
        tape.close()
    if tape.refused is not None:
        raise tape.refused
    returned = cost = untangle(result[0] if isinstance(result, tuple) else result)
    for number, traced, refused in tape.numbers:  # float(cost) returned is the cost; any other, refused
        if not _returned_as(returned, number, traced):
            raise refused
        cost = traced
    code = getattr(forward, "__code__", None)
    where = f"{os.path.basename(code.co_filename)}:{code.co_firstlineno}" if code else ""
    untracked = ("an array written with a traced value (A[...] = v, A += v, at the line named) was read by plain "
                 "NumPy, which the trace cannot follow")  # its memory holds a sentinel while traced: see writes
    if wrote and not (isinstance(cost, Traced) and np.all(np.isfinite(cost._value))):
        raise Untraceable(f"the cost the forward returns is not fully traced: {untracked}", wrote[0] or where)
    if not isinstance(cost, Traced):
        raise Untraceable("the cost the forward returns is not computed from the parameters", where)
    if cost.size != 1 or cost.dtype.kind not in "fc":
        raise Untraceable(f"the cost the forward returns has shape {cost.shape} and dtype {cost.dtype}, "
                          "not one floating-point value", where)
    graph, poisoned = tape.graph, tape.poisoned
    tape.graph, tape.poisoned, tape.casts, tape.numbers = Graph(), {}, [], []  # values left in user objects keep only themselves
    graph.cost = cost._id
    return pruned(graph, poisoned)


def _returned_as(returned, number, traced) -> bool:
    """Whether the returned cost is ``number``, the plain number made of ``traced``: that very
    object (``return float(cost)``), or a NumPy scalar holding exactly its value in its own dtype
    (``return np.float64(cost)``, which calls float() and wraps the result). A conversion that
    changes the value (``np.float32`` of a float64 cost) is not the cost, so stays refused."""
    if returned is number:
        return True
    return (isinstance(returned, np.floating) and returned.dtype == traced.dtype
            and returned.tobytes() == np.asarray(traced._value, dtype=traced.dtype).reshape(()).tobytes())
