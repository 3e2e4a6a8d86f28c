"""One writer per store: a lock file beside the store, naming the job that holds it.

The lock sits *beside* the store (``<store>.lock``) so that ``--overwrite`` can delete the store
while holding it. A lock whose process is gone on this host is stale and is taken over; a lock
held from another host cannot be checked from here and is only taken with ``--break-lock``.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import InputError


def lock_path(store: str) -> Path:
    return Path(store.rstrip("/") + ".lock")


@contextmanager
def holding(store: str, break_lock: bool = False) -> Iterator[str | None]:
    """Hold the store's lock for the block; yields a note when a stale lock was taken over."""
    if "://" in store:  # remote stores: no shared lock file; documented
        yield None
        return
    path = lock_path(store)
    note = None
    mine = {"host": socket.gethostname(), "pid": os.getpid(),
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot write the store at {store}: {exc}; choose another --store") from None
    try:
        _create(path, mine)
    except FileExistsError:
        holder = _read(path)
        if _alive(holder) and not break_lock:
            where = f"process {holder.get('pid')} on {holder.get('host')}"
            hint = ("wait for it to finish or stop it" if holder.get("host") == mine["host"]
                    else "if that job is dead, pass --break-lock")
            raise InputError(f"store {store} is being written by another job ({where}, since "
                             f"{holder.get('since')}); {hint}") from None
        note = f"took over a stale lock of process {holder.get('pid')} on {holder.get('host')}"
        path.unlink(missing_ok=True)
        try:
            _create(path, mine)
        except FileExistsError:
            raise InputError(f"store {store} was locked by another job just now; try again") from None
    except OSError as exc:
        raise InputError(f"cannot write the store at {store}: {exc}; choose another --store") from None
    try:
        yield note
    finally:
        if _read(path) == mine:
            path.unlink(missing_ok=True)


def _create(path: Path, content: dict) -> None:
    with open(path, "x") as f:
        json.dump(content, f)


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _alive(holder: dict) -> bool:
    """Is the holder still running? Only answerable for processes on this host."""
    if holder.get("host") != socket.gethostname():
        return bool(holder)
    try:
        os.kill(int(holder["pid"]), 0)
    except (KeyError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
