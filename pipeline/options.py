"""Every option of a check, declared once: its name, type, range or choices, default, help text
and the one line that refuses a bad value.

The ``gradjob submit`` command's parameters (``cli.parsing``), the job file's ``[[check]]`` and
``[cluster]`` schema (``run.jobfile``) and the Python API's keywords (``api``) are made from
``OPTIONS``, so the three accept the same names with the same defaults and refuse a bad value
with the same message: ``--epsilon must be a positive finite number; got 0.0`` on the command
line and from the API, ``epsilon must be …`` under the key a job file spells. A value is read
from text (the command line; the API, whose values may be strings or numpy scalars as well) or
typed (a TOML file, whose types are the user's: ``examples = "16"`` is refused).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import numpy as np

from gradjob.errors import InputError
from gradjob.types import METHODS, MODES, PRECISIONS, Request

DEFAULT_WORKERS = min(os.cpu_count() or 1, 4)  # the command line's embedded cluster


class Bad(Exception):
    """A value refused by a ``Kind``: what it must be and what was given (``at``: an element)."""

    def __init__(self, must: str, got, at: str = ""):
        super().__init__(must)
        self.must, self.got, self.at = must, got, at


class Kind:
    """How one type of option is read, and what ``--help`` shows of it (``metavar``, ``bounds``
    as Typer's ``min``/``max``, ``range_text`` for a range those cannot say)."""

    metavar: str | None = None
    bounds: dict = {}
    range_text = ""

    def read(self, value, typed: bool):
        raise NotImplementedError


class Text(Kind):
    def read(self, value, typed):
        if isinstance(value, os.PathLike):  # the API's store=Path(...)
            return os.fspath(value)
        if not isinstance(value, str):
            raise Bad("a string", value)
        return value


class Flag(Kind):
    def read(self, value, typed):
        if not isinstance(value, (bool, np.bool_)):
            raise Bad("true or false", value)
        return bool(value)


class Count(Kind):
    """A whole number of at least ``minimum``."""

    metavar = "<int range>"

    def __init__(self, minimum: int = 1):
        self.minimum = minimum
        self.bounds = {"min": minimum}

    def read(self, value, typed):
        if typed and (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))):
            raise Bad("a whole number", value)
        try:
            number = int(str(value))
        except ValueError:
            raise Bad("a whole number", value) from None
        if number < self.minimum:
            raise Bad(f"at least {self.minimum}", number)
        return number


class Positive(Kind):
    """A positive finite number."""

    metavar = "<float range>"
    range_text = "[x>0]"

    def read(self, value, typed):
        if typed and (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number))):
            raise Bad("a positive finite number", value)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise Bad("a positive finite number", value) from None
        if not (math.isfinite(number) and number > 0):
            raise Bad("a positive finite number", number)
        return number


class Choice(Kind):
    def __init__(self, choices: tuple[str, ...]):
        self.choices = choices
        self.metavar = f"<{'|'.join(choices)}>"

    def read(self, value, typed):
        if not isinstance(value, str) or value not in self.choices:
            raise Bad(f"one of {', '.join(self.choices)}", value)
        return value


class Sizes(Kind):
    """Layer sizes: ``784,512,256,1`` on the command line, ``[784, 512, 256, 1]`` in a job file."""

    metavar = "<int,int,...>"

    def read(self, value, typed):
        if isinstance(value, tuple):  # the default
            return value
        if typed:
            if not isinstance(value, list):
                raise Bad("a list", value)
            sizes = []
            for i, size in enumerate(value):
                try:
                    sizes.append(Count(1).read(size, typed))
                except Bad as bad:
                    raise Bad(bad.must, bad.got, f"[{i}]") from None
            return tuple(sizes)
        try:
            return tuple(int(part) for part in str(value).split(","))
        except ValueError:
            raise Bad("comma-separated sizes such as 784,512,256,1", value) from None


CLI, CHECK, CLUSTER, API = "cli", "check", "cluster", "api"  # where an option is given (``Option.where``)
_REQUEST = {f.name: f.default for f in dataclasses.fields(Request)}


@dataclass(frozen=True)
class Option:
    """One option. ``default``: what a check gets when it is not given (``Request``'s, unless
    the surface decides, as ``workers`` does: None)."""

    name: str
    kind: Kind
    help: str
    where: frozenset[str]
    default: object = None
    envvar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def read(self, value, typed: bool = False, spelled: str | None = None):
        """The value, or ``InputError``: ``{spelled} must be …; got …`` (default spelling: ``--name``)."""
        try:
            return self.kind.read(value, typed)
        except Bad as bad:
            raise InputError(message(spelled or self.flag, bad)) from None

    def but(self, **changes) -> "Option":
        """This option as another command shows it (another default or help text)."""
        return dataclasses.replace(self, **changes)


