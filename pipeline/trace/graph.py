"""What a trace records, and what it refuses: the graph of a forward's operations (``Ref``,
``Node``, ``Graph``, pruned to what the cost depends on), the tape that appends to it while the
forward runs, and ``Untraceable``, the refusal that names the operation and the user's line.

The bottom of the trace (see ``trace``): it knows nothing of the ``Traced`` array.
"""

from __future__ import annotations

import contextvars
import os
import sys
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


def is_user(filename: str) -> bool:
    """Code of the user's, not NumPy's, gradjob's or the interpreter's own."""
    return not (filename.startswith(_NUMPY_DIR) or filename.startswith(_OWN_DIR) or filename.startswith("<frozen"))


def user_line() -> str:
    """``file.py:LINE`` of the innermost frame outside NumPy and gradjob, or ""."""
    frame = sys._getframe(1)
    while frame is not None:
        if is_user(frame.f_code.co_filename):
            return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"
        frame = frame.f_back
    return ""


def traceback_line(tb) -> str:
    """``file.py:LINE`` of the innermost user frame of a traceback, or ""."""
    where = ""
    while tb is not None:
        if is_user(tb.tb_frame.f_code.co_filename):
            where = f"{os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


def refuse(reason: str):
    exc = Untraceable(reason, user_line())
    tape = current_tape.get()
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
    """``op`` (a name in ``ops.OPS``) applied to ``operands`` (``Ref`` or constants) with
    ``attrs`` (its op's dataclass, see ``attrs``); ``value`` is its value at θ, computed by NumPy
    during the trace."""

    op: str
    operands: tuple
    attrs: Any
    value: Any

    @property
    def inputs(self) -> list[int]:
        return [a.id for a in self.operands if isinstance(a, Ref)]


@dataclass
class Graph:
    nodes: list[Node] = field(default_factory=list)
    params: dict[str, int] = field(default_factory=dict)
    cost: int = -1


class TracedValue:
    """What the stand-in array (``array.Traced``) is to the modules below it, which test for it
    and make new ones through their tape (``Tape.make``) without importing it."""

    __slots__ = ()
    is_lanes = False  # lanes.Lanes: x[mask] with a traced mask, usable only elementwise


class Tape:
    """The graph being recorded, and the constants it has snapshotted (by identity); ``make`` is
    the class of the traced values it records (``array.Traced``), ``select`` makes ``x[mask]``
    with a traced mask (``lanes.select``): both given by ``record``, which imports them."""

    def __init__(self, make=None, select=None):
        self.make, self.select = make, select
        self.graph = Graph()
        self.open = True
        self.refused: Untraceable | None = None
        self.pending: tuple | None = None  # (refusal, key) of a store whose traced key NumPy converts: see writes
        self.profile = None  # the casts module's Profile while the forward runs
        self.poisoned: dict[int, Untraceable] = {}  # nodes the replay cannot compute, and why
        self.casts: list = []  # weak references to every _Cast, given their values back at the end
        self.numbers: list = []  # (number, traced value, why not) of each float()/.item(): see Traced._number
        self._snapshots: dict[int, tuple[object, np.ndarray]] = {}
        self.written: dict[int, tuple] = {}  # id -> (plain array written while traced, its stand-in, where): see writes

    def close(self):
        """End of the trace: traced values left behind act as their values; casts hold theirs."""
        self.open = False
        for ref in self.casts:
            array = ref()
            traced = None if array is None else array.__dict__.get("_traced")
            if traced is not None:
                np.copyto(array.view(np.ndarray), traced._value, casting="unsafe")
        self._snapshots = {}
        for array, traced, _ in self.written.values():  # their values at θ, as the real forward leaves them
            np.copyto(array, traced._value, casting="unsafe")
        self.written = {}

    def add(self, op: str, operands: tuple, attrs, value, refused: Untraceable | None = None) -> int:
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

    def written_version(self, array: np.ndarray, refusal: str):
        """The stand-in of a plain array written while traced (see ``writes``), or None; an array
        that shares memory with such an array (a view of it, or its base) is refused with
        ``refusal``: it holds a sentinel."""
        kept = self.written.get(id(array))
        if kept is not None and kept[0] is array:
            return kept[1]
        if any(np.may_share_memory(array, other) for other, *_ in self.written.values()):
            refuse(refusal)
        return None

    def substitute(self, value):
        """A plain operand that was written while traced -> its stand-in."""
        if isinstance(value, np.ndarray) and self.written:
            found = self.written_version(value, "reading an array written while traced through another that "
                                                "shares its memory (a view taken before the write, or its base) "
                                                "is not supported")
            if found is not None:
                return found
        return value


current_tape: contextvars.ContextVar[Tape | None] = contextvars.ContextVar("gradjob_trace_tape", default=None)


def pruned(graph: Graph, poisoned: dict) -> Graph:
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
