"""Start gradjob's Dask workers as Slurm jobs (dask-jobqueue) and print the scheduler's address.

nightly.sbatch runs this in the background (needs `pip install dask-jobqueue` in the checkout's
virtualenv) and runs gradjob once the address is printed, which is when the first worker has
joined: gradjob itself waits only 10 s for a worker, and worker jobs may queue for longer.

    GRADJOB_PARTITION     partition of the worker jobs                              [cpu]
    GRADJOB_WORKERS       worker jobs, each one single-threaded worker on one core  [8]
    GRADJOB_INTERFACE     the cluster's private network interface: the scheduler, its
                          dashboard and the workers bind it, never a public one     [ib0]
    GRADJOB_WORKER_WAIT   seconds to wait for the first worker job to start         [3600]

It fails with one line on stderr and exit 1: dask-jobqueue missing, no such interface, sbatch
refusing the worker job (checked with `sbatch --test-only` first), no worker in time. It runs
until SIGTERM (the batch job ending), then closes the cluster, which cancels the worker jobs.
Stores must be on a filesystem the worker nodes share (the checkout's, here).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

# As gradjob's embedded cluster: Dask's statistical profiler off and a 1 s event-loop tick.
WORKER_ENV = {
    "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
    "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "1s",
}


def options(environ=os.environ) -> dict:
    """SLURMCluster's keyword arguments. ValueError if the interface does not exist here."""
    from distributed.utils import get_ip_interface

    interface = environ.get("GRADJOB_INTERFACE", "ib0")
    address = get_ip_interface(interface)
    return {
        "queue": environ.get("GRADJOB_PARTITION", "cpu"),
        "cores": 1, "processes": 1,  # one single-threaded worker (dask worker --nthreads 1) per job
        "memory": "4GB",
        "walltime": "06:00:00",
        "job_name": "gradjob-worker",
        "interface": interface,
        # the dashboard would otherwise listen on every interface (":8787")
        "scheduler_options": {"interface": interface, "dashboard_address": f"{address}:8787"},
        "job_script_prologue": [f"export {name}={value}" for name, value in WORKER_ENV.items()],
    }


def fail(message: str) -> int:
    print(f"slurm_cluster.py: {message}", file=sys.stderr, flush=True)
    return 1


def main() -> int:
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        return fail("dask-jobqueue is not installed in this environment (pip install dask-jobqueue)")
    try:
        cluster = SLURMCluster(**options())
    except Exception as exc:  # noqa: BLE001 - one line, whatever went wrong
        return fail(f"cannot start the Dask scheduler: {one_line(exc)}")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # leave through cluster.close()
    wait = float(os.environ.get("GRADJOB_WORKER_WAIT", "3600"))
    try:
        problem = submission_problem(cluster.job_script())
        if problem is None:
            cluster.scale(jobs=int(os.environ.get("GRADJOB_WORKERS", "8")))
            try:
                cluster.wait_for_workers(1, timeout=wait)
            except TimeoutError:
                problem = f"no worker job started within {wait:g} s (squeue --name gradjob-worker tells why)"
            else:
                print(cluster.scheduler_address, flush=True)
                while True:
                    signal.pause()
    finally:
        with contextlib.suppress(Exception):
            cluster.close()  # cancels the worker jobs
    return fail(problem)


def submission_problem(job_script: str) -> str | None:
    """What sbatch says against the worker job (--test-only: nothing is submitted), or None."""
    try:
        check = subprocess.run(["sbatch", "--test-only"], input=job_script, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run sbatch for the worker jobs: {one_line(exc)}"
    return f"sbatch refuses the worker job: {one_line(check.stderr)}" if check.returncode else None


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
