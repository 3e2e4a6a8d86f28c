"""Where the gradient is checked: inputs X, labels Y and the parameter values.

From an ``.npz`` file (loaded without pickle), a Zarr group of arrays (``case.zarr``), from
``file.py:FUNC`` returning ``(X, Y, parameters)``, or built in: ``seed`` (the seed's test case, drawn as the seed draws it),
``linear`` (x=2, θ=4) and ``random`` (a random network for ``--layers``).
"""

from __future__ import annotations

import hashlib
import json
import re
import runpy
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gradjob import options
from gradjob.errors import InputError
from gradjob.model.usercode import Guarded, escaped, exits_raise, refuse_script_part, with_frames

BUILTIN_CASES = ("seed", "linear", "random")  # the names load_case resolves itself


@dataclass
class Case:
    X: np.ndarray
    Y: np.ndarray
    parameters: dict[str, np.ndarray]
    description: str

    def digest(self) -> str:
        """Hash of X and Y (θ is hashed separately, from the flat vector)."""
        h = hashlib.sha256()
        for array in (self.X, self.Y):
            h.update(f"{array.dtype.str}{array.shape}".encode())
            h.update(np.ascontiguousarray(array).tobytes())
        return h.hexdigest()


def seed_case() -> Case:
    """The seed's ``gradient_check_n_test_case``: 4 features, 3 examples, layers 4-5-3-1. Its
    numbers are ``np.random.seed(1)``'s, drawn from a generator of its own: reseeding the global one
    would make a model's "random" weights drawn later in this process (or a worker) the same
    everywhere, and hide the module state the workers' J(θ) probe is there to catch."""
    rng = np.random.RandomState(1)
    X = rng.randn(4, 3)
    Y = np.array([1, 1, 0])
    W1 = rng.randn(5, 4)
    b1 = rng.randn(5, 1)
    W2 = rng.randn(3, 5)
    b2 = rng.randn(3, 1)
    W3 = rng.randn(1, 3)
    b3 = rng.randn(1, 1)
    parameters = {"W1": W1, "b1": b1, "W2": W2, "b2": b2, "W3": W3, "b3": b3}
    return Case(X, Y, parameters, "seed (the seed notebook's test case)")


def linear_case() -> Case:
    return Case(np.array(2.0), np.array(0.0), {"theta": np.array(4.0)}, "linear (x=2, θ=4)")


def check_network_shape(layers, examples: int, option: str = "--layers") -> None:
    """``InputError`` unless ``layers`` and ``examples`` describe a built-in network and data set."""
    shown = ",".join(map(str, layers))
    if len(layers) < 2 or min(layers) < 1:
        raise InputError(f"{option} needs at least two positive sizes, e.g. 784,512,256,1; got {shown}")
    if layers[-1] != 1:
        raise InputError(f"{option} must end in 1 (one sigmoid output); got {shown}")
    options.BY_NAME["examples"].read(examples)  # its line, as the command line refuses it


def random_case(layers: list[int], examples: int, seed: int) -> Case:
    """A random network and data set: He-scaled weights, small biases, 0/1 labels."""
    check_network_shape(layers, examples)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((layers[0], examples))
    Y = rng.integers(0, 2, size=(1, examples)).astype(np.float64)
    parameters = {}
    for layer in range(1, len(layers)):
        fan_in = layers[layer - 1]
        parameters[f"W{layer}"] = rng.standard_normal((layers[layer], fan_in)) * np.sqrt(2.0 / fan_in)
        parameters[f"b{layer}"] = rng.standard_normal((layers[layer], 1)) * 0.1
    shape = ",".join(map(str, layers))
    return Case(X, Y, parameters, f"random (layers {shape}, {examples} examples, seed {seed})")


def load_case(spec: str, layers: list[int], examples: int, seed: int) -> Case:
    """Resolve ``--case``."""
    if spec == "seed":
        return seed_case()
    if spec == "linear":
        return linear_case()
    if spec == "random":
        return random_case(layers, examples, seed)
    if spec.endswith(".npz"):
        return _npz_case(Path(spec))
    if spec.rstrip("/").endswith(".zarr"):
        return _zarr_case(spec)
    if ".py:" in spec:
        path, _, function = spec.rpartition(":")
        return _python_case(Path(path), function)
    raise InputError(
        f"--case {spec!r} is not understood; give file.npz, file.py:FUNC or one of: {', '.join(BUILTIN_CASES)}"
    )


