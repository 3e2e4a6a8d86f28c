"""JUnit XML: one test suite per check, one test case for the check and one per tensor, so a CI
system shows which tensor broke."""

from __future__ import annotations

import xml.etree.ElementTree as ET


def to_junit(name: str, results: list[dict]) -> str:
    """``results``: per check, ``{"check": name, "result": <report JSON> or None, "error": str or None}``."""
    suites = ET.Element("testsuites", name=f"gradjob {name}")
    for entry in results:
        check, result, error = entry["check"], entry.get("result"), entry.get("error")
        suite = ET.SubElement(suites, "testsuite", name=check)
        cases = []
        if error:
            case = ET.SubElement(suite, "testcase", classname=check, name="check")
            ET.SubElement(case, "error", message=error).text = error
            cases.append(("error", case))
        else:
            overall = ET.SubElement(suite, "testcase", classname=check, name="overall difference")
            if not result["passed"]:
                message = f"difference {result['difference']:.6e} (threshold {result['threshold']:g})"
                ET.SubElement(overall, "failure", message=message).text = message
            cases.append(("ok" if result["passed"] else "failure", overall))
            for tensor, verdict in result["tensors"].items():
                case = ET.SubElement(suite, "testcase", classname=check, name=f"tensor {tensor}")
                ET.SubElement(case, "system-out").text = f"difference {verdict['difference']:.6e}"
                if not verdict["passed"]:
                    message = verdict["diagnosis"] or f"difference {verdict['difference']:.6e}"
                    ET.SubElement(case, "failure", message=message).text = message
                cases.append(("ok" if verdict["passed"] else "failure", case))
        suite.set("tests", str(len(cases)))
        suite.set("failures", str(sum(kind == "failure" for kind, _ in cases)))
        suite.set("errors", str(sum(kind == "error" for kind, _ in cases)))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
