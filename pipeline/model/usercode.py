"""The user's code as gradjob runs it: what may escape it, and where in it an error arose.

A forward that calls ``sys.exit(0)`` must not end the check as a pass. ``Guarded`` wraps every
user function gradjob calls, so that any ``BaseException`` but Ctrl-C (``SystemExit``,
``GeneratorExit``, one of the user's own) comes out as an ordinary exception, ``Escaped``, which
every stage already reports as an error of the user's code: one line, exit 2 before the job
starts, 3 during it. ``os._exit`` skips every ``except``: while user code runs, a call of it from
that thread raises ``SystemExit`` instead (``exits_raise``), and is reported the same way.
``user_frames`` keeps the user's part of a traceback (file:line and the
code line, as pytest shows it) to print under that line. ``refuse_script_part`` refuses a file
that would train at import (a notebook exported as a script, training at the
bottom with no ``if __name__ == "__main__":``): loading it for its functions would train first.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import linecache
import os
import sysconfig
import threading
from typing import Callable

from gradjob.errors import InputError

_OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_LIBRARY_DIRS = tuple({os.path.abspath(sysconfig.get_paths()[key]) + os.sep
                       for key in ("stdlib", "platstdlib", "purelib", "platlib")})
FRAMES_KEPT = 8  # the innermost user frames printed under an error line


class Escaped(Exception):
    """A ``BaseException`` other than ``KeyboardInterrupt`` raised by the user's code. Its class is
    named as the original's (``SystemExit``), so that messages built as ``f"{type(e).__name__}: {e}"``
    read as they would for the original."""

    def __str__(self) -> str:
        return self.args[1]

    def __reduce__(self):  # sent between processes by name, as the classes are made on demand
        return escaped_as, self.args


_CLASSES: dict[str, type] = {}
_REAL_EXIT = os._exit
_NATIVE = importlib.import_module(os.name)  # posix or nt: where os._exit comes from
_inside = threading.local()  # how deep this thread is in user code
_installed = [0, threading.Lock()]  # threads in user code now; the lock guards the swap


class OsExit(SystemExit):
    """``os._exit(status)`` called by the user's code: raised in place of ending the process."""


def _exit(status):
    if getattr(_inside, "depth", 0) and _inside.pid == os.getpid():
        raise OsExit(status)
    _REAL_EXIT(status)  # gradjob's own threads (Dask's, say), and a child the user's code forked, end as asked


@contextlib.contextmanager
def exits_raise():
    """While the user's code runs in this thread, ``os._exit`` raises ``OsExit``: a forward ending the
    process with ``os._exit(0)`` would be read as a pass (a small check runs in gradjob's process)."""
    with _installed[1]:
        _installed[0] += 1
        os._exit = _NATIVE._exit = _exit
    _inside.depth = getattr(_inside, "depth", 0) + 1
    _inside.pid = os.getpid()  # a forked child (multiprocessing ends its children with os._exit) is not us
    try:
        yield
    finally:
        _inside.depth -= 1
        with _installed[1]:
            _installed[0] -= 1
            if not _installed[0]:
                os._exit = _NATIVE._exit = _REAL_EXIT


def escaped_as(kind: str, text: str) -> Escaped:
    cls = _CLASSES.get(kind)
    if cls is None:
        cls = _CLASSES[kind] = type(kind, (Escaped,), {"__module__": __name__, "__qualname__": f"Escaped.{kind}"})
    return cls(kind, text)


def escaped(exc: BaseException) -> Escaped:
    """``exc`` as an ordinary exception, with what it says in words."""
    if isinstance(exc, OsExit):
        return escaped_as("SystemExit", f"os._exit({exc.code!r}) was called")
    if isinstance(exc, SystemExit):
        text = f"sys.exit({exc.code!r}) was called" if exc.code is not None else "sys.exit() was called"
    else:
        text = str(exc) or repr(exc)
    return escaped_as(type(exc).__name__, text)


class Guarded:
    """``function`` for gradjob to call: what it raises beyond ``Exception`` (Ctrl-C aside) comes out
    as ``Escaped``. Attributes are the function's (``__code__``, ``__name__``: the trace reads them)."""

    def __init__(self, function: Callable):
        self.function = function

    def __call__(self, *args, **kwargs):
        try:
            with exits_raise():
                return self.function(*args, **kwargs)
        except (Exception, KeyboardInterrupt):
            raise
        except BaseException as exc:
            raise escaped(exc) from exc

    def __getattr__(self, name: str):
        if name == "function":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.function, name)


