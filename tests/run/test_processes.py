"""gradjob as a user runs it: a real ``gradjob`` process, and a cluster of ``dask scheduler`` and
``dask worker`` processes that the test starts on 127.0.0.1."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import SEED_BUGGY_DIFFERENCE

GRADJOB = [sys.executable, "-c", "from gradjob.cli import app; app(prog_name='gradjob')"]


def test_embedded_default_cluster_in_a_real_process(tmp_path):
    scratch = tmp_path / "tmp"  # issue 19: Dask's dask-scratch-space/*.lock files were left in $TMPDIR
    scratch.mkdir()
    run = subprocess.run(GRADJOB + ["submit", "--epsilon", "1e-7", "--workers", "2", "--json"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TMPDIR": str(scratch)})
    assert run.returncode == 1, run.stderr
    assert list(scratch.iterdir()) == []
    result = json.loads(run.stdout)  # stdout holds the JSON object and nothing else
    assert abs(result["difference"] - SEED_BUGGY_DIFFERENCE) <= 1e-9 * SEED_BUGGY_DIFFERENCE
    assert result["failing"] == ["b1", "W2"]
    assert list((tmp_path / "gradjob-stores").glob("seed-buggy-seed-*.zarr"))


def wait_for_line(process, needle, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if needle in line:
            return
        if process.poll() is not None:
            raise RuntimeError(f"process ended before printing {needle!r}")
    raise TimeoutError(needle)


@pytest.fixture
def dask_processes(tmp_path, free_port):
    """``dask scheduler`` and two ``dask worker`` processes, started elsewhere than the model's folder."""
    dask = shutil.which("dask") or str(Path(sys.executable).with_name("dask"))
    address = f"tcp://127.0.0.1:{free_port}"
    workdir = tmp_path / "cluster"
    workdir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    processes = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(free_port),
                                   "--dashboard-address", "127.0.0.1:0", "--no-show"],
                                  cwd=workdir, env=env, stderr=subprocess.PIPE, text=True)]
    try:
        wait_for_line(processes[0], "Scheduler at")
        for _ in range(2):
            worker = subprocess.Popen([dask, "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
                                       "--no-dashboard"], cwd=workdir, env=env, stderr=subprocess.PIPE, text=True)
            processes.append(worker)
            wait_for_line(worker, "Registered to")
        for process in processes:  # keep reading their logs: a full pipe would block a process mid-job
            threading.Thread(target=process.stderr.read, daemon=True).start()
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


TANH_MODEL = '''
import numpy as np


def forward(X, Y, parameters):
    H = np.tanh(parameters["W"] @ X + parameters["b"])
    P = parameters["V"] @ H
    return 0.5 * np.sum((P - Y) ** 2) / X.shape[1], (H, P, parameters["V"])


def backward(X, Y, cache):
    H, P, V = cache
    m = X.shape[1]
    dP = (P - Y) / m
    dZ = (V.T @ dP) * (1 - H ** 2)
    return {"dV": dP @ H.T, "dW": dZ @ X.T, "db": dZ.sum(axis=1, keepdims=True)}


def case():
    rng = np.random.default_rng(3)
    parameters = {"W": rng.standard_normal((6, 4)), "b": rng.standard_normal((6, 1)), "V": rng.standard_normal((2, 6))}
    return rng.standard_normal((4, 10)), rng.standard_normal((2, 10)), parameters
'''


def test_dask_scheduler_and_worker_processes_check_a_model_from_a_temporary_file(tmp_path, dask_processes):
    models = tmp_path / "only-here"
    models.mkdir()
    (models / "tanh_model.py").write_text(TANH_MODEL)
    run = subprocess.run(GRADJOB + ["submit", "--model", "only-here/tanh_model.py", "--forward", "forward",
                                    "--backward", "backward", "--case", "only-here/tanh_model.py:case",
                                    "--scheduler", dask_processes, "--chunk-size", "5", "--json"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["n_parameters"] == 6 * 4 + 6 + 2 * 6
    assert result["n_chunks"] == result["evaluated_chunks"] == 9
    assert result["difference"] < 1e-9
