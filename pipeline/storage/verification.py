"""The re-verified suspects in a store (``verify/``): their index, class, settled estimate and
tolerance, and the ladders they were classed from; written once from the client, sealed by a
checksum, so that ``report`` and a resumed run show and keep them."""

from __future__ import annotations

import hashlib

import numpy as np
import zarr
import zarr.api.asynchronous
from zarr.core.sync import sync

from gradjob.errors import InputError
from gradjob.numerics.verify import CLASSES, Verdict
from gradjob.storage import store

VERIFY_ARRAYS = ("index", "klass", "estimate", "tolerance", "cost", "cost_plus", "cost_minus", "step_plus",
                 "step_minus")


def write_verification(group: store.Opened, arrays: dict[str, np.ndarray]) -> None:
    """The verified suspects and their ladders, once, from the client, the arrays together (one Zarr
    call); sealed by a checksum, written last."""
    async def write() -> tuple:
        folder = await zarr.api.asynchronous.open_group(store=group.group.store, path="verify", mode="a")
        made = await store.gathered([folder.create_array(name, data=np.ascontiguousarray(arrays[name]), overwrite=True,
                                                         **store.codecs()) for name in VERIFY_ARRAYS])
        return folder, made

    with store.disk_full(group.where):
        folder, made = sync(write())
        group.nodes |= {f"verify/{name}": zarr.Array(array) for name, array in zip(VERIFY_ARRAYS, made)}
        group.nodes["verify"] = zarr.Group(folder)
        group["verify"].attrs["checksum"] = _arrays_checksum(arrays)


def read_verification(group: store.Opened, path: str) -> dict[int, Verdict] | None:
    """The stored verdicts by θ index, or None if this store was never verified."""
    if "verify" not in group or "checksum" not in group["verify"].attrs:
        return None
    folder = group["verify"]
    read = group.read([f"verify/{name}" for name in VERIFY_ARRAYS])
    arrays = {name: read[f"verify/{name}"] for name in VERIFY_ARRAYS}
    if folder.attrs["checksum"] != _arrays_checksum(arrays):
        raise InputError(f"store {path} is corrupted: its verified suspects were edited; resubmit with --overwrite")
    problem = _problem(arrays, group["theta"].shape[0])
    if problem:
        raise InputError(f"store {path} is corrupted: its verified suspects {problem}; resubmit with --overwrite")
    return verdicts_of(arrays)


def read_to_resume(group: store.Opened, path: str) -> tuple[dict[int, Verdict] | None, list[str]]:
    """``read_verification`` for a resume: verdicts with a chunk that fails its checksum are
    recomputable, so they count as never verified (the suspects are verified again), with a note."""
    try:
        return read_verification(group, path), []
    except store.DamagedChunk as damaged:
        if not damaged.array.startswith("verify/"):
            raise
        key = ", ".join(map(str, damaged.chunk))
        return None, [f"chunk {key} of {damaged.array} in {path} fails its checksum: the suspects are verified again"]


def _problem(arrays: dict[str, np.ndarray], n: int) -> str | None:
    """How the verified suspects disagree with what ``write_verification`` writes (their checksum is
    unkeyed, so a crafted store can match it)."""
    count = arrays["index"].shape
    if any(a.ndim not in (1, 2) or a.shape[:1] != count for a in arrays.values()):  # ladders are 2-D
        return "are arrays of different lengths"
    if arrays["index"].dtype.kind not in "iu" or arrays["klass"].dtype.kind not in "iu":
        return "have indices or classes that are not integers"
    if count[0] and not (0 <= arrays["index"].min() and arrays["index"].max() < n):
        return f"name parameters outside 0…{n - 1}"
    if count[0] and not (0 <= arrays["klass"].min() and arrays["klass"].max() < len(CLASSES)):
        return "have classes gradjob does not know"
    return None


def verdicts_of(arrays: dict[str, np.ndarray]) -> dict[int, Verdict]:
    """The verdicts by θ index, from the arrays ``write_verification`` stores."""
    return {int(i): Verdict(int(k), float(e), float(t))
            for i, k, e, t in zip(arrays["index"], arrays["klass"], arrays["estimate"], arrays["tolerance"])}


def _arrays_checksum(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in VERIFY_ARRAYS:
        array = np.ascontiguousarray(arrays[name])
        h.update(f"{name}{array.dtype.str}{array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()
