"""Progress of a running check, where its reader is: a bar on a terminal, plain lines in a log.

A nightly job's stderr is a log file: it gets one line at a steady cadence (chunks, parameters
per second, time left), no ANSI codes, and every note on its own line. A terminal gets a live
bar. The base class shows nothing (the Python API, benchmarks).
"""

from __future__ import annotations

import datetime
import sys
import time
from typing import TextIO


class Progress:
    """Hooks a check calls; this one shows nothing. ``label`` names the check in every line (a job
    file's checks follow each other in one log)."""

    label: str | None = None

    def start(self, total: int, already_done: int, dashboard: str | None) -> None: ...

    def advance(self, parameters: int, suspects: int = 0) -> None: ...

    def note(self, text: str) -> None: ...

    def finish(self) -> None: ...


def _eta(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class LogLines(Progress):
    """One plain line every ``every`` seconds and at the end, for logs read after the fact."""

    def __init__(self, stream: TextIO | None = None, every: float = 30.0):
        self.stream, self.every = stream, every
        self.total = self.done = self.evaluated = self.parameters = self.suspects = 0
        self.started = self.last = 0.0

    def _write(self, text: str) -> None:
        """One line, stamped with the UTC time: a log read the next morning says when."""
        stream = self.stream or sys.stderr
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        check = f"{self.label}: " if self.label else ""
        stream.write(f"{stamp} {check}{text}\n")
        stream.flush()

    def start(self, total: int, already_done: int, dashboard: str | None) -> None:
        self.total, self.done = total, already_done
        self.started = self.last = time.monotonic()
        if dashboard:
            self._write(f"Dask dashboard: {dashboard}")
        if already_done:
            self._write(f"resuming: {already_done} of {total} chunks already in the store")
        self._write(f"chunks {self.done}/{self.total}")

    def advance(self, parameters: int, suspects: int = 0) -> None:
        self.done += 1
        self.evaluated += 1
        self.parameters += parameters
        self.suspects += suspects
        now = time.monotonic()
        if now - self.last >= self.every or self.done == self.total:
            self.last = now
            self._write(self.line(now))

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.parameters / elapsed
        left = self.total - self.done
        per_chunk = elapsed / max(1, self.evaluated)
        return (f"chunks {self.done}/{self.total}, {rate:,.0f} parameters/s, elapsed {_eta(elapsed)}, "
                f"about {_eta(left * per_chunk)} left, {self.suspects:,} suspect(s) so far")

    def note(self, text: str) -> None:
        self._write(text)


class TerminalBar(Progress):
    """A rich progress bar on stderr, so stdout stays clean for --json."""

    def __init__(self):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.bar = self.task = None

    def start(self, total: int, already_done: int, dashboard: str | None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        if dashboard:
            self.note(f"Dask dashboard: {dashboard}")
        if already_done:
            self.note(f"resuming: {already_done} of {total} chunks already in the store")
        self.bar = Bar(TextColumn(f"{self.label}: chunks" if self.label else "chunks"), BarColumn(), MofNCompleteColumn(),
                       TimeRemainingColumn(), console=self.console, transient=False)
        self.task = self.bar.add_task("chunks", total=total, completed=already_done)
        self.bar.start()

    def advance(self, parameters: int, suspects: int = 0) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def note(self, text: str) -> None:
        text = f"{self.label}: {text}" if self.label else text
        self.console.print(text, soft_wrap=True, markup=False, highlight=False)  # above the bar while it runs

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def for_stream(stream: TextIO) -> Progress:
    """A bar when ``stream`` is a terminal, plain lines otherwise."""
    return TerminalBar() if stream.isatty() else LogLines()


class InPlaceLine(Progress):
    """One line on stderr, rewritten in place (a carriage return: a notebook's output area and a
    terminal both honour it), shown only once a check has run ``after`` seconds, so quick checks
    stay silent. The Python API's default in a notebook; needs nothing installed."""

    def __init__(self, stream: TextIO | None = None, after: float = 3.0, every: float = 1.0, clock=time.monotonic):
        self.lines = LogLines(stream, every)
        self.after, self.clock, self.shown = after, clock, False

    def start(self, total: int, already_done: int, dashboard: str | None) -> None:
        lines = self.lines
        lines.total, lines.done = total, already_done
        lines.started = lines.last = self.clock()

    def advance(self, parameters: int, suspects: int = 0) -> None:
        lines = self.lines
        lines.done, lines.evaluated = lines.done + 1, lines.evaluated + 1
        lines.parameters, lines.suspects = lines.parameters + parameters, lines.suspects + suspects
        now = self.clock()
        if now - lines.started >= self.after and (now - lines.last >= lines.every or lines.done == lines.total):
            lines.last, self.shown = now, True
            self._write(f"\r{lines.line(now)}")

    def note(self, text: str) -> None:
        self._write(("\n" if self.shown else "") + text + "\n")
        self.shown = False

    def finish(self) -> None:
        if self.shown:
            self._write("\n")
            self.shown = False

    def _write(self, text: str) -> None:
        stream = self.lines.stream or sys.stderr
        stream.write(text)
        stream.flush()


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (IPython's ZMQ shell)."""
    shell = sys.modules.get("IPython")
    try:
        return shell is not None and type(shell.get_ipython()).__name__ == "ZMQInteractiveShell"
    except Exception:
        return False
