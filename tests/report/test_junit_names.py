"""Issue 19: JUnit XML stays well-formed whatever characters a check or parameter name holds."""

import xml.etree.ElementTree as ET

from gradjob.report import junit
from gradjob.report.model import CheckReport, Kinks, PrecisionText, Report, TensorRow, TensorSuspects

TENSOR = TensorRow(difference=0.5, passed=False, shape=(2,), checked=2, threshold=2e-7, noise=1e-16, resolution=4e-7,
                   error_norm=1.0, noise_norm=0.0, diagnosis="d\x01W is 2.00× the numerical gradient", worst=(),
                   kinks=Kinks(0, ()), suspects=TensorSuspects())
RESULT = Report(difference=0.5, raw_difference=0.5, passed=False, epsilon=1e-7, step="fixed",
                step_text="ε = 1e-07, fixed", method="central", threshold=2e-7,
                precision=PrecisionText("float64", "float64", None, "checked in float64"), evaluator="forward",
                n_parameters=2, failing=("\x01W",), tensors={"\x01W": TENSOR}, model="m", case="c", mode="full",
                store=None, chunk_size=None, n_chunks=None, evaluated_chunks=0, created=None, versions=None,
                notes=("a note with \x1b[31m colour",), seconds={})


def test_names_with_characters_xml_forbids_are_escaped():
    text = junit.to_junit("job n\x01ghtly", [CheckReport("ch\x01eck", RESULT),
                                            CheckReport("other\x02", error="forward raised \x00 at W")])
    root = ET.fromstring(text.encode())  # expat refuses any character XML 1.0 forbids
    assert root.get("name") == "gradjob job n\\x01ghtly"
    first, second = root.findall("testsuite")
    assert first.get("name") == "ch\\x01eck"
    assert [c.get("name") for c in first.findall("testcase")] == ["overall difference", "tensor \\x01W"]
    assert first.find("testcase/failure").get("message") == "wrong: \\x01W; difference 5.000000e-01"
    assert first.findall("testcase")[1].find("failure").text == "d\\x01W is 2.00× the numerical gradient"
    assert "note: a note with \\x1b[31m colour" in first.find("testcase/system-out").text
    assert second.get("name") == "other\\x02"
    assert second.find("testcase/error").get("message") == "forward raised \\x00 at W"
