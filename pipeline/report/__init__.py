"""What a check leaves for people and machines: the typed report they all read and its one JSON
form (``model``), text (``text``), JUnit, HTML and its plots, and the report files and history rows
of a run (``outputs``)."""

from gradjob.report.text import EXIT_FAILED, EXIT_PASSED, exit_code, to_json, to_text

__all__ = ["EXIT_FAILED", "EXIT_PASSED", "exit_code", "to_json", "to_text"]
