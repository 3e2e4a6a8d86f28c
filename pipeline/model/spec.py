"""Which forward and backward are checked: built in by name, or functions in a user's file.

A user's model file is code. The client reads it once; its *source text* travels with each task
and is executed on the workers the user pointed at, so the file need not exist there. Nothing
is unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import reprlib
import sys
import types
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from gradjob.errors import InputError
from gradjob.model import imports, networks
from gradjob.model.usercode import Guarded, escaped, exits_raise, refuse_script_part, with_frames

DEFAULT_FORWARD = "forward_propagation_n"
DEFAULT_BACKWARD = "backward_propagation_n"

BUILTIN_MODELS: dict[str, tuple[Callable, Callable, str]] = {
    "linear": (networks.linear_forward, networks.linear_backward, "1-D model J(θ) = θx"),
    "network": (networks.network_forward, networks.network_backward,
                "L-layer LINEAR→RELU…→SIGMOID network, correct backward"),
    "seed-buggy": (networks.forward_propagation_n, networks.backward_propagation_n,
                   "the seed's network with its two planted backward bugs"),
}
BUILTIN_CASE_FOR = {"linear": "linear", "network": "random", "seed-buggy": "seed"}


@dataclass(frozen=True)
class ModelSpec:
    """What to load: a built-in name, a file's source text and the two function names, or two
    Python functions (the Python API; they travel to Dask workers by reference or by value)."""

    name: str
    source: str | None = None
    forward: str = DEFAULT_FORWARD
    backward: str = DEFAULT_BACKWARD
    functions: tuple[Callable, Callable] | None = None
    modules: str = ""  # digest of the user modules it imports (see ``identity``): edited helpers, new spec

    def with_modules(self) -> "ModelSpec":
        """This spec with the digest of the modules it imports as they are now."""
        return dataclasses.replace(self, modules=imports.digest_of(self.imported_modules()))

    def imported_modules(self) -> dict[str, str]:
        """{file: sha256} of the user's modules this model's code imports (see ``imports``)."""
        return imports.user_modules(self.files, self._source_text, self.name)

    @property
    def _source_text(self) -> str | None:
        return None if self.functions is not None else self.source

    @property
    def is_builtin(self) -> bool:
        return self.source is None

    @property
    def files(self) -> list[str]:
        """The files whose code this model runs first (their imports are followed by ``identity``)."""
        if self.functions is not None:
            return sorted({f for f in (_sourcefile(fn) for fn in self.functions) if f})
        return [] if self.is_builtin else [self.name]

    def digest(self) -> str:
        text = self.name if self.is_builtin else self.source
        return hashlib.sha256(f"{text}\0{self.forward}\0{self.backward}".encode()).hexdigest()

    def describe(self) -> str:
        if self.is_builtin:
            return f"{self.name} (built in: {BUILTIN_MODELS[self.name][2]})"
        if self.functions is not None:
            return f"{self.name} (Python functions)"
        return f"{self.name} ({self.forward} / {self.backward})"


def _sourcefile(function: Callable) -> str | None:
    """The file defining ``function``; None for partials and callable objects."""
    try:
        return inspect.getsourcefile(function)
    except TypeError:
        return None


@dataclass(frozen=True)
class Model:
    forward: Callable
    backward: Callable


def model_spec(model: str, forward: str | None = None, backward: str | None = None) -> ModelSpec:
    """Resolve ``--model`` on the client: a built-in name or a path to a ``.py`` file."""
    if model in BUILTIN_MODELS:
        if forward or backward:
            raise InputError(f"--forward/--backward apply to model files; {model!r} is built in")
        return ModelSpec(model, forward="forward", backward="backward")
    path = Path(model)
    if path.exists() and not path.is_file():
        raise InputError(f"model {model!r} is not a file; give the .py file that defines the forward and backward")
    if not path.is_file():
        raise InputError(
            f"model file {model!r} does not exist; give a .py file or one of: {', '.join(BUILTIN_MODELS)}"
        )
    try:
        source = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read model file {model!r}: {exc}") from None
    refuse_script_part(source, str(path.resolve()), "model file")  # before any of it runs (once, on the client)
    spec = ModelSpec(str(path.resolve()), source, forward or DEFAULT_FORWARD, backward or DEFAULT_BACKWARD).with_modules()
    load_model(spec)  # fail here, on the client, with a clear line
    return spec


@lru_cache(maxsize=16)
def load_model(spec: ModelSpec) -> Model:
    """The model's two functions; a file's source is executed once per process."""
    if spec.functions is not None:
        return Model(*map(Guarded, spec.functions))
    if spec.is_builtin:
        forward, backward, _ = BUILTIN_MODELS[spec.name]
        return Model(forward, backward)
    _forget_user_modules(spec)
    module = types.ModuleType(f"gradjob_user_model_{spec.digest()[:12]}")
    module.__file__ = spec.name
    folder = str(Path(spec.name).parent)
    if Path(folder).is_dir():  # helpers beside the model file come first, where that folder exists
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)
    try:
        with exits_raise():
            exec(compile(spec.source, spec.name, "exec"), module.__dict__)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # sys.exit(0) at import too: an error, never a pass
        error = escaped(exc) if not isinstance(exc, Exception) else exc
        raise with_frames(InputError(f"model file {spec.name} failed to load: {type(error).__name__}: {error}"),
                          exc) from None
    functions = []
    for role, name in (("forward", spec.forward), ("backward", spec.backward)):
        function = getattr(module, name, None)
        if not callable(function):
            raise InputError(
                f"model file {spec.name} has no {role} function {name!r}; name it with --{role}"
            )
        functions.append(Guarded(function))
    return Model(*functions)


def _forget_user_modules(spec: ModelSpec) -> None:
    """Drop the modules this model file imports from outside the Python installation from
    ``sys.modules`` (by file and by the name it imports them as), so that a long-lived process (a
    Dask worker, a notebook) imports them as they are now, from beside this model file, not as
    another version or another model's helper of the same name left them."""
    found = imports.user_imports(spec.files, spec._source_text, spec.name)
    files, names = set(found), {name for name, _ in found.values() if name}
    for name, module in list(sys.modules.items()):
        if name in names or getattr(module, "__file__", None) in files:
            del sys.modules[name]


