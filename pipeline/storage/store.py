"""The Zarr store of one check: the only state a job has, and the truth for resume.

Layout of the group::

    zarr.json            attrs["gradjob"]: identity, layout, options, provenance (written once)
    theta, grad          θ and the analytic gradient, written by the client before any task
    gradapprox, cost_plus, cost_minus, step, noise
                         per-parameter results; Zarr chunk = job chunk, so each task writes
                         whole chunks that no other task touches
    done                 one uint8 per job chunk (Zarr chunk of 1), set after its data is written:
                         1, or 2 where the traced fast path was found wrong there and the forward
                         evaluated it (its replay's switches are not used there either)
    case/X, case/Y       the inputs, so workers read them once from the store
    verify/…             the re-verified suspects (see ``verification``): index, class,
                         estimate, tolerance and their ladders; written once by the client, sealed

Every chunk of every array ends in a crc32c checksum (Zarr's ``crc32c`` codec), so a flipped bit
is found when the chunk is read instead of changing the verdict. The checksum is unkeyed: it
detects damage, not tampering.

A stage opens the store once (``open_existing``: an ``Opened``, its group and the metadata of every
array, read in one call) and passes that handle on; what it reads or writes together (a chunk's
results, a block of every vector, the case, every chunk's checksum) is one Zarr call. Each Zarr
call waits for Zarr's event loop: README's main job made 469 of them, one per array opened, read
or written, and now makes 74.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
from typing import Iterable, Iterator

import numpy as np
import zarr
import zarr.api.asynchronous
from zarr.core.sync import sync

from gradjob.errors import InputError, JobError
from gradjob.run.plan import Chunk, plan_chunks
from gradjob.storage import schema, urls
from gradjob.types import StoreMeta

FORMAT = 3  # 3: every chunk checksummed
CREATING = {"creating": "a gradjob store whose creation has not finished"}  # its metadata until then
RESULT_ARRAYS = ("gradapprox", "cost_plus", "cost_minus", "step", "noise")
RECOMPUTED = (*RESULT_ARRAYS, "done")  # a resume evaluates a damaged chunk of these again (and verify/: its suspects)
READ_BLOCK = 1 << 16  # elements per read when streaming; fixed, so results never depend on chunking
DONE, DONE_BY_FORWARD = 1, 2  # ``done`` of a chunk; the second: its replay was found wrong


def codecs() -> dict:
    """The compressors of every array gradjob writes: Zarr's default zstd, then a crc32c checksum."""
    return {"compressors": (zarr.codecs.ZstdCodec(), zarr.codecs.Crc32cCodec())}


class DamagedChunk(InputError):
    """A stored chunk whose bytes no longer match their checksum."""

    def __init__(self, where: str, array: str, chunk: tuple[int, ...], start: int | None = None):
        self.array, self.chunk = array, chunk
        key = ", ".join(map(str, chunk))
        todo = ("resubmit the job to evaluate it again" if array in RECOMPUTED
                or array.startswith("verify/") else "resubmit with --overwrite")
        super().__init__(f"store {where} is corrupted: chunk {key} of {array} fails its checksum; {todo}")


class Opened:
    """A store opened once: its group and every node in it (``case/X``, ``verify/index``, …), whose
    metadata one call read. Stages pass this handle instead of reopening the store or its arrays."""

    def __init__(self, group: zarr.Group):
        self.group = group
        self.where = where(group)
        self.nodes: dict[str, zarr.Array | zarr.Group] = dict(group.members(max_depth=None))
        for name in RESULT_ARRAYS:  # as created: Zarr reopens an array with write_empty_chunks=False
            if isinstance(self.nodes.get(name), zarr.Array):
                self.nodes[name] = zarr.Array(self.nodes[name].async_array.with_config({"write_empty_chunks": True}))

    @property
    def attrs(self):
        return self.group.attrs

    def __getitem__(self, name: str) -> zarr.Array:
        return self.nodes[name]

    def __contains__(self, name: str) -> bool:
        return name in self.nodes

    def get(self, name: str):
        return self.nodes.get(name)

    def read(self, names: Iterable[str], selection=Ellipsis) -> dict[str, np.ndarray]:
        """``self[name][selection]`` of every name, in one Zarr call; ``DamagedChunk`` names the
        first chunk that fails its checksum (of the first such array in ``names``)."""
        names = tuple(names)
        values = together(self[name].async_array.getitem(selection) for name in names)
        for name, value in zip(names, values):
            if isinstance(value, BaseException):
                if _checksum_failed(value):
                    checked(self[name], selection)  # raises, naming the chunk
                raise value
        return dict(zip(names, values))

    def write(self, values: dict[str, tuple[object, np.ndarray]]) -> None:
        """``self[name][selection] = value`` for every name, in one Zarr call."""
        sync(gathered([self[name].async_array.setitem(selection, value) for name, (selection, value) in values.items()]))


