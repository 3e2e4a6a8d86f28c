"""Every bad input: one line naming what is wrong, exit code 2, and an existing store untouched."""

import json
import shutil

import numpy as np
import pytest
import zarr
from conftest import store_fingerprint

from gradjob.run import job
from gradjob.types import Request


@pytest.fixture(scope="module")
def finished_store(tmp_path_factory, cluster_address):
    """A finished store of the seed demo (ε=1e-7, chunks of 7) that no bad input may change."""
    path = tmp_path_factory.mktemp("existing") / "seed.zarr"
    job.run(Request(case="seed", epsilon=1e-7, chunk_size=7, store=str(path), scheduler=cluster_address))
    return path


GOOD_MODEL = '''
from gradjob.model.networks import network_forward as forward, network_backward as backward
'''

BAD_GRADIENTS = '''
import numpy as np
from gradjob.model.networks import network_forward as forward, network_backward


def missing(X, Y, cache):
    gradients = network_backward(X, Y, cache)
    del gradients["db3"]
    return gradients


def wrong_shape(X, Y, cache):
    gradients = network_backward(X, Y, cache)
    gradients["dW1"] = gradients["dW1"][:, :3]  # of another size (another shape of the same size fails the tensor)
    return gradients


def not_numeric(X, Y, cache):
    gradients = network_backward(X, Y, cache)
    gradients["dW2"] = "zero"
    return gradients


def keyed_by_name_without_b1(X, Y, cache):  # cs231n's grads, keyed W1 for the gradient of W1; db1 forgotten
    return {k[1:]: v for k, v in network_backward(X, Y, cache).items() if k != "db1"}


def noisy_forward(X, Y, parameters):
    cost, cache = forward(X, Y, parameters)
    return cost + np.random.rand() * 1e-3, cache
'''


