"""A crafted store whose per-parameter arrays are not all chunked as its job's chunks (the checksum of
its metadata is unkeyed, so anyone can make one) is refused in one line, exit 2, nothing changed:
each task writes whole Zarr chunks of every result array and its own done flag, and a resume reads
chunk k of each as job chunk k. Before, a resume ended in Zarr's BoundsCheckError traceback."""

import shutil

import numpy as np
import pytest
import zarr
from conftest import store_fingerprint

from gradjob.storage import store


@pytest.fixture(scope="module")
def seed_store(tmp_path_factory):
    """README's main job in chunks of 3 (16 chunks), in this process."""
    from typer.testing import CliRunner

    from gradjob.cli.app import app

    path = tmp_path_factory.mktemp("seed") / "seed.zarr"
    run = CliRunner().invoke(app, ["submit", "--epsilon", "1e-7", "--chunk-size", "3", "--store", str(path)],
                             catch_exceptions=False)
    assert run.exit_code == 1, run.stderr
    return path


def rechunked(source, copy, name, chunks):
    """``name`` rewritten with other chunks and the same values; chunk 2 left to do."""
    shutil.copytree(source, copy)
    group = zarr.open_group(copy, mode="r+")
    array = group[name]
    values = array[...]
    group.create_array(name, shape=array.shape, chunks=chunks, dtype=array.dtype, fill_value=array.fill_value,
                       overwrite=True, **store.codecs())
    group[name][...] = values
    group["done"][2] = 0
    return copy


@pytest.mark.parametrize("name, chunks, problem", [
    ("step", (5,), "describes 16 chunks of 3 but its array step is chunked by 5"),
    ("noise", (47,), "describes 16 chunks of 3 but its array noise is chunked by 47"),
    ("done", (2,), "describes 16 chunks of 3 but its array done is chunked by 2, not one done flag a chunk"),
])
def test_a_result_array_chunked_otherwise_is_refused_in_one_line(gradjob, seed_store, tmp_path, name, chunks, problem):
    copy = rechunked(seed_store, tmp_path / "copy.zarr", name, chunks)
    before = store_fingerprint(copy)
    expected = f"gradjob: error: store {copy} is corrupted: its gradjob metadata {problem}; resubmit with --overwrite\n"
    for args in (["submit", "--epsilon", "1e-7", "--chunk-size", "3", "--store", copy], ["report", copy]):
        run = gradjob(*args)
        assert (run.exit_code, run.stdout, run.stderr) == (2, "", expected)
    assert store_fingerprint(copy) == before


def test_every_result_array_is_chunked_as_the_plan_and_the_store_as_written_resumes(gradjob, seed_store, tmp_path):
    group = zarr.open_group(seed_store, mode="r")
    assert store.metadata(store.open_existing(str(seed_store))).chunk_size == 3
    assert {name: group[name].chunks for name in (*store.RESULT_ARRAYS, "done")} == {
        **{name: (3,) for name in store.RESULT_ARRAYS}, "done": (1,)}
    copy = tmp_path / "copy.zarr"
    shutil.copytree(seed_store, copy)
    zarr.open_group(copy, mode="r+")["done"][2] = 0
    run = gradjob("submit", "--epsilon", "1e-7", "--chunk-size", "3", "--json", "--store", copy)
    assert run.exit_code == 1, run.stderr
    assert np.all(zarr.open_group(copy, mode="r")["done"][...] == 1)
