"""Issue 19: a full disk, on a real small filesystem (a tmpfs of a few hundred KiB, mounted for the
test; gradjob's tests run as root), while the store is created and while chunks are written: one
line, exit 3, and resubmitting once there is space gives the result of a run that never ran out.

The network (784-64-1, 50,305 parameters) takes about 0.9 MiB to create its store (θ, the gradient,
the case) and 1 MiB more for its results."""

import json
import subprocess

import numpy as np
import pytest
import zarr

from gradjob.storage import store

NETWORK = ["--model", "network", "--layers", "784,64,1", "--examples", "16", "--case", "random", "--chunk-size", "4096"]


@pytest.fixture
def disk(tmp_path):
    """A tmpfs at tmp_path/disk; ``disk.resize("8m")`` gives it more room."""
    path = tmp_path / "disk"
    path.mkdir()

    class Disk:
        def mount(self, size):
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                  capture_output=True, text=True)
            if done.returncode:
                pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()})")

        def resize(self, size):
            subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)

    disk = Disk()
    disk.path = path
    yield disk
    subprocess.run(["umount", str(path)], capture_output=True)


@pytest.fixture(scope="module")
def clean(tmp_path_factory, cluster_address):
    from typer.testing import CliRunner

    from gradjob.cli.app import app

    path = tmp_path_factory.mktemp("clean") / "s.zarr"
    run = CliRunner().invoke(app, ["submit", "--json", *NETWORK, "--store", str(path), "--scheduler", cluster_address],
                             catch_exceptions=False)
    assert run.exit_code == 0, run.stderr
    return json.loads(run.stdout), zarr.open_group(path, mode="r")["gradapprox"][...]


def same_as_clean(run, path, clean):
    result, gradapprox = clean
    assert run.exit_code == 0, run.stderr
    assert json.loads(run.stdout)["difference"] == result["difference"]
    assert json.loads(run.stdout)["tensors"] == result["tensors"]
    assert zarr.open_group(path, mode="r")["gradapprox"][...].tobytes() == gradapprox.tobytes()


@pytest.mark.parametrize("size", ["512k", "1200k"], ids=["creating the store", "writing chunks"])
def test_disk_full_is_one_line_and_resubmitting_recovers(gradjob, disk, clean, cluster_address, size):
    disk.mount(size)
    path = disk.path / "s.zarr"
    args = ["submit", "--json", *NETWORK, "--store", path, "--scheduler", cluster_address]
    run = gradjob(*args)
    line = f"disk full writing {path}; free some space and submit the same job again"
    assert (run.exit_code, json.loads(run.stdout)) == (3, {"passed": False, "error": line, "exit_code": 3})
    assert run.stderr.endswith(f"gradjob: error: {line}\n")
    assert "Traceback" not in run.stderr and not (disk.path / "s.zarr.lock").exists()
    if size == "512k":
        assert not path.exists()  # the half-made store is removed: its space is given back
    else:
        done = zarr.open_group(path, mode="r")["done"][...]
        assert 0 < done.sum() < done.size  # finished chunks are kept
    disk.resize("8m")
    again = gradjob(*args)
    same_as_clean(again, path, clean)
    if size == "1200k":  # a task the failed job left running may still have finished its chunk meanwhile
        assert 1 <= json.loads(again.stdout)["evaluated_chunks"] <= done.size - done.sum()


def test_a_store_left_half_created_is_started_afresh(gradjob, tmp_path, cluster_address):
    path = tmp_path / "s.zarr"
    group = zarr.open_group(path, mode="w", attributes={"gradjob": store.CREATING})  # killed while creating
    group.create_array("theta", shape=(47,), dtype="f8")
    args = ["submit", "--epsilon", "1e-7", "--store", path, "--scheduler", cluster_address]
    run = gradjob(*args, "--resume")
    assert (run.exit_code, run.stderr) == (2, f"gradjob: error: --resume: store {path} was never fully created; "
                                              "submit without --resume to start afresh\n")
    run = gradjob(*args)
    assert run.exit_code == 1, run.stderr
    assert f"gradjob: note: store {path} was left half-created; starting afresh\n" in run.stderr
    assert np.isfinite(zarr.open_group(path, mode="r")["gradapprox"][...]).all()
