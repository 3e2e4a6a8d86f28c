"""cubed's rule, kept on reopen: every result array writes a chunk even when it equals the fill
value (NaN), so that "the chunk exists" means "it was written". Zarr reopens an array with its
default, ``write_empty_chunks=False``, which would leave such a chunk unwritten by a task."""

import numpy as np
import pytest

from gradjob.run.plan import plan_chunks
from gradjob.storage import store
from gradjob.types import StoreMeta


@pytest.fixture
def empty_store(tmp_path):
    """The README's main job's metadata, θ, gradient and case in a new store, no chunk evaluated."""
    from typer.testing import CliRunner

    from gradjob.cli.app import app

    seed = tmp_path / "seed.zarr"
    run = CliRunner().invoke(app, ["submit", "--epsilon", "1e-7", "--chunk-size", "7", "--store", str(seed)],
                             catch_exceptions=False)
    assert run.exit_code == 1, run.stderr
    opened = store.open_existing(str(seed))
    meta: StoreMeta = store.metadata(opened)
    path = tmp_path / "new.zarr"
    store.create(str(path), meta, opened["theta"][...], opened["grad"][...], *store.read_case(opened))
    return path, meta


def test_result_arrays_reopen_writing_empty_chunks(empty_store):
    path, _ = empty_store
    opened = store.open_existing(str(path), mode="r+")
    assert {name: opened[name].async_array.config.write_empty_chunks for name in store.RESULT_ARRAYS} == {
        name: True for name in store.RESULT_ARRAYS}


def test_a_chunk_equal_to_the_fill_value_is_written_through_a_reopened_store(empty_store):
    path, meta = empty_store
    chunk = plan_chunks(meta.layout.n_parameters, meta.chunk_size)[2]
    nan = {name: np.full(chunk.size, np.nan) for name in store.RESULT_ARRAYS}
    store.write_chunk(store.open_existing(str(path), mode="r+"), chunk, nan)
    assert all((path / name / "c" / "2").is_file() for name in store.RESULT_ARRAYS)
    assert (path / "done" / "c" / "2").is_file()
