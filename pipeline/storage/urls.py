"""Where a store lives: a local directory or a URL (s3://…, gs://…) that fsspec reaches. Every
stage that names, finds or removes a store, a job's store root or its history asks here."""

from __future__ import annotations

import shutil
from pathlib import Path

import fsspec


def is_url(path: str) -> bool:
    """Stores at URLs (s3://…, gs://…) go through fsspec; plain paths are local directories."""
    return "://" in path


def join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}" if is_url(folder) else str(Path(folder) / name)


def parent(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[0] if is_url(path) else str(Path(path).parent)


def location(path: str) -> str:
    """Where workers find the store: a URL as given, or an absolute path (their working
    directory is not ours)."""
    return path if is_url(path) else str(Path(path).resolve())


def exists(path: str) -> bool:
    if is_url(path):
        fs, root = fsspec.core.url_to_fs(path)
        return fs.exists(root)
    return Path(path).exists()


def remove(path: str) -> None:
    if is_url(path):
        fs, root = fsspec.core.url_to_fs(path)
        fs.rm(root, recursive=True)
    else:
        shutil.rmtree(path)
