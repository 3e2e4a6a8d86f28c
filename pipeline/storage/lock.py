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

Tasks outlive their job: a task still running when the job stops (exit 3, a hung forward) would
write its chunk after the lock is released. So the record also holds a run token, and a task
writes only ``fenced``: holding ``<store>.lock.fence`` (a ``flock``), it finds the token still in
the lock file. The job, before it lets go, takes that fence and removes the token, so once it has
returned no task writes. (Where there is no ``fcntl``, Windows, the token is checked unfenced.)
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import socket
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import filelock

from gradjob.errors import InputError, JobError
from gradjob.storage import urls
from gradjob.storage.store import disk_full

RECORD = ("host", "pid", "since")  # what a gradjob lock file holds, as JSON
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # Windows has no symbolic-link flag; lstat below still refuses links
try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def lock_path(store: str) -> Path:
    return Path(store.rstrip("/") + ".lock")


def fence_path(store: str) -> Path:
    return Path(store.rstrip("/") + ".lock.fence")


def run_token(store: str) -> str | None:
    """The run token of the lock this job holds on ``store`` (None for a remote store: no lock)."""
    return None if urls.is_url(store) else _read(lock_path(store)).get("run")


@contextmanager
def fenced(store: str, run: str | None) -> Iterator[None]:
    """Hold the store's write fence for a task's write; ``JobError`` if the job that started the task
    has ended (its token is gone from the lock file): the task then writes nothing."""
    if run is None:
        yield
        return
    try:
        fd = os.open(fence_path(store), os.O_RDONLY | _NOFOLLOW)  # never created here: gone once the job ends
    except OSError:
        fd = None
    try:
        if fd is not None and fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        if fd is None or _read(lock_path(store)).get("run") != run:
            raise JobError(f"the job that started this task on {store} has ended; its chunk is not written")
        yield
    finally:
        if fd is not None:
            os.close(fd)  # and the flock with it


@contextmanager
def holding(store: str, break_lock: bool = False) -> Iterator[str | None]:
    """Hold the store's lock for the block; yields a note when a stale lock was taken over."""
    if urls.is_url(store):  # remote stores: no shared lock file; documented
        yield None
        return
    path = lock_path(store)
    mine = {"host": socket.gethostname(), "pid": os.getpid(),
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "run": secrets.token_hex(8)}
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
    fence = None
    try:
        if existed:
            _foreign(path, store, content=True)
        holder = _read(path)
        note = None
        if holder and any(holder.get(key) != mine[key] for key in RECORD):
            if holder.get("host") != mine["host"] and not break_lock:
                raise InputError(f"store {store} is locked by process {holder.get('pid')} on {holder.get('host')} "
                                 f"(since {holder.get('since')}); if that job is dead, pass --break-lock")
            note = f"took over a stale lock of process {holder.get('pid')} on {holder.get('host')}"
        with disk_full(store):
            _write(path, mine)
            fence = _open_fence(store)
        yield note
    finally:
        try:  # the token goes while no task is between its check and the end of its write
            if fence is not None and fcntl is not None:
                fcntl.flock(fence, fcntl.LOCK_EX)
            if _read(path) == mine or (not existed and _empty(path)):  # ours, and still held
                path.unlink(missing_ok=True)
            if fence is not None and _same_file(fence, fence_path(store)):
                fence_path(store).unlink()
        finally:
            if fence is not None:
                os.close(fence)
            lock.release()


def _open_fence(store: str) -> int:
    """``<store>.lock.fence``, created if need be (never through a link; never truncated)."""
    path = fence_path(store)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0), 0o644)
    except OSError as exc:
        raise InputError(f"cannot write the store at {store}: {path}: {exc.strerror}; remove it or choose another "
                         "--store") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InputError(f"{path} is not a regular file, not a gradjob fence; remove it or choose another --store")
    return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        mine, there = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


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
