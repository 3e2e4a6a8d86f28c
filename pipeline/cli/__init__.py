"""The ``gradjob`` command (``app``): parse, call, print."""

from gradjob.cli.app import app

__all__ = ["app"]
