"""Fixtures for the gradjob tests.

- ``cluster_address``: one real ``LocalCluster`` (2 worker processes, 127.0.0.1) shared by the
  session; tests reach it through ``gradjob submit --scheduler``.
- ``gradjob``: runs the CLI in-process (Typer's runner) and returns exit code, stdout, stderr.
- ``write_model``: writes a model file into the test's temporary directory.
- ``store_fingerprint``: every file of a store with its SHA-256, to prove a store unchanged.
- ``free_port``: a TCP port nobody listens on, for processes a test starts.
- ``private_tmp``: gradjob's temporary stores under the test's own folder (to see them removed);
  ``seed_arrays()``: the seed's X, Y and parameters for the Python API.
- ``family(name)``: a model family of tests/families/ as a module (not a fixture: used at collection).

BLAS runs one thread here and in the processes tests start, as in every Dask worker (the nanny's
``pre-spawn-environ``): in-process checks of small matrices ran up to 4× slower on two threads
sharing 2 cores with the cluster's workers (a float32 ReLU check of 41,409 parameters: 40 s → 10 s).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from distributed import LocalCluster
from threadpoolctl import threadpool_limits
from typer.testing import CliRunner

from gradjob.cli.app import app
from gradjob.model import cases

FAMILIES = Path(__file__).with_name("families")
SEED_BUGGY_DIFFERENCE = 0.2850931567761623
SEED_CORRECT_DIFFERENCE = 1.1890913024229996e-07

for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")  # processes the tests start (numpy is loaded here already)
threadpool_limits(limits=1, user_api="blas")


@pytest.fixture(scope="session")
def cluster_address():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) as cluster:
        yield cluster.scheduler_address


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def gradjob(monkeypatch, tmp_path):
    """``gradjob("submit", "--json", ...)`` in the test's temporary directory."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def run(*args: str) -> Run:
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        return Run(result.exit_code, result.stdout, result.stderr)

    return run


@pytest.fixture
def write_model(tmp_path):
    def write(text: str, name: str = "model.py") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def family(name: str):
    """A model family of tests/families/ as a module (its EXPECTED and DIAGNOSES, its functions)."""
    spec = importlib.util.spec_from_file_location(f"family_{name}", FAMILIES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def store_fingerprint(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(path).rglob("*")) if p.is_file()}


@pytest.fixture
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """gradjob's temporary stores go under this test's own folder, to see them removed."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def seed_arrays():
    """The seed notebook's X, Y and parameters, for the Python API."""
    case = cases.seed_case()
    return case.X, case.Y, case.parameters
