"""One writer per store: an OS lock on a file beside the store, which names the job holding it.

The lock sits *beside* the store (``<store>.lock``) so that ``--overwrite`` can delete the store
while holding it. The lock is ``filelock``'s (``flock`` on Unix, ``LockFileEx`` on Windows),
released by the operating system when its holder dies, so a dead job never blocks the next
night, whatever pid the lock file names (containers reuse pids); the file's JSON only says who
holds it. A lock file naming another host is taken only with ``--break-lock``, since a lock held
there may not be visible here.

The path is a user's to choose, so gradjob never follows a symbolic link there and never
truncates or deletes a file it did not create: anything at ``<store>.lock`` other than a regular
file of this user holding a gradjob record (or nothing) is refused, left as it was.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import filelock

from gradjob.errors import InputError
from gradjob.storage import urls
from gradjob.storage.store import disk_full

RECORD = ("host", "pid", "since")  # what a gradjob lock file holds, as JSON
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # Windows has no symbolic-link flag; lstat below still refuses links


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
        existed = _foreign(path, store, content=False)  # a link or a device is not even opened
        lock = filelock.FileLock(str(path), timeout=0, fallback_to_soft=False)
        lock.acquire()
    except filelock.Timeout:
        holder = _read(path)
        where = f"process {holder.get('pid')} on {holder.get('host')}" if holder else "another process"
        raise InputError(f"store {store} is being written by another job ({where}, since "
                         f"{holder.get('since')}); wait for it to finish or stop it") from None
    except OSError as exc:
        raise InputError(f"cannot write the store at {store}: {exc}; choose another --store") from None
    try:
        if existed:
            _foreign(path, store, content=True)
        holder = _read(path)
        note = None
        if holder and holder != mine:
            if holder.get("host") != mine["host"] and not break_lock:
                raise InputError(f"store {store} is locked by process {holder.get('pid')} on {holder.get('host')} "
                                 f"(since {holder.get('since')}); if that job is dead, pass --break-lock")
            note = f"took over a stale lock of process {holder.get('pid')} on {holder.get('host')}"
        with disk_full(store):
            _write(path, mine)
        yield note
    finally:
        try:  # ours, and still held: no one else can have written it since
            if _read(path) == mine or (not existed and _empty(path)):
                path.unlink(missing_ok=True)
        finally:
            lock.release()


def _foreign(path: Path, store: str, content: bool) -> bool:
    """Does a file exist at ``path``? ``InputError`` if it is anything gradjob may not take over:
    a link, not a regular file, another user's, hard-linked elsewhere, or (``content``) not a
    gradjob lock record."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    problem = None
    if stat.S_ISLNK(info.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISREG(info.st_mode):
        problem = "is not a regular file"
    elif hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        problem = f"belongs to another user (uid {info.st_uid})"
    elif info.st_nlink != 1:
        problem = "has other hard links"
    elif content and not _read(path):
        problem = "does not hold a gradjob lock record"
    if problem:
        raise InputError(f"{path} {problem}, not a gradjob lock file; gradjob never replaces it: remove it or choose "
                         "another --store")
    return True


def _empty(path: Path) -> bool:
    """An empty regular file: the lock created it and we could not write our record into it."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size == 0


def _write(path: Path, record: dict) -> None:
    """Our record into the lock file we hold (created by the lock, or a gradjob record checked above)."""
    fd = os.open(path, os.O_WRONLY | _NOFOLLOW)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(record).encode())
    finally:
        os.close(fd)


def _read(path: Path) -> dict:
    """The lock file's record, or {} if it holds none (reading never follows a link)."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0))  # a FIFO never blocks
    except OSError:
        return {}
    try:
        record = json.loads(os.read(fd, 4096) or b"{}")
    except ValueError:
        return {}
    finally:
        os.close(fd)
    return record if isinstance(record, dict) and all(key in record for key in RECORD) else {}
