"""One writer per store: an OS lock on a file beside the store, which names the job holding it.

The lock sits *beside* the store (``<store>.lock``) so that ``--overwrite`` can delete the store
while holding it. The operating system's lock (``flock``) is released when its holder dies, so a
dead job never blocks the next night, whatever pid the lock file names (containers reuse pids);
the file's JSON only says who holds it. A lock file naming another host is taken only with
``--break-lock``, since a lock held there may not be visible here.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from gradjob.errors import InputError
from gradjob.storage import urls


def lock_path(store: str) -> Path:
    return Path(store.rstrip("/") + ".lock")


@contextmanager
def holding(store: str, break_lock: bool = False) -> Iterator[str | None]:
    """Hold the store's lock for the block; yields a note when a stale lock was taken over."""
    if urls.is_url(store):  # remote stores: no shared lock file; documented
        yield None
        return
    path = lock_path(store)
    mine = {"host": socket.gethostname(), "pid": os.getpid(),
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _locked(path, store)
    except OSError as exc:
        raise InputError(f"cannot write the store at {store}: {exc}; choose another --store") from None
    try:
        holder = _read(path)
        note = None
        if holder and holder != mine:
            if holder.get("host") != mine["host"] and not break_lock:
                raise InputError(f"store {store} is locked by process {holder.get('pid')} on {holder.get('host')} "
                                 f"(since {holder.get('since')}); if that job is dead, pass --break-lock")
            note = f"took over a stale lock of process {holder.get('pid')} on {holder.get('host')}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(mine).encode(), 0)
        yield note
    finally:
        if _read(path) == mine:
            path.unlink(missing_ok=True)
        os.close(fd)  # releases the OS lock


def _locked(path: Path, store: str) -> int:
    """An open descriptor of the lock file, locked by this process; ``InputError`` if another
    process holds it. Retries when the file was replaced between opening and locking."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _read(path)
            where = f"process {holder.get('pid')} on {holder.get('host')}" if holder else "another process"
            raise InputError(f"store {store} is being written by another job ({where}, since "
                             f"{holder.get('since')}); wait for it to finish or stop it") from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder removed the file as we opened it: lock the new one


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
