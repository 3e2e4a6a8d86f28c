"""Issue 17.8: every chunk gradjob stores carries a crc32c checksum, so one flipped bit on disk is
refused by ``report`` (naming the array and chunk) and evaluated again by a resume, whose result
is then identical, bit for bit, to a run that was never damaged."""

import json
import shutil

import numpy as np
import pytest
import zarr
from conftest import SEED_BUGGY_DIFFERENCE, store_fingerprint


@pytest.fixture(scope="module")
def clean(tmp_path_factory, cluster_address):
    """The seed's planted bugs at ε = 1e-7 in chunks of 7 (7 chunks), never damaged."""
    from typer.testing import CliRunner

    from gradjob.cli.app import app

    path = tmp_path_factory.mktemp("clean") / "seed.zarr"
    run = CliRunner().invoke(app, ["submit", "--json", "--epsilon", "1e-7", "--chunk-size", "7", "--store", str(path),
                                   "--scheduler", cluster_address], catch_exceptions=False)
    assert run.exit_code == 1, run.stderr
    return path, json.loads(run.stdout)


def flip(path, byte=8):
    data = bytearray(path.read_bytes())
    data[byte] ^= 0x04
    path.write_bytes(bytes(data))


def arrays(path):
    group = zarr.open_group(path, mode="r")
    return {name: group[name][...] for name in ("gradapprox", "cost_plus", "cost_minus", "step", "noise")}


def test_every_array_is_checksummed(clean):
    group = zarr.open_group(clean[0], mode="r")
    names = [name for name, _ in group.arrays()] + [f"case/{n}" for n, _ in group["case"].arrays()] + [
        f"verify/{n}" for n, _ in group["verify"].arrays()]
    assert len(names) == 8 + 2 + 9
    for name in names:
        assert "crc32c" in [c.to_dict()["name"] for c in group[name].metadata.codecs], name


def test_report_refuses_a_flipped_bit_in_gradapprox(gradjob, clean, tmp_path):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(clean[0], copy)
    flip(copy / "gradapprox" / "c" / "2")
    before = store_fingerprint(copy)
    run = gradjob("report", copy)
    assert (run.exit_code, run.stdout, run.stderr) == (2, "", (
        f"gradjob: error: store {copy} is corrupted: chunk 2 of gradapprox fails its checksum; resubmit the job to "
        "evaluate it again\n"))
    assert store_fingerprint(copy) == before


def test_resume_evaluates_a_damaged_chunk_again_identically(gradjob, clean, tmp_path, cluster_address):
    path, result = clean
    copy = tmp_path / "copy.zarr"
    shutil.copytree(path, copy)
    flip(copy / "gradapprox" / "c" / "2")
    flip(copy / "noise" / "c" / "5", byte=20)
    run = gradjob("submit", "--json", "--epsilon", "1e-7", "--chunk-size", "7", "--store", copy,
                  "--scheduler", cluster_address, "--resume")
    assert run.exit_code == 1, run.stderr
    assert (f"gradjob: note: chunk 2 of gradapprox in {copy} fails its checksum (parameters W1[3, 2] to b1[0, 0]): "
            "evaluated again\n") in run.stderr
    assert (f"gradjob: note: chunk 5 of noise in {copy} fails its checksum (parameters W2[2, 0] to b2[1, 0]): "
            "evaluated again\n") in run.stderr
    resumed = json.loads(run.stdout)
    assert resumed["evaluated_chunks"] == 2
    assert resumed["difference"] == result["difference"] == SEED_BUGGY_DIFFERENCE
    assert resumed["tensors"] == result["tensors"]
    for name, clean_array in arrays(path).items():
        np.testing.assert_array_equal(arrays(copy)[name], clean_array, strict=True)
        assert arrays(copy)[name].tobytes() == clean_array.tobytes()
    report = gradjob("report", "--json", copy)
    assert report.exit_code == 1 and json.loads(report.stdout)["tensors"] == result["tensors"]


@pytest.mark.parametrize("array, chunk, key", [("theta", "c/0", "0"), ("grad", "c/0", "0"),
                                                ("case/X", "c/0/0", "0, 0")])
def test_report_and_resume_refuse_a_flipped_bit_elsewhere(gradjob, clean, tmp_path, array, chunk, key):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(clean[0], copy)
    flip(copy / array / chunk, byte=4)
    before = store_fingerprint(copy)
    expected = (f"gradjob: error: store {copy} is corrupted: chunk {key} of {array} fails its checksum; resubmit "
                "with --overwrite\n")
    submit = ["submit", "--epsilon", "1e-7", "--chunk-size", "7", "--store", copy]
    for args in ([submit] if array == "case/X" else [["report", copy], submit]):  # report reads no case
        run = gradjob(*args)
        assert (run.exit_code, run.stderr) == (2, expected)
    assert store_fingerprint(copy) == before


@pytest.mark.parametrize("array, chunk, note", [
    ("done", "c/3", "chunk 3 of done in {copy} fails its checksum (parameters b1[1, 0] to W2[0, 2]): evaluated again"),
    ("verify/klass", "c/0", "chunk 0 of verify/klass in {copy} fails its checksum: the suspects are verified again"),
    ("verify/cost_plus", "c/0/0", "chunk 0, 0 of verify/cost_plus in {copy} fails its checksum: the suspects are "
                                  "verified again")])
