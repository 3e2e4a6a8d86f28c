"""Start Dask workers as Slurm jobs (dask-jobqueue) and print the scheduler address.

    pip install dask-jobqueue
    GRADJOB_SCHEDULER=$(python deploy/slurm/slurm_cluster.py) ... (see nightly.sbatch)

The scheduler binds the cluster's private interface; stores must be on a shared filesystem.
"""

import os
import time

from dask_jobqueue import SLURMCluster

cluster = SLURMCluster(
    queue=os.environ.get("GRADJOB_PARTITION", "cpu"),
    cores=1, processes=1, memory="4GB", walltime="06:00:00",
    interface=os.environ.get("GRADJOB_INTERFACE", "ib0"),  # private interconnect, not a public one
    job_extra_directives=["--job-name=gradjob-worker"],
)
cluster.scale(jobs=int(os.environ.get("GRADJOB_WORKERS", "8")))
print(cluster.scheduler_address, flush=True)
while True:  # keep the scheduler alive until the batch job ends
    time.sleep(60)
