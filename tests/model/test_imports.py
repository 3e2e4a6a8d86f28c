"""Which imported modules are the user's (followed, hashed, re-imported) and which are libraries."""

from pathlib import Path

from gradjob.model.imports import user_imports


def _package(root: Path, name: str) -> Path:
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text("VALUE = 1\n")
    return (root / name / "__init__.py").resolve()


def test_a_library_on_a_site_packages_path_outside_the_installation_is_not_the_users(tmp_path, monkeypatch):
    # a user site, a .pth file or PYTHONPATH puts a site-packages folder on the path that is not
    # under sys.prefix; forgetting its numpy from sys.modules broke the next check's import
    library = _package(tmp_path / "elsewhere/lib/python3.11/site-packages", "gradjob_test_library")
    helper = _package(tmp_path / "project", "gradjob_test_helper")
    monkeypatch.syspath_prepend(str(tmp_path / "elsewhere/lib/python3.11/site-packages"))
    monkeypatch.syspath_prepend(str(tmp_path / "project"))
    model = tmp_path / "project/model.py"
    source = "import gradjob_test_library\nimport gradjob_test_helper\n"
    model.write_text(source)
    found = user_imports([str(model)], source, str(model))
    assert list(found) == [str(helper)]
    assert str(library) not in found
