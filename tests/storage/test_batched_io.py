"""Issue 18: a stage opens the store once (``store.Opened``) and reads or writes what it can together,
one Zarr call for many arrays. The bytes on disk are those of the per-array calls gradjob made
before, one at a time (the reference below), and the numbers read back are the same."""

import numpy as np
import pytest
import zarr
from conftest import SEED_BUGGY_DIFFERENCE, store_fingerprint

from gradjob.run.plan import plan_chunks
from gradjob.storage import store, verification


@pytest.fixture(scope="module")
def seed_store(tmp_path_factory):
    """The README's main job, in this process (the serial executor), in chunks of 7."""
    from typer.testing import CliRunner

    from gradjob.cli.app import app

    path = tmp_path_factory.mktemp("seed") / "seed.zarr"
    run = CliRunner().invoke(app, ["submit", "--json", "--epsilon", "1e-7", "--chunk-size", "7", "--store", str(path)],
                             catch_exceptions=False)
    assert run.exit_code == 1, run.stderr
    assert f'"difference": {SEED_BUGGY_DIFFERENCE}' in run.stdout
    opened = store.open_existing(str(path))
    results = {name: opened[name][...] for name in (*store.RESULT_ARRAYS, "done")}
    verify = {name: opened[f"verify/{name}"][...] for name in verification.VERIFY_ARRAYS}
    return store.metadata(opened), opened["theta"][...], opened["grad"][...], *store.read_case(opened), results, verify


def written_one_call_at_a_time(path, meta, theta, grad, X, Y, results, verify):
    """The store as gradjob wrote it before issue 18: each array created, written and reopened alone."""
    group = zarr.open_group(path, mode="w", attributes={"gradjob": store.CREATING})
    n, block = theta.size, min(theta.size, store.READ_BLOCK)
    for name, vector in (("theta", theta), ("grad", grad)):
        group.create_array(name, shape=(n,), chunks=(block,), dtype=vector.dtype, fill_value=np.nan, **store.codecs())
        group[name][:] = vector
    for name in store.RESULT_ARRAYS:
        group.create_array(name, shape=(n,), chunks=(meta.chunk_size,), dtype="f8", fill_value=np.nan,
                           config={"write_empty_chunks": True}, **store.codecs())
    group.create_array("done", shape=(meta.n_chunks,), chunks=(1,), dtype="u1", fill_value=0, **store.codecs())
    case = group.create_group("case")
    case.create_array("X", data=np.asarray(X), **store.codecs())
    case.create_array("Y", data=np.asarray(Y), **store.codecs())
    group.attrs["gradjob"] = store.sealed(meta.to_json())
    for chunk in plan_chunks(n, meta.chunk_size):
        for name in store.RESULT_ARRAYS:
            zarr.open_group(path, mode="r+")[name][chunk.start:chunk.stop] = results[name][chunk.start:chunk.stop]
        zarr.open_group(path, mode="r+")["done"][chunk.index] = results["done"][chunk.index]
    folder = group.require_group("verify")
    for name in verification.VERIFY_ARRAYS:
        folder.create_array(name, data=np.ascontiguousarray(verify[name]), overwrite=True, **store.codecs())
    folder.attrs["checksum"] = verification._arrays_checksum(verify)


def written_together(path, meta, theta, grad, X, Y, results, verify):
    store.create(str(path), meta, theta, grad, X, Y)
    opened = store.open_existing(str(path), mode="r+")
    for chunk in plan_chunks(theta.size, meta.chunk_size):
        part = {name: results[name][chunk.start:chunk.stop] for name in store.RESULT_ARRAYS}
        store.write_chunk(opened, chunk, part, by_forward=results["done"][chunk.index] == store.DONE_BY_FORWARD)
    verification.write_verification(opened, verify)
    return opened


def test_writing_together_stores_the_same_bytes_as_one_call_at_a_time(seed_store, tmp_path):
    written_one_call_at_a_time(tmp_path / "reference.zarr", *seed_store)
    written_together(tmp_path / "together.zarr", *seed_store)
    reference, together = store_fingerprint(tmp_path / "reference.zarr"), store_fingerprint(tmp_path / "together.zarr")
    assert {"zarr.json", "case/X/c/0/0", "gradapprox/c/6", "done/c/6", "verify/index/c/0"} <= set(together)
    assert together == reference


def test_reading_together_gives_back_what_was_written(seed_store, tmp_path):
    meta, theta, grad, X, Y, results, verify = seed_store
    opened = written_together(tmp_path / "together.zarr", *seed_store)
    again = store.open_existing(str(tmp_path / "together.zarr"))
    for handle in (opened, again):
        blocks = list(store.iter_blocks(handle, 3, 40))
        assert len(blocks) == 1
        np.testing.assert_array_equal(blocks[0]["theta"], theta[3:40])
        np.testing.assert_array_equal(blocks[0]["gradapprox"], results["gradapprox"][3:40])
        np.testing.assert_array_equal(store.read_range(handle, "grad", 5, 30), grad[5:30])
        np.testing.assert_array_equal(store.done_mask(handle), results["done"].astype(bool))
        for got, want in zip(store.read_case(handle), (X, Y)):
            np.testing.assert_array_equal(got, want)
        assert store.metadata(handle) == meta
        assert verification.read_verification(handle, "x") == verification.verdicts_of(verify)


def test_one_pass_over_every_checksum_finds_each_damaged_chunk(seed_store, tmp_path):
    meta = seed_store[0]
    path = tmp_path / "together.zarr"
    written_together(path, *seed_store)
    for relative in ("gradapprox/c/1", "noise/c/4", "step/c/4", "done/c/6"):
        data = bytearray((path / relative).read_bytes())
        data[8] ^= 0x04
        (path / relative).write_bytes(bytes(data))
    done, notes = store.undamaged(store.open_existing(str(path)), meta, str(path))
    assert done.tolist() == [True, False, True, True, False, True, False]
    assert [note.split(" (")[0] for note in notes] == [
        f"chunk 6 of done in {path} fails its checksum",
        f"chunk 1 of gradapprox in {path} fails its checksum",
        f"chunk 4 of step in {path} fails its checksum"]  # the first damaged result array of a chunk, in their order