def message(spelled: str, bad: Bad) -> str:
    return f"{spelled}{bad.at} must be {bad.must}; got {bad.got!r}"


def _option(name: str, kind: Kind, help: str, *where: str, **declared) -> Option:
    return Option(name, kind, help, frozenset(where), **{"default": _REQUEST[name], **declared})


ALL = (CLI, CHECK, API)
OPTIONS: tuple[Option, ...] = (  # in the order ``gradjob submit -h`` shows them
    _option("model", Text(), "A model file (.py) or a built-in: linear, network, seed-buggy.", CLI, CHECK),
    _option("forward", Text(), "Forward function in the model file [forward_propagation_n].", CLI, CHECK),
    _option("backward", Text(), "Backward function in the model file [backward_propagation_n].", CLI, CHECK),
    _option("case", Text(), "file.npz, case.zarr, file.py:FUNC, or seed, linear, random [the model's own].",
            CLI, CHECK),
    _option("layers", Sizes(), "Layer sizes for --case random.", CLI, CHECK),
    _option("examples", Count(1), "Examples for --case random.", CLI, CHECK),
    _option("seed", Count(0), "Random seed for --case random.", *ALL),
    _option("epsilon", Positive(), "Fixed step for every parameter [automatic, from the measured noise].", *ALL),
    _option("method", Choice(METHODS), "central, five-point or complex-step (complex-safe forwards only).", *ALL),
    _option("fast", Flag(), "Incremental evaluation: the built-in network's, a traced replay of a model file's forward "
            "(--no-fast: one forward call per evaluation).", *ALL),
    _option("precision", Choice(PRECISIONS), "float64: check float32/float16 models in float64 where their code "
            "allows; model: in their own dtype.", *ALL),
    _option("threshold", Positive(), "Largest difference that passes [2e-7 for float64, 1e-3 for float32].", *ALL),
    _option("chunk_size", Count(1), "Parameters per task [about 8 tasks per worker].", *ALL),
    _option("workers", Count(1), f"Worker processes of the embedded cluster [{DEFAULT_WORKERS}].", CLI, CLUSTER, API,
            default=None),  # the command line: DEFAULT_WORKERS; the API: in this process; a job file: Request's
    _option("scheduler", Text(), "Use an existing Dask scheduler, tcp://HOST:PORT [DASK_SCHEDULER_ADDRESS].",
            CLI, CLUSTER, API, envvar="DASK_SCHEDULER_ADDRESS"),
    _option("store", Text(), "Zarr store of this check [gradjob-stores/<model>-<case>-<hash>.zarr].", CLI, API),
    _option("task_timeout", Positive(), "Seconds a task may run before the job ends, naming it [max(60, 50× its "
            "expected time)].", CLI, CHECK),
    _option("overwrite", Flag(), "Delete an existing store at --store and start afresh.", CLI, API),
    _option("resume", Flag(), "Require an existing store and compute only its missing chunks.", CLI, API),
    _option("break_lock", Flag(), "Take over the store's lock even if held from another host.", CLI, API),
    _option("mode", Choice(MODES), "full: every parameter, on the cluster; directional: a quick screen on the "
            "client.", *ALL),
    _option("directions", Count(1), "Random directions per tensor in directional mode.", *ALL),
)
BY_NAME = {option.name: option for option in OPTIONS}

WORKERS_WITH_SCHEDULER = ("--workers sizes the embedded cluster; with --scheduler (or DASK_SCHEDULER_ADDRESS) the "
                          "cluster's own workers run the job: drop one of them")
OVERWRITE_AND_RESUME = "--overwrite and --resume contradict each other; choose one"


def of(where: str) -> tuple[Option, ...]:
    """The options given on the command line (``CLI``), in a job file's ``[[check]]`` (``CHECK``)
    or ``[cluster]`` (``CLUSTER``), or to the Python API (``API``)."""
    return tuple(option for option in OPTIONS if where in option.where)


def check(request: Request) -> None:
    """``InputError`` for any option of ``request`` out of range, before anything is loaded (a
    ``Request`` made in Python is held to the same declarations as the command line)."""
    for option in OPTIONS:
        value = getattr(request, option.name)
        if value is not None:
            option.read(value)
    if request.overwrite and request.resume:
        raise InputError(OVERWRITE_AND_RESUME)
