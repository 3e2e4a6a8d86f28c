"""History of runs under a store root: one JSON line per check and run, newest last, so a
regression shows with the night it appeared (``gradjob history ROOT``)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

FILE = "history.jsonl"


def append(root: str | Path, entries: list[dict]) -> None:
    path = Path(root) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with open(path, "a") as f:
        for entry in entries:
            f.write(json.dumps({"time": now, **entry}) + "\n")


def read(root: str | Path) -> list[dict]:
    path = Path(root) / FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a crash is skipped, not fatal
    return sorted(rows, key=lambda r: r.get("time", ""))


def to_text(rows: list[dict]) -> str:
    """A table, newest last; a failing run after a passing one of the same check is marked."""
    lines = [f"{'date':<26} {'check':<24} {'difference':>12}  verdict"]
    last_verdict: dict[str, str] = {}
    for row in rows:
        verdict = row.get("verdict", "?")
        mark = ""
        if verdict != "pass" and last_verdict.get(row["check"]) == "pass":
            mark = "   ← new since the previous run"
        last_verdict[row["check"]] = verdict
        difference = row.get("difference")
        shown = f"{difference:.4e}" if isinstance(difference, float) else "-"
        failing = f" ({', '.join(row['failing'])})" if row.get("failing") else ""
        lines.append(f"{row['time']:<26} {row['check']:<24} {shown:>12}  {verdict.upper()}{failing}{mark}")
    return "\n".join(lines)
