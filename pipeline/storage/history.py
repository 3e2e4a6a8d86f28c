"""History of runs under a store root: one JSON line per check and run, newest last, so a
regression shows with the night it appeared (``gradjob history ROOT``)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import fsspec
import pydantic

from gradjob.errors import InputError
from gradjob.storage import urls

FILE = "history.jsonl"


def append(root: str, entries: list[dict]) -> None:
    """Add entries to ``<root>/history.jsonl``; object stores have no append, so there the file
    is rewritten (one job per store root)."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    text = "".join(json.dumps({"time": now, **entry}) + "\n" for entry in entries)
    if urls.is_url(str(root)):
        fs, folder = fsspec.core.url_to_fs(str(root))
        path = f"{folder.rstrip('/')}/{FILE}"
        old = fs.cat_file(path).decode() if fs.exists(path) else ""
        fs.pipe_file(path, (old + text).encode())
        return
    path = Path(root) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(text)


def read(root: str) -> list["Row"]:
    """The rows under ``root``, each parsed once into a ``Row``, oldest first."""
    if urls.is_url(str(root)):
        fs, folder = fsspec.core.url_to_fs(str(root))
        path = f"{folder.rstrip('/')}/{FILE}"
        text = fs.cat_file(path).decode(errors="replace") if fs.exists(path) else ""
    else:
        path = Path(root) / FILE
        text = path.read_text(errors="replace") if path.is_file() else ""
    lines = text.splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if number == len(lines) and not text.endswith("\n"):
                continue  # the last line, cut by a crash while it was written: skipped, not fatal
            row = line
        try:
            row = Row.model_validate(row)
        except pydantic.ValidationError:
            raise InputError(f"{path}: line {number} is not a history row (a JSON object with a time, a check and a "
                             f"verdict): {line[:80]!r}; remove or repair that line") from None
        rows.append(row)
    return sorted(rows, key=lambda r: r.time)


class Row(pydantic.BaseModel):
    """What ``to_text`` reads of a row; other keys (store, error, …) are kept as they are."""

    model_config = pydantic.ConfigDict(extra="allow", strict=True)
    time: str
    check: str
    verdict: str
    difference: float | None = None
    failing: list[str] = []


def to_text(rows: list[Row]) -> str:
    """A table, newest last; a failing run after a passing one of the same check is marked."""
    lines = [f"{'date':<26} {'check':<24} {'difference':>12}  verdict"]
    last_verdict: dict[str, str] = {}
    for row in rows:
        verdict = row.verdict
        mark = ""
        if verdict not in ("pass", "stopped") and last_verdict.get(row.check) == "pass":
            mark = "   ← new since the previous run"
        if verdict != "stopped":  # a stopped run says nothing about the code: the next one compares with the last verdict
            last_verdict[row.check] = verdict
        difference = row.difference
        shown = f"{difference:.4e}" if isinstance(difference, float) else "-"
        failing = f" ({', '.join(row.failing)})" if row.failing else ""
        lines.append(f"{row.time:<26} {row.check:<24} {shown:>12}  {verdict.upper()}{failing}{mark}")
    return "\n".join(lines)