def cost_function(model: Model, X, Y, parameters) -> Callable[[], float]:
    """J as a function of nothing: it reads ``parameters`` (views into θ) at each call."""

    def cost() -> float:  # a new dict of the same views per call: a forward that rebinds a key
        return as_cost(model.forward(X, Y, dict(parameters)))  # (p["W1"] = clip(p["W1"])) stays on θ

    return cost


def _cost_of(result):
    """The cost in a forward's ``cost`` or ``(cost, cache)``."""
    if isinstance(result, tuple) and not result:
        raise InputError("forward must return a scalar cost or (cost, cache); it returned an empty tuple ()")
    return result[0] if isinstance(result, tuple) else result


def cost_dtype(result) -> np.dtype | None:
    """The dtype the forward computed its cost in, when it says (a NumPy scalar or array)."""
    cost = _cost_of(result)
    return cost.dtype if isinstance(cost, (np.ndarray, np.generic)) else None


def as_cost(result) -> float | complex:
    """The cost from a forward's ``cost`` or ``(cost, cache)``; complex only under complex step."""
    cost = _cost_of(result)
    try:
        array = np.asarray(cost)
    except Exception:  # ragged sequences and the like
        array = np.asarray(None)
    if array.size != 1 or array.dtype.kind not in "fiuc":
        found = (f"{type(cost).__name__} of shape {array.shape}" if array.dtype.kind in "fiucb"
                 else "None" if cost is None else f"{type(cost).__name__} {reprlib.repr(cost)}")  # no shape to speak of
        raise InputError(f"forward must return a scalar cost or (cost, cache); it returned {found}")
    value = array.reshape(())
    return complex(value) if array.dtype.kind == "c" else float(value)
