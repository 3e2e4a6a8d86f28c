"""Issue 20: a notebook, executed by nbclient with a real kernel, shows a check's outcome as the
report's summary (``Outcome._repr_html_``): FAIL and the failing tensors of the seed's planted bugs."""

import nbformat
from nbclient import NotebookClient

CELLS = [
    "import gradjob\nfrom gradjob.model import cases, networks\ncase = cases.seed_case()",
    "outcome = gradjob.check(networks.forward_propagation_n, networks.backward_propagation_n,\n"
    "                        case.X, case.Y, case.parameters, fast=False)\noutcome",
]


def test_a_notebook_displays_the_outcome_as_html(tmp_path):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in CELLS])
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = notebook.cells[1].outputs
    shown = [o for o in outputs if o.output_type == "execute_result"]
    assert len(shown) == 1, outputs
    html, plain = shown[0].data["text/html"], shown[0].data["text/plain"]
    assert '<span class="fail">FAIL</span>' in html and "wrong: b1, W2" in html
    assert "FAIL  db1 is 4.00× the numerical gradient" in html and "FAIL  dW2 is 2.00× the numerical gradient" in html
    assert plain.startswith("<Outcome FAIL: difference 2.85") and len(plain) < 400
