"""Everything a run leaves behind besides its store, written in one place: the JSON, JUnit and
HTML report files and the rows of ``history.jsonl``. ``submit``, job files and ``report`` all
come through here, so a file means the same whoever wrote it."""

from __future__ import annotations

import functools
import json
import signal
from dataclasses import dataclass
from pathlib import Path

from gradjob.errors import InputError
from gradjob.report import html as html_page
from gradjob.report import junit
from gradjob.report import model
from gradjob.report import text as report
from gradjob.storage import history, urls
from gradjob.types import Outcome


@dataclass(frozen=True)
class Entry:
    """One check of a run: its outcome, or the error that stopped it."""

    check: str
    outcome: Outcome | None = None
    error: str | None = None
    exit_code: int = 0
    stopped: bool = False  # a stop signal ended the run before this check finished

    @classmethod
    def of(cls, check: str, outcome: Outcome) -> "Entry":
        return cls(check, outcome, None, report.exit_code(outcome))

    @functools.cached_property
    def report(self) -> model.Report:
        """The outcome's typed report, built once for stdout and every report file."""
        return model.of(self.outcome)

    @functools.cached_property
    def result(self) -> dict:
        """The report's JSON form (stdout's ``--json`` and the JSON file)."""
        return self.report.to_json()

    def to_json(self) -> dict:
        if self.error is not None:
            return {"check": self.check, "passed": False, "error": self.error, "exit_code": self.exit_code}
        return {"check": self.check, **self.result}

    def as_report(self) -> model.CheckReport:
        """What the JUnit and HTML writers read."""
        if self.error is not None:
            return model.CheckReport(self.check, error=self.error)
        return model.CheckReport(self.check, self.report)

    def history_row(self) -> dict:
        if self.error is not None:
            return {"check": self.check, "verdict": "stopped" if self.stopped else "error", "difference": None,
                    "error": self.error}
        r = self.outcome.reduction
        return {"check": self.check, "verdict": "pass" if r.passed else "fail", "difference": r.difference,
                "failing": r.failing, "store": self.outcome.store}


@dataclass(frozen=True)
class ReportFiles:
    json: str | None = None
    junit: str | None = None
    html: str | None = None

    def merged(self, fallback: "ReportFiles") -> "ReportFiles":
        """These paths, and ``fallback``'s where none is given."""
        return ReportFiles(self.json or fallback.json, self.junit or fallback.junit, self.html or fallback.html)


def write(files: ReportFiles, entries: list[Entry], job: str | None = None) -> None:
    """The report files of one check, or of a job file's checks (``job`` its name). Every requested
    report is rendered first, then written: a rendering error writes none."""
    title = f"job {job}" if job is not None else f"check {entries[0].check}"
    renderers = {
        "json": lambda: json.dumps(entries[0].to_json() if job is None else
                                   {"job": job, "checks": [e.to_json() for e in entries]}, indent=1),
        "junit": lambda: junit.to_junit(title, [e.as_report() for e in entries]),
        "html": lambda: html_page.to_html(title, [e.as_report() for e in entries]),
    }
    wanted = {kind: getattr(files, kind) for kind in renderers if getattr(files, kind)}
    rendered = {kind: renderers[kind]() for kind in wanted}
    for kind, text in rendered.items():
        path = Path(wanted[kind])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        except OSError as exc:
            raise InputError(f"cannot write the {kind} report {path}: {exc}") from None


def stopped(check: str, stop) -> Entry:
    """A check a stop signal (``errors.Stopped``) ended or never let start: a JUnit error, a history row
    ``stopped``, so a CI job never publishes an older night's reports as this one's."""
    name = signal.Signals(stop.signum).name
    return Entry(check, None, f"stopped by {name} before it finished; finished chunks are kept in the store: "
                              "submit the same job again to resume", 128 + stop.signum, stopped=True)


def record(root: str, entries: list[Entry]) -> None:
    """Append the run's rows to ``<root>/history.jsonl``."""
    history.append(root, [e.history_row() for e in entries])


def check_name(store_path: str | None) -> str:
    """A single check is named by its store (``directional``: the screen has none)."""
    return Path(store_path.rstrip("/")).stem if store_path else "directional"


def single_check(outcome: Outcome, files: ReportFiles) -> Entry:
    """What one ``submit`` leaves behind besides its store: its report files and history row."""
    entry = Entry.of(check_name(outcome.store), outcome)
    write(files, [entry])
    if outcome.store is not None:
        record(urls.parent(outcome.store), [entry])
    return entry


def stopped_check(store: str | None, store_dir: str, model: str, files: ReportFiles, stop) -> None:
    """What a stopped ``submit`` leaves behind: its report files and history row, marked stopped.
    The check is named by its store, or by its model when the store's name was not made yet."""
    entry = stopped(check_name(store or model), stop)
    write(files, [entry])
    record(urls.parent(store) if store else store_dir, [entry])