def _npz_case(path: Path) -> Case:
    if not path.is_file():
        raise InputError(f"case file {str(path)!r} does not exist")
    if not zipfile.is_zipfile(path):  # np.load then tries pickle, and its error spoke of object arrays
        raise InputError(f"case file {path} is not an .npz archive; write it with np.savez(path, X=X, Y=Y, W1=W1, …)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except ValueError as exc:
        if "pickle" in str(exc):
            raise InputError(f"case file {path} holds object arrays that need pickle; save numeric arrays only") from None
        raise InputError(f"case file {path} is not a readable .npz: {exc}") from None
    except Exception as exc:
        raise InputError(f"case file {path} is not a readable .npz: {exc}") from None
    return _split_case(arrays, f"{path.name} (npz)", str(path))


def _zarr_case(path: str) -> Case:
    """X, Y and the parameters from a Zarr group; parameter order from its ``parameters``
    attribute, else by layer number then name (W1, b1, W2, b2, …)."""
    import zarr

    from gradjob.storage.urls import is_url

    if not is_url(path) and not Path(path).exists():
        raise InputError(f"case store {path!r} does not exist")
    try:
        group = zarr.open_group(path, mode="r")
        arrays = {name: array[...] for name, array in group.arrays()}
        order = group.attrs.get("parameters")
    except Exception as exc:
        raise InputError(f"case store {path} is not a readable Zarr group of arrays: {exc}") from None
    names = [n for n in arrays if n not in ("X", "Y")]
    if order is None:
        order = sorted(names, key=lambda n: (int(re.sub(r"\D", "", n) or 0), n))
    elif not isinstance(order, list) or not all(isinstance(n, str) for n in order):
        raise InputError(f"case store {path}: its 'parameters' attribute must be a list of array names; "
                         f"got {json.dumps(order)[:80]}")
    elif sorted(order) != sorted(names):
        raise InputError(f"case store {path}: its 'parameters' attribute does not list exactly its parameter arrays")
    return _split_case({k: arrays[k] for k in ["X", "Y", *order] if k in arrays}, f"{Path(path).name} (zarr)", path)


def _python_case(path: Path, function: str) -> Case:
    if not path.is_file():
        raise InputError(f"case file {str(path)!r} does not exist")
    try:
        refuse_script_part(path.read_text(), str(path), "case file")
    except (OSError, UnicodeDecodeError):
        pass  # said by running it
    try:
        with exits_raise():
            namespace = runpy.run_path(str(path))
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # sys.exit(0) too: an error, never a pass
        error = exc if isinstance(exc, Exception) else escaped(exc)
        raise with_frames(InputError(f"case file {path} failed to run: {type(error).__name__}: {error}"),
                          exc) from None
    if not callable(namespace.get(function)):
        raise InputError(f"case file {path} has no function {function!r}")
    try:
        result = Guarded(namespace[function])()
    except Exception as exc:
        raise with_frames(InputError(f"case function {function} in {path} raised {type(exc).__name__}: {exc}"),
                          exc) from None
    if not (isinstance(result, tuple) and len(result) == 3 and isinstance(result[2], dict)):
        raise InputError(f"case function {function} in {path} must return (X, Y, parameters) with parameters a dict")
    X, Y, parameters = result
    return _split_case({"X": X, "Y": Y, **parameters}, f"{path.name}:{function}", f"{path}:{function}")


def _split_case(arrays: dict, description: str, where: str) -> Case:
    missing = [name for name in ("X", "Y") if name not in arrays]
    if missing:
        raise InputError(f"case {where} has no {' or '.join(missing)}; it needs X, Y and one array per parameter")
    parameters = {k: v for k, v in arrays.items() if k not in ("X", "Y")}
    if not parameters:
        raise InputError(f"case {where} has X and Y but no parameters; add one array per parameter")
    data = []
    for name in ("X", "Y"):
        array = np.asarray(arrays[name])
        if array.dtype.kind not in "fiub":
            raise InputError(f"case {where}: {name} is not a numeric array (dtype {array.dtype})")
        data.append(array)
    return Case(data[0], data[1], parameters, description)
