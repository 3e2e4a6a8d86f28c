"""The user's code as gradjob runs it: what may escape it, and where in it an error arose.

A forward that calls ``sys.exit(0)`` must not end the check as a pass. ``Guarded`` wraps every
user function gradjob calls, so that any ``BaseException`` but Ctrl-C (``SystemExit``,
``GeneratorExit``, one of the user's own) comes out as an ordinary exception, ``Escaped``, which
every stage already reports as an error of the user's code: one line, exit 2 before the job
starts, 3 during it. ``os._exit`` skips every ``except``: while user code runs, a call of it from
that thread raises ``SystemExit`` instead (``exits_raise``), and is reported the same way.
``user_frames`` keeps the user's part of a traceback (file:line and the
code line, as pytest shows it) to print under that line.
"""

from __future__ import annotations

import contextlib
import importlib
import linecache
import os
import sysconfig
import threading
from typing import Callable

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