def script_part(source: str, filename: str) -> tuple[int, str] | None:
    """(line, code) of the first statement of ``source`` that runs at import and trains: a loop
    at top level that calls two or more of the file's own functions (``for i in range(n): cost, cache
    = forward(...); grads = backward(...)``), or a call of an own function or method that runs a
    loop calling one of them (``parameters = model(X, Y)``,
    ``net.SGD(data, 30, 10, 3.0)``). Statements under ``if __name__ == "__main__":`` run only as a
    program; building a model or constants at import (``MODEL = make_model()``, ``MASK =
    np.random.default_rng(7).random(shape) < keep``, ``backward_W1_x2 = _scaled("W1", 2)``) is not
    a script part."""
    try:
        tree = ast.parse(source, filename)
    except SyntaxError:
        return None  # said when the file is run
    functions = {node.name: node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    methods: dict[str, list] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    methods.setdefault(item.name, []).append(item)

    def own(call: ast.AST) -> list:
        if not isinstance(call, ast.Call):
            return []
        if isinstance(call.func, ast.Name):
            return [functions[call.func.id]] if call.func.id in functions else []
        return methods.get(call.func.attr, []) if isinstance(call.func, ast.Attribute) else []

    def loops_over_own(node: ast.AST, least: int) -> bool:  # a loop calling ``least`` of the file's functions
        return any(isinstance(n, (ast.For, ast.While)) and len({id(f) for c in _run_at_import(n) for f in own(c)}) >= least
                   for n in [node, *_run_at_import(node)])

    trains: dict[int, bool] = {}

    def training(function) -> bool:
        key = id(function)
        if key not in trains:
            trains[key] = False  # recursion: not by itself
            body = ast.Module(body=function.body, type_ignores=[])
            trains[key] = loops_over_own(body, 1) or any(training(f) for n in _run_at_import(body) for f in own(n))
        return trains[key]

    for statement in tree.body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or _main_guard(statement):
            continue
        # at top level, a loop calling one factory of the file defines things (cases, methods); training
        # calls two or more (forward, backward, update); inside a function called at import, any loop does
        if loops_over_own(statement, 2) or any(training(f) for n in _run_at_import(statement) for f in own(n)):
            return statement.lineno, ast.get_source_segment(source, statement).splitlines()[0].strip()
    return None


def _main_guard(statement: ast.stmt) -> bool:
    test = statement.test if isinstance(statement, ast.If) else None
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))


def _run_at_import(node: ast.AST):
    """The nodes of ``node`` that run when it does: not the bodies of functions, lambdas or classes."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        yield child
        yield from _run_at_import(child)


def refuse_script_part(source: str, filename: str, what: str) -> None:
    """``InputError`` naming the line where ``filename`` (``what``: "model file", "case file") would
    run its script part at import, and what to do; nothing is run."""
    found = script_part(source, filename)
    if found is not None:
        line, code = found
        raise InputError(f"{what} {filename} trains at import (line {line}: {code}), so loading it for its functions "
                         "would run the training first; put the script part under `if __name__ == \"__main__\":`")


def _is_user(filename: str) -> bool:
    path = os.path.abspath(filename)
    return not (filename.startswith("<") or path.startswith(_OWN_DIR) or path.startswith(_LIBRARY_DIRS))


def user_frames(exc: BaseException) -> str:
    """The frames of ``exc``'s traceback in the user's files, innermost last, as
    ``  File "model.py", line 12, in forward`` and the code line; "" where there are none."""
    if isinstance(exc, Escaped) and exc.__cause__ is not None:
        exc = exc.__cause__
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if _is_user(code.co_filename):
            source = linecache.getline(code.co_filename, tb.tb_lineno).strip()  # "" where the file is not here
            frames.append(f'  File "{code.co_filename}", line {tb.tb_lineno}, in {code.co_name}'
                          + (f"\n    {source}" if source else ""))
        tb = tb.tb_next
    return "\n".join(frames[-FRAMES_KEPT:])


def with_frames(error: Exception, cause: BaseException) -> Exception:
    """``error`` (a one-line ``InputError``/``JobError``) noting the user's frames of ``cause``:
    Python and pytest print them under its message, and so does the CLI."""
    frames = user_frames(cause)
    if frames:
        error.add_note(frames)
    return error


def with_notes(error: Exception, source: BaseException) -> Exception:
    """``error`` carrying ``source``'s notes (the user's frames of a failure it reports)."""
    for note in getattr(source, "__notes__", ()):
        error.add_note(note)
    return error