def together(coroutines: Iterable) -> list:
    """Zarr's coroutines run concurrently in one call on Zarr's event loop (each sync call of Zarr's
    API waits for that loop once); an exception is returned in its place, not raised."""
    async def gather():
        return await asyncio.gather(*coroutines, return_exceptions=True)

    return sync(gather())


async def gathered(coroutines: Iterable) -> list:
    """The coroutines' results, once all have finished; then the first exception, if any, raised."""
    results = await asyncio.gather(*coroutines, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def checked(array: zarr.Array, selection=Ellipsis) -> np.ndarray:
    """``array[selection]``, or ``DamagedChunk`` naming the first chunk that fails its checksum."""
    try:
        return array[selection]
    except ValueError as exc:
        if not _checksum_failed(exc):
            raise
    for block in np.ndindex(*array.cdata_shape):
        if not _intact(array, block):
            raise DamagedChunk(where(array), array.path, block)
    raise AssertionError(f"{array.path}: a checksum failed but no chunk fails it alone")  # pragma: no cover


def _intact(array: zarr.Array, block: tuple[int, ...]) -> bool:
    try:
        array.get_block_selection(block)
    except ValueError as exc:
        if not _checksum_failed(exc):
            raise
        return False
    return True


def _checksum_failed(exc: BaseException) -> bool:
    """Whether Zarr's read failed because a chunk fails its crc32c checksum (a damaged chunk)."""
    return isinstance(exc, ValueError) and "checksum" in str(exc)


def where(node: zarr.Array | zarr.Group) -> str:
    """The store's path as it was opened (a local path, or the URL's path)."""
    return str(getattr(node.store, "root", None) or getattr(node.store, "path", None) or node.store)


def undamaged(group: Opened, meta: StoreMeta, path: str) -> tuple[np.ndarray, list[str]]:
    """The done flags less the chunks whose flag or results fail their checksum, which a resume
    evaluates again, with a note for each. A damaged case (which the workers read) is refused here.
    Every chunk's checksum is checked in one pass (a call per ``READ_BLOCK`` elements of chunks)."""
    read_case(group)
    chunks = plan_chunks(meta.layout.n_parameters, meta.chunk_size)
    notes = []

    def again(k: int, array: str) -> None:
        first, last = meta.layout.describe(chunks[k].start), meta.layout.describe(chunks[k].stop - 1)
        notes.append(f"chunk {k} of {array} in {path} fails its checksum (parameters {first} to {last}): "
                     "evaluated again")

    flags = _chunks_read(group, ("done",), [Chunk(k, k, k + 1) for k in range(group["done"].shape[0])])
    done = np.zeros(len(flags), dtype=bool)
    for (k, _), flag in flags.items():  # one flag per Zarr chunk: a damaged one counts as not done
        if isinstance(flag, BaseException):
            again(k, "done")
        else:
            done[k] = bool(flag[0])
    results = _chunks_read(group, RESULT_ARRAYS, [chunks[int(k)] for k in np.flatnonzero(done)])
    for k in np.flatnonzero(done):
        bad = next((name for name in RESULT_ARRAYS if isinstance(results[int(k), name], BaseException)), None)
        if bad:
            done[k] = False
            again(int(k), bad)
    return done, notes


def _chunks_read(group: Opened, names: tuple[str, ...], chunks: list[Chunk]) -> dict:
    """Each chunk of each named array by (chunk index, name): its values, or the ``DamagedChunk``
    of a chunk that fails its checksum (other errors are raised); a Zarr call per ``READ_BLOCK``
    elements of chunks, so memory stays a block whatever the store's size."""
    out = {}
    per_call = max(1, READ_BLOCK // chunks[0].size) if chunks else 1
    for first in range(0, len(chunks), per_call):
        batch = chunks[first:first + per_call]
        keys = [(c.index, name) for c in batch for name in names]
        values = together(group[name].async_array.getitem(slice(c.start, c.stop)) for c in batch for name in names)
        for (k, name), value in zip(keys, values):
            if isinstance(value, BaseException):
                if not _checksum_failed(value):
                    raise value
                value = DamagedChunk(group.where, name, (k,))
            out[k, name] = value
    return out


def create(path: str, meta: StoreMeta, theta: np.ndarray, grad: np.ndarray, X: np.ndarray, Y: np.ndarray,
) -> None:
    """Write a new store: metadata, θ, the gradient and the case, before any task runs. Until its
    metadata is written last, the group says it is being created (``CREATING``): a store left
    half-made by a kill is recognised, and resubmitting starts it afresh."""
    try:
        with disk_full(path):
            group = zarr.open_group(path, mode="w", attributes={"gradjob": CREATING})
    except JobError:
        raise
    except Exception as exc:  # local OSErrors, and whatever an fsspec backend raises
        raise InputError(f"cannot write the store at {path}: {exc}; choose another --store") from None
    try:
        with disk_full(path):
            _fill(group, meta, theta, grad, X, Y)
    except JobError:
        with contextlib.suppress(Exception):
            urls.remove(path)  # ours, half-made: give the space back (if this fails, CREATING marks it)
        raise


def _fill(group: zarr.Group, meta: StoreMeta, theta: np.ndarray, grad: np.ndarray, X: np.ndarray, Y: np.ndarray,
          ) -> None:
    """The arrays created together, then their data together (one Zarr call), then the metadata."""
    n = theta.size
    block = min(n, READ_BLOCK)

    async def fill() -> None:
        root = await zarr.api.asynchronous.open_group(store=group.store, path=group.path, mode="r+")
        arrays = {name: root.create_array(name, shape=(n,), chunks=(block,), dtype=vector.dtype, fill_value=np.nan,
                                          **codecs())  # NaN fill: a lost chunk reads as missing, not 0
                  for name, vector in (("theta", theta), ("grad", grad))}
        arrays |= {name: root.create_array(name, shape=(n,), chunks=(meta.chunk_size,), dtype="f8",
                                           fill_value=np.nan, config={"write_empty_chunks": True}, **codecs())
                   for name in RESULT_ARRAYS}
        arrays["done"] = root.create_array("done", shape=(meta.n_chunks,), chunks=(1,), dtype="u1", fill_value=0,
                                           **codecs())
        *made, case = await gathered([*arrays.values(), root.create_group("case")])
        made = dict(zip(arrays, made))
        await gathered([made["theta"].setitem(slice(None), theta), made["grad"].setitem(slice(None), grad),
                        case.create_array("X", data=np.asarray(X), **codecs()),
                        case.create_array("Y", data=np.asarray(Y), **codecs())])

    sync(fill())
    group.attrs["gradjob"] = sealed(meta.to_json())


@contextlib.contextmanager
def disk_full(path: str) -> Iterator[None]:
    """A full disk (or quota) while writing the store: one line and exit 3; what is written stays."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise JobError(f"disk full writing {path}; free some space and submit the same job again") from None


def half_created(path: str) -> bool:
    """Is ``path`` a store whose creation never finished (see ``create``)?"""
    try:
        return zarr.open_group(path, mode="r").attrs.get("gradjob") == CREATING
    except Exception:
        return False


def sealed(meta: dict) -> dict:
    """Metadata with a checksum, so that an edited store is recognised instead of trusted."""
    return {**meta, "format": FORMAT, "checksum": _checksum(meta)}


def _checksum(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k not in ("checksum", "format")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def recognised(path: str) -> bool:
    """Is there a gradjob store at ``path``, intact or not? Only such a store may be overwritten."""
    try:
        return isinstance(zarr.open_group(path, mode="r").attrs.get("gradjob"), dict)
    except Exception:
        return False


def open_existing(path: str, mode: str = "r") -> Opened:
    """An existing gradjob store, checked for tampering; ``InputError`` for anything else."""
    try:
        group = zarr.open_group(path, mode=mode)
    except Exception:
        raise InputError(f"{path} is not a gradjob store (no Zarr group there)") from None
    meta = group.attrs.get("gradjob")
    if not isinstance(meta, dict) or "checksum" not in meta:
        raise InputError(f"{path} is a Zarr group but not a gradjob store (no gradjob metadata)")
    if meta.get("format") != FORMAT:
        raise InputError(f"store {path} was written by another version of gradjob (store format {meta.get('format')}, "
                         f"this one reads {FORMAT}); resubmit with --overwrite")
    if meta["checksum"] != _checksum(meta):
        raise InputError(f"store {path} is corrupted: its gradjob metadata was edited; resubmit with --overwrite")
    return Opened(group)


def metadata(group: Opened) -> StoreMeta:
    """The store's metadata, checked against its schema and its arrays (see ``schema``)."""
    return schema.validated(dict(group.attrs["gradjob"]), group, group.where)


def done_mask(group: Opened) -> np.ndarray:
    return np.asarray(group.read(["done"])["done"], dtype=bool)


def replay_found_wrong(group: Opened, indices: np.ndarray) -> np.ndarray:
    """Per θ index, whether its chunk was evaluated by the forward because the replay was found wrong."""
    chunk_size = group["gradapprox"].chunks[0]
    return group.read(["done"])["done"][np.asarray(indices, dtype=np.int64) // chunk_size] == DONE_BY_FORWARD


def read_vector(group: Opened, name: str) -> np.ndarray:
    """A whole vector; see ``read_range``."""
    return read_range(group, name, 0, group[name].shape[0])


def read_range(group: Opened, name: str, start: int, stop: int) -> np.ndarray:
    """[start, stop) of a vector, read block by block into one array: peak memory is the range
    plus a block, not twice the range (zarr assembles a read in a buffer of its own)."""
    out = np.empty(stop - start, dtype=group[name].dtype)
    for first in range(start, stop, READ_BLOCK):
        last = min(stop, first + READ_BLOCK)
        out[first - start:last - start] = group.read([name], slice(first, last))[name]
    return out


def read_case(group: Opened) -> tuple[np.ndarray, np.ndarray]:
    case = group.read(["case/X", "case/Y"])
    return case["case/X"], case["case/Y"]


def write_chunk(group: Opened, chunk: Chunk, results: dict[str, np.ndarray], by_forward: bool = False) -> None:
    """Write one chunk's results (together: one Zarr call), then mark it done: a done chunk always has
    its data. ``by_forward``: the replay was found wrong in this chunk, which the forward evaluated instead."""
    chunk_size = group["gradapprox"].chunks[0]
    if chunk.start % chunk_size or (chunk.size != chunk_size and chunk.stop != group["gradapprox"].shape[0]):
        raise ValueError(f"chunk {chunk} does not align with the store's Zarr chunks of {chunk_size}")
    with disk_full(group.where):
        group.write({name: (slice(chunk.start, chunk.stop), results[name]) for name in RESULT_ARRAYS})
        group.write({"done": (slice(chunk.index, chunk.index + 1), DONE_BY_FORWARD if by_forward else DONE)})


def iter_blocks(group: Opened, start: int, stop: int,
                names: tuple[str, ...] = ("theta", "grad") + RESULT_ARRAYS) -> Iterator[dict[str, np.ndarray]]:
    """[start, stop) of the named vectors, READ_BLOCK elements at a time, each block of them all in one call."""
    for block_start in range(start, stop, READ_BLOCK):
        block_stop = min(stop, block_start + READ_BLOCK)
        yield {name: np.asarray(value, dtype=np.float64)
               for name, value in group.read(names, slice(block_start, block_stop)).items()}
