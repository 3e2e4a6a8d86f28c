"""JUnit XML: one test suite per check, one test case for the check and one per tensor, so a CI
system shows which tensor broke, with its numbers and why a passing one passes.

The structure is the common (Jenkins/Ant junit-10) schema's: ``testsuites`` > ``testsuite`` (name,
tests, failures, errors, time, timestamp, hostname) > ``testcase`` (name, classname, time) >
``failure``/``error`` (message, text) and ``system-out``.
"""

from __future__ import annotations

import datetime
import socket
import xml.etree.ElementTree as ET

from .report import tensor_verdict


def to_junit(title: str, results: list[dict]) -> str:
    """``results``: per check, ``{"check": name, "result": <report JSON>}`` or ``{"check", "error"}``;
    ``title`` names the run ("check seed", "job nightly")."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    host = socket.gethostname()
    suites = ET.Element("testsuites", name=f"gradjob {title}")
    totals = {"tests": 0, "failures": 0, "errors": 0, "time": 0.0}
    for entry in results:
        check, result, error = entry["check"], entry.get("result"), entry.get("error")
        seconds = sum((result or {}).get("seconds", {}).values())
        suite = ET.SubElement(suites, "testsuite", name=check, timestamp=(result or {}).get("created") or now,
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
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _error_cases(suite, check: str, error: str) -> list[str]:
    case = ET.SubElement(suite, "testcase", classname=check, name="check", time="0")
    ET.SubElement(case, "error", message=error).text = error
    return ["error"]


def _check_cases(suite, check: str, result: dict) -> list[str]:
    kinds = []
    overall = ET.SubElement(suite, "testcase", classname=check, name="overall difference",
                            time=f"{result.get('seconds', {}).get('evaluate', 0.0):.3f}")
    if not result["passed"]:
        message = f"wrong: {', '.join(result['failing'])}; difference {result['difference']:.6e}"
        ET.SubElement(overall, "failure", message=message).text = message
    ET.SubElement(overall, "system-out").text = (
        f"difference {result['difference']:.6e} (all elements: {result['raw_difference']:.6e}); "
        f"threshold {result['threshold']:g}; {result['precision']['text']}; evaluator {result['evaluator']}; "
        f"step {result['step_text']}; {result['method']}"
        + "".join(f"\nnote: {note}" for note in result.get("notes", [])))
    kinds.append("ok" if result["passed"] else "failure")
    for tensor, t in result["tensors"].items():
        case = ET.SubElement(suite, "testcase", classname=check, name=f"tensor {tensor}", time="0")
        if not t["passed"]:
            ET.SubElement(case, "failure", message=t["diagnosis"]).text = t["diagnosis"]
        suspects = t["suspects"]
        ET.SubElement(case, "system-out").text = (
            f"difference {t['difference']:.6e}; threshold {t['threshold']:.1e}; resolution {t['resolution']:.1e}; "
            f"noise {t['noise']:.1e}; kinks {t['kinks']['count']}; re-verified {suspects['verified']} "
            f"(agrees {suspects['agrees']}, kink {suspects['kink']}, near-kink {suspects['near_kink']}, "
            f"wrong {suspects['wrong']}, unresolved {suspects['unresolved']})\n"
            f"verdict: {tensor_verdict(t, result['threshold'])}")
        kinds.append("ok" if t["passed"] else "failure")
    return kinds