def test_a_damaged_done_flag_or_verified_suspect_is_recomputed_on_resume(gradjob, clean, tmp_path, array, chunk, note):
    """Done flags and verified suspects are recomputable: a resume does that for the damaged ones only
    (it used to ask for --overwrite, which throws the whole run away) and gives the clean run's numbers."""
    path, result = clean
    copy = tmp_path / "copy.zarr"
    shutil.copytree(path, copy)
    flip(copy / array / chunk, byte=4)
    run = gradjob("report", copy)
    assert (run.exit_code, run.stderr) == (2, f"gradjob: error: store {copy} is corrupted: chunk "
                                              f"{chunk[2:].replace('/', ', ')} of {array} fails its checksum; "
                                              "resubmit the job to evaluate it again\n")
    run = gradjob("submit", "--json", "--epsilon", "1e-7", "--chunk-size", "7", "--store", copy, "--resume")
    assert run.exit_code == 1, run.stderr
    assert f"gradjob: note: {note.format(copy=copy)}\n" in run.stderr
    resumed = json.loads(run.stdout)
    assert resumed["evaluated_chunks"] == (1 if array == "done" else 0)
    assert resumed["difference"] == result["difference"] == SEED_BUGGY_DIFFERENCE
    assert resumed["tensors"] == result["tensors"]
    for name, clean_array in arrays(path).items():
        assert arrays(copy)[name].tobytes() == clean_array.tobytes()
    clean_verify, verify = zarr.open_group(path, mode="r")["verify"], zarr.open_group(copy, mode="r")["verify"]
    for name, stored in clean_verify.arrays():
        assert verify[name][...].tobytes() == stored[...].tobytes(), name
    report = gradjob("report", "--json", copy)
    assert report.exit_code == 1 and json.loads(report.stdout)["tensors"] == result["tensors"]


# ---------------------------------------------------------------------------------------------
# issue 19: crafted attributes (their checksum recomputed, as anyone can: it is unkeyed)


def craft(path, change):
    from gradjob.storage import store

    group = zarr.open_group(path, mode="r+")
    meta = {k: v for k, v in dict(group.attrs["gradjob"]).items() if k not in ("format", "checksum")}
    change(meta)
    group.attrs["gradjob"] = store.sealed(meta)


def tensors(meta, value):
    meta["layout"]["tensors"] = value


CRAFTED = [
    ("chunk size a string", lambda m: m.update(chunk_size="7"), "has a wrong chunk_size: input should be a valid integer"),
    ("layout missing", lambda m: m.pop("layout"), "has a wrong layout: field required"),
    ("shape not a list", lambda m: tensors(m, [["W1", 5, 0]]), "has a wrong layout.tensors.0.1: input should be a valid "
     "array"),
    ("negative epsilon", lambda m: m.update(epsilon=-1e-7), "has a wrong epsilon: input should be greater than 0"),
    ("unknown method", lambda m: m.update(method="backward"),
     "has a wrong method: input should be 'central', 'five-point' or 'complex-step'"),
    ("not a float dtype", lambda m: m["layout"].update(dtype="int8"), "names 'int8' as a dtype; a float dtype is "
     "expected"),
    ("10^10 parameters", lambda m: tensors(m, [["W1", [100000, 100000], 0], *m["layout"]["tensors"][1:]]),
     "puts tensor 'b1' at offset 20, not 10000000000 after the tensors before it"),
    ("10^10 parameters, offsets consistent", lambda m: tensors(m, [["W1", [100000, 100000], 0]]),
     "calibrates other tensors than its layout has"),
    ("more chunks", lambda m: m.update(n_chunks=8), "describes 8 chunks of 7 but its arrays are chunked by 7, with 7 "
     "done flags"),
]


def one_tensor_of_10_10(meta):
    tensors(meta, [["W1", [100000, 100000], 0]])
    meta["calibration"]["tensors"] = meta["calibration"]["tensors"][:1]


@pytest.mark.parametrize("name, change, problem", CRAFTED + [
    ("10^10 parameters, calibrated", one_tensor_of_10_10,
     "describes 10,000,000,000 parameters but its array theta holds 47")], ids=lambda x: x if isinstance(x, str) else "")
def test_crafted_attributes_are_refused_in_one_line(gradjob, clean, tmp_path, name, change, problem):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(clean[0], copy)
    craft(copy, change)
    before = store_fingerprint(copy)
    expected = f"gradjob: error: store {copy} is corrupted: its gradjob metadata {problem}; resubmit with --overwrite\n"
    for args in (["report", copy], ["submit", "--epsilon", "1e-7", "--chunk-size", "7", "--store", copy]):
        run = gradjob(*args)
        assert (run.exit_code, run.stdout, run.stderr) == (2, "", expected)
    assert store_fingerprint(copy) == before


def test_crafted_verified_suspects_are_refused(gradjob, clean, tmp_path):
    from gradjob.storage import store, verification

    copy = tmp_path / "copy.zarr"
    shutil.copytree(clean[0], copy)
    group = zarr.open_group(copy, mode="r+")
    arrays = {name: group["verify"][name][...] for name in verification.VERIFY_ARRAYS}
    arrays["index"] = arrays["index"] + 10**10  # rewritten with a matching checksum, as anyone can
    verification.write_verification(store.Opened(group), arrays)
    run = gradjob("report", copy)
    assert (run.exit_code, run.stderr) == (2, f"gradjob: error: store {copy} is corrupted: its verified suspects name "
                                              "parameters outside 0…46; resubmit with --overwrite\n")