def npz(tmp_path, name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def seed_arrays():
    from gradjob.model.cases import seed_case

    case = seed_case()
    return {"X": case.X, "Y": case.Y, **case.parameters}


# (row id, arguments built from (tmp_path, store), the exact message after "gradjob: error: ")
ROWS = [
    ("missing model file", lambda t, s: ["--model", "nowhere.py"],
     "model file 'nowhere.py' does not exist; give a .py file or one of: linear, network, seed-buggy"),
    ("model file unreadable", lambda t, s: ["--model", write_bytes(t, "binary.py", b"\xff\xfe\x00")],
     "cannot read model file '{t}/binary.py': 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
    ("model path is a folder", lambda t, s: ["--model", str(t)],
     "model '{t}' is not a file; give the .py file that defines the forward and backward"),
    ("model file that does not load", lambda t, s: ["--model", write(t, "broken.py", "def forward(:\n")],
     "model file {t}/broken.py failed to load: SyntaxError: invalid syntax (broken.py, line 1)"),
    ("missing forward", lambda t, s: ["--model", write(t, "m.py", GOOD_MODEL), "--forward", "fwd"],
     "model file {t}/m.py has no forward function 'fwd'; name it with --forward"),
    ("missing backward", lambda t, s: ["--model", write(t, "m.py", GOOD_MODEL), "--forward", "forward"],
     "model file {t}/m.py has no backward function 'backward_propagation_n'; name it with --backward"),
    ("gradient missing a parameter", lambda t, s: grads(t, "missing"),
     "backward returned no gradient for db3; add them to its dict"),
    ("cs231n grads missing a parameter", lambda t, s: grads(t, "keyed_by_name_without_b1"),  # named all six d-keys
     "backward's gradients have no key 'b1' (they have 'W3', 'b3', 'W2', 'b2', 'W1'); add the gradient of each "
     "parameter under its name, e.g. grads['b1']"),
    ("gradient of the wrong shape", lambda t, s: grads(t, "wrong_shape"),
     "gradient 'dW1' has shape (5, 3) but parameter 'W1' has shape (5, 4)"),
    ("gradient not numeric", lambda t, s: grads(t, "not_numeric"),
     "gradient 'dW2' is not a numeric array (dtype <U4); give real numbers"),
    ("forward not deterministic", lambda t, s: grads(t, "network_backward", forward="noisy_forward"),
     "the forward is not deterministic: two evaluations at the same θ gave"),
    ("parameters not numeric", lambda t, s: ["--case", npz(t, "c.npz", **{**seed_arrays(), "W1": np.array(["a"])})],
     "parameter 'W1' is not a numeric array (dtype <U1); give real numbers"),
    ("npz that needs pickle", lambda t, s: ["--case", npz(t, "c.npz", **{**seed_arrays(), "W1": np.array([{}], dtype=object)})],
     "case file {t}/c.npz holds object arrays that need pickle; save numeric arrays only"),
    ("npz that is not an archive", lambda t, s: ["--case", write(t, "c.npz", "X,Y\n1,2\n")],  # said "need pickle"
     "case file {t}/c.npz is not an .npz archive; write it with np.savez(path, X=X, Y=Y, W1=W1, …)"),
    ("case without X", lambda t, s: ["--case", npz(t, "c.npz", **{k: v for k, v in seed_arrays().items() if k != "X"})],
     "case {t}/c.npz has no X; it needs X, Y and one array per parameter"),
    ("case without Y", lambda t, s: ["--case", npz(t, "c.npz", **{k: v for k, v in seed_arrays().items() if k != "Y"})],
     "case {t}/c.npz has no Y; it needs X, Y and one array per parameter"),
    ("case without parameters", lambda t, s: ["--case", npz(t, "c.npz", X=np.ones((4, 3)), Y=np.ones(3))],
     "case {t}/c.npz has X and Y but no parameters; add one array per parameter"),
    ("missing case file", lambda t, s: ["--case", "absent.npz"], "case file 'absent.npz' does not exist"),
    ("unknown case", lambda t, s: ["--case", "mnist"],
     "--case 'mnist' is not understood; give file.npz, file.py:FUNC or one of: seed, linear, random"),
    ("epsilon zero", lambda t, s: ["--epsilon", "0"], "--epsilon must be a positive finite number; got 0.0"),
    ("epsilon negative", lambda t, s: ["--epsilon", "-1e-7"], "--epsilon must be a positive finite number; got -1e-07"),
    ("epsilon not finite", lambda t, s: ["--epsilon", "nan"], "--epsilon must be a positive finite number; got nan"),
    ("epsilon infinite", lambda t, s: ["--epsilon", "inf"], "--epsilon must be a positive finite number; got inf"),
    ("chunk size zero", lambda t, s: ["--chunk-size", "0"], "--chunk-size must be at least 1; got 0"),
    ("unknown precision", lambda t, s: ["--precision", "float32"], "--precision must be one of float64, model; got 'float32'"),
    ("unknown method", lambda t, s: ["--method", "forward"],
     "--method must be one of central, five-point, complex-step; got 'forward'"),
    ("threshold zero", lambda t, s: ["--threshold", "0"], "--threshold must be a positive finite number; got 0.0"),
    ("workers zero", lambda t, s: ["--workers", "0"], "--workers must be at least 1; got 0"),
    ("bad layers", lambda t, s: ["--model", "network", "--layers", "4,x,1"],
     "--layers must be comma-separated sizes such as 784,512,256,1; got '4,x,1'"),
    ("one layer", lambda t, s: ["--model", "network", "--layers", "5"],
     "--layers needs at least two positive sizes, e.g. 784,512,256,1; got 5"),
    ("two outputs", lambda t, s: ["--model", "network", "--layers", "5,3,2"],
     "--layers must end in 1 (one sigmoid output); got 5,3,2"),
    ("store made by another job", lambda t, s: ["--model", "network", "--case", "seed", "--epsilon", "1e-7"],
     "store {s} was made by another job (model, evaluator differ); choose another --store or pass --overwrite to start afresh"),
    ("resume with another epsilon", lambda t, s: ["--case", "seed", "--epsilon", "1e-6", "--resume"],
     "store {s} was made by another job (epsilon differ); choose another --store or pass --overwrite to start afresh"),
    ("resume with another chunk size", lambda t, s: ["--case", "seed", "--epsilon", "1e-7", "--chunk-size", "5"],
     "store {s} is chunked by 7; resume with --chunk-size 7 or pass --overwrite"),
    ("overwrite and resume together", lambda t, s: ["--overwrite", "--resume"],
     "--overwrite and --resume contradict each other; choose one"),
]


def write(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


def write_bytes(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    return str(tmp_path / name)


def grads(tmp_path, backward, forward="forward"):
    return ["--model", write(tmp_path, "grads.py", BAD_GRADIENTS), "--forward", forward, "--backward", backward,
            "--case", "seed"]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_submit_input(row, gradjob, tmp_path, finished_store):
    _, build, message = row
    before = store_fingerprint(finished_store)
    run = gradjob("submit", "--store", finished_store, *build(tmp_path, finished_store))
    expected = "gradjob: error: " + message.format(t=tmp_path, s=finished_store)
    assert run.exit_code == 2
    assert run.stdout == ""
    assert run.stderr.startswith(expected) and run.stderr.count("\n") == 1, run.stderr
    assert store_fingerprint(finished_store) == before


def test_scheduler_that_does_not_answer(gradjob, free_port, finished_store, tmp_path):
    before = store_fingerprint(finished_store)
    run = gradjob("submit", "--case", "seed", "--epsilon", "1e-7", "--store", "new.zarr",
                  "--scheduler", f"tcp://127.0.0.1:{free_port}")
    assert run.exit_code == 2
    assert run.stderr.startswith(f"gradjob: error: cannot reach the Dask scheduler at tcp://127.0.0.1:{free_port} within 10 s")
    assert run.stderr.count("\n") == 1
    assert store_fingerprint(finished_store) == before
    assert not (tmp_path / "new.zarr").exists() and not (tmp_path / "new.zarr.lock").exists()


def test_store_path_that_cannot_be_written(gradjob, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    run = gradjob("submit", "--store", tmp_path / "a-file" / "s.zarr")
    assert run.exit_code == 2
    assert run.stderr.startswith(f"gradjob: error: cannot write the store at {tmp_path}/a-file/s.zarr")
    assert run.stderr.endswith("; choose another --store\n") and run.stderr.count("\n") == 1


@pytest.fixture
def store_copy(finished_store, tmp_path):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(finished_store, copy)
    return copy


def test_report_of_a_store_with_a_deleted_chunk(gradjob, store_copy):
    (store_copy / "gradapprox" / "c" / "2").unlink()
    before = store_fingerprint(store_copy)
    run = gradjob("report", store_copy)
    assert run.exit_code == 2
    assert run.stderr == (f"gradjob: error: store {store_copy} is corrupted: chunk data for W1[3, 2] is missing "
                          "although its chunk is marked done; resubmit with --overwrite\n")
    assert store_fingerprint(store_copy) == before


def test_resume_of_a_store_with_a_deleted_chunk(gradjob, store_copy):
    (store_copy / "cost_plus" / "c" / "0").unlink()
    before = store_fingerprint(store_copy)
    run = gradjob("submit", "--case", "seed", "--epsilon", "1e-7", "--store", store_copy, "--resume")
    assert (run.exit_code, run.stderr) == (2, (
        f"gradjob: error: store {store_copy} is corrupted: chunk data for W1[0, 0] is missing although its chunk "
        "is marked done; resubmit with --overwrite\n"))
    assert store_fingerprint(store_copy) == before
    assert gradjob("submit", "--case", "seed", "--epsilon", "1e-7", "--store", store_copy, "--overwrite").exit_code == 1


def test_report_and_resume_of_a_store_with_edited_attributes(gradjob, store_copy):
    meta_file = store_copy / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["attributes"]["gradjob"]["epsilon"] = 1e-3
    meta_file.write_text(json.dumps(meta))
    before = store_fingerprint(store_copy)
    expected = f"gradjob: error: store {store_copy} is corrupted: its gradjob metadata was edited; resubmit with --overwrite\n"
    for args in (["report", store_copy], ["submit", "--case", "seed", "--epsilon", "1e-7", "--store", store_copy]):
        run = gradjob(*args)
        assert (run.exit_code, run.stderr) == (2, expected)
    assert store_fingerprint(store_copy) == before


def test_report_of_something_that_is_not_a_store(gradjob, tmp_path):
    zarr.open_group(tmp_path / "plain.zarr", mode="w")
    run = gradjob("report", tmp_path / "plain.zarr")
    assert (run.exit_code, run.stderr) == (
        2, f"gradjob: error: {tmp_path}/plain.zarr is a Zarr group but not a gradjob store (no gradjob metadata)\n")
    run = gradjob("report", tmp_path / "absent.zarr")
    assert (run.exit_code, run.stderr) == (2, f"gradjob: error: there is no store at {tmp_path}/absent.zarr\n")
