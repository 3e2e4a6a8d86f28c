"""Issue 20: a notebook, executed by nbclient with a real kernel, shows a check's outcome as the
report's summary (``Outcome._repr_html_``): FAIL and the failing tensors of the seed's planted bugs."""

import nbformat
from nbclient import NotebookClient

import gradjob

CELLS = [
    "import gradjob\nfrom gradjob.model import cases, networks\ncase = cases.seed_case()",
    "outcome = gradjob.check(networks.forward_propagation_n, networks.backward_propagation_n,\n"
    "                        case.X, case.Y, case.parameters, fast=False)\noutcome",
    "type(gradjob.api.default_progress()).__name__",
]


def test_a_notebook_displays_the_outcome_as_html(tmp_path):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in CELLS])
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = notebook.cells[1].outputs
    shown = [o for o in outputs if o.output_type == "execute_result"]
    assert len(shown) == 1, outputs
    html, plain = shown[0].data["text/html"], shown[0].data["text/plain"]
    assert '<span class="fail">FAIL</span>' in html and "wrong: b1, W2" in html
    assert "FAIL  db1 is 4.00× the numerical gradient" in html and "FAIL  dW2 is 2.00× the numerical gradient" in html
    assert plain.startswith("<Outcome FAIL: difference 2.85") and len(plain) < 400
    assert notebook.cells[2].outputs[0].data["text/plain"] == "'InPlaceLine'"  # progress by default in a notebook
    assert gradjob.api.default_progress() is None                               # and silent here


def test_the_in_place_line_shows_only_checks_that_take_a_few_seconds():
    """Issue 20: the notebook default, on a clock the test sets (no timed assertions)."""
    import io

    from gradjob.run.progress import InPlaceLine

    now = [0.0]
    stream = io.StringIO()
    line = InPlaceLine(stream, after=3.0, every=1.0, clock=lambda: now[0])
    line.start(4, 0, None)
    line.advance(10)                      # at 0 s: nothing yet
    now[0] = 4.0
    line.advance(10)                      # past 3 s: shown
    now[0] = 4.5
    line.advance(10)                      # within a second of the last: not rewritten
    now[0] = 5.0
    line.advance(10)                      # the last chunk: always
    line.finish()
    assert stream.getvalue() == (
        "\rchunks 2/4, 5 parameters/s, elapsed 0:00:04, about 0:00:04 left, 0 suspect(s) so far"
        "\rchunks 4/4, 8 parameters/s, elapsed 0:00:05, about 0:00:00 left, 0 suspect(s) so far\n")
    quick = io.StringIO()
    line = InPlaceLine(quick, clock=lambda: 0.0)
    line.start(2, 0, None)
    line.advance(5)
    line.advance(5)
    line.finish()
    assert quick.getvalue() == ""
