"""Errors that end a job with a one-line message instead of a traceback.

``InputError`` means the user's input or usage is wrong (exit code 2); ``JobError`` means the
inputs were accepted but the job could not finish, e.g. the forward raised at some perturbation
(exit code 3). Anything else is a bug in gradjob and keeps its traceback.
"""


class InputError(Exception):
    """Bad input or usage: one line naming what is wrong and what to do."""

    exit_code = 2


class JobError(Exception):
    """The job started but could not complete; finished chunks stay in the store."""

    exit_code = 3


class Stopped(BaseException):
    """A stop signal (SIGTERM from Kubernetes, Slurm or systemd; SIGHUP; SIGINT) while a check runs.
    A ``BaseException``, as KeyboardInterrupt is: no ``except Exception`` on the way (ours, Dask's)
    may swallow a stop."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
