"""JUnit XML: one test suite per check, one test case for the check and one per tensor, so a CI
system shows which tensor broke, with its numbers and why a passing one passes.

The structure is the common (Jenkins xunit junit-10.xsd, Ant's) schema's: ``testsuites`` (name,
tests, failures, errors, time) > ``testsuite`` (name, tests, failures, errors, time, timestamp,
hostname) > ``testcase`` (name, classname, time) > ``failure``/``error`` (message, text) and
``system-out``. That schema allows no ``timestamp`` or ``hostname`` on ``testsuites``: they are
on every ``testsuite``. Times are seconds (the sum of the outcome's ``seconds`` per stage; 0 for
a report made from a store alone), a suite's timestamp is its store's ``created`` time (ISO 8601,
UTC), or now for a check without a store.
"""

from __future__ import annotations

import datetime
import re
import socket
import xml.etree.ElementTree as ET

from gradjob.model.naming import element_name
from gradjob.report.model import CheckReport, Report, TensorRow
from gradjob.report.text import resolution_text, tensor_verdict


def run_name(title: str) -> str:
    """``gradjob job nightly`` for the title "job nightly"; a title that already starts with
    gradjob ("gradjob check") is not prefixed again."""
    return title if title == "gradjob" or title.startswith("gradjob ") else f"gradjob {title}"


def to_junit(title: str, results: list[CheckReport]) -> str:
    """``results``: per check, its report or its error; ``title`` names the run ("check seed", "job nightly")."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    host = socket.gethostname()
    suites = ET.Element("testsuites", name=run_name(title))
    totals = {"tests": 0, "failures": 0, "errors": 0, "time": 0.0}
    for entry in results:
        check, result, error = entry.check, entry.report, entry.error
        seconds = sum(result.seconds.values()) if result else 0
        suite = ET.SubElement(suites, "testsuite", name=check, timestamp=(result.created if result else None) or now,
                              hostname=host, time=f"{seconds:.3f}")
        cases = _error_cases(suite, check, error) if error else _check_cases(suite, check, result)
        counts = {"tests": len(cases), "failures": cases.count("failure"), "errors": cases.count("error")}
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
        totals["time"] += seconds
    for key in ("tests", "failures", "errors"):
        suites.set(key, str(totals[key]))
    suites.set("time", f"{totals['time']:.3f}")
    _xml_safe(suites)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


# What XML 1.0 allows in a document (its "Char" production); ElementTree writes the rest unchecked.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_safe(root: ET.Element) -> None:
    """Characters XML 1.0 forbids (``\\x01`` in a parameter or check name) written as ``\\x01``,
    so that the report stays well-formed and still tells the names apart."""
    def safe(text: str) -> str:
        return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256
                            else f"\\u{ord(m.group()):04x}", text)

    for element in root.iter():
        if element.text:
            element.text = safe(element.text)
        for key, value in element.attrib.items():
            element.set(key, safe(value))


def _error_cases(suite, check: str, error: str) -> list[str]:
    case = ET.SubElement(suite, "testcase", classname=check, name="check", time="0.000")
    ET.SubElement(case, "error", message=error).text = error
    return ["error"]


def tensor_out(name: str, t: TensorRow, threshold: float) -> str:
    """A tensor's ``system-out``: its numbers, its re-verified suspects and its verdict in words."""
    s = t.suspects
    lines = [f"difference {t.difference:.6e}; threshold {t.threshold:.1e}; resolution {resolution_text(t)}; "
             f"noise {t.noise:.1e}; kinks {t.kinks.count}; re-verified {s.verified} "
             f"(agrees {s.agrees}, kink {s.kink}, near-kink {s.near_kink}, wrong {s.wrong}, "
             f"unresolved {s.unresolved})"
             + (f"; {s.beyond_cap} beyond the re-verification cap" if s.beyond_cap else "")]
    if t.kinks.elements:
        lines.append("left out at kinks: " + ", ".join(element_name(name, i) for i in t.kinks.elements)
                     + (" …" if t.kinks.count > len(t.kinks.elements) else ""))
    if s.wrong_elements:
        lines.append("wrong: " + ", ".join(element_name(name, i) for i in s.wrong_elements)
                     + (" …" if s.wrong > len(s.wrong_elements) else ""))
    lines.append(f"verdict: {tensor_verdict(t, threshold)}")
    return "\n".join(lines)


def _check_cases(suite, check: str, result: Report) -> list[str]:
    kinds = []
    overall = ET.SubElement(suite, "testcase", classname=check, name="overall difference",
                            time=f"{result.seconds.get('evaluate', 0.0):.3f}")
    if not result.passed:
        message = f"wrong: {', '.join(result.failing)}; difference {result.difference:.6e}"
        ET.SubElement(overall, "failure", message=message).text = message
    ET.SubElement(overall, "system-out").text = (
        f"difference {result.difference:.6e} (all elements: {result.raw_difference:.6e}); "
        f"threshold {result.threshold:g}; {result.precision.text}; evaluator {result.evaluator}; "
        f"step {result.step_text}; {result.method}"
        + "".join(f"\nnote: {note}" for note in result.notes))
    kinds.append("ok" if result.passed else "failure")
    for tensor, t in result.tensors.items():
        case = ET.SubElement(suite, "testcase", classname=check, name=f"tensor {tensor}", time="0.000")
        if not t.passed:
            message = t.diagnosis or f"{tensor}: difference {t.difference:.6e} above {t.threshold:.1e}"
            ET.SubElement(case, "failure", message=message).text = message
        ET.SubElement(case, "system-out").text = tensor_out(tensor, t, result.threshold)
        kinds.append("ok" if t.passed else "failure")
    return kinds
