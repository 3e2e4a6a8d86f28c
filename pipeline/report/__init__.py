"""What a check leaves for people and machines: the typed report they all read and its one JSON
form (``model``), text (``text``), JUnit, HTML and its plots, and the report files and history rows
of a run (``outputs``). Loading it gives ``Outcome`` its notebook view: the HTML summary."""

from gradjob.report import html, model
from gradjob.report.text import EXIT_FAILED, EXIT_PASSED, exit_code, to_json, to_text
from gradjob.types import Outcome

Outcome.html_view = lambda outcome: html.summary(model.of(outcome))

__all__ = ["EXIT_FAILED", "EXIT_PASSED", "exit_code", "to_json", "to_text"]
