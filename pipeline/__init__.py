"""gradjob: numerical proof that a hand-written backpropagation is correct, as a Dask batch job.

Stages, one module each: ``layout`` (parameters as one vector), ``models`` and ``cases`` (what is
checked, where), ``plan`` (chunks of the index range), ``evaluate`` (central differences for one
chunk), ``store`` (the Zarr store), ``tasks`` and ``cluster`` (the Dask edge), ``reduce`` (the
streaming comparison), ``report`` (verdicts for people and machines), ``job`` (the stages in
order) and ``cli`` (the ``gradjob`` command).
"""

__version__ = "0.1.0"
