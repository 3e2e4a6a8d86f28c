"""Issue 19: ``<store>.lock`` is a path a user can put anything at. gradjob never follows a symbolic
link there and never truncates or deletes a file it did not create; its own lock files still come
and go as before (tests/run/test_faults.py holds the lock from another process)."""

import json
import os
import socket

import pytest

from gradjob.errors import InputError
from gradjob.storage import lock


def refusal(path, problem):
    return (f"{path} {problem}, not a gradjob lock file; gradjob never replaces it: remove it or choose "
            "another --store")


def test_a_symlink_at_the_lock_path_is_never_followed(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("my thesis")
    (tmp_path / "s.zarr.lock").symlink_to(precious)
    with pytest.raises(InputError) as refused:
        with lock.holding(str(tmp_path / "s.zarr")):
            pass
    assert str(refused.value) == refusal(tmp_path / "s.zarr.lock", "is a symbolic link")
    assert precious.read_text() == "my thesis" and (tmp_path / "s.zarr.lock").is_symlink()


def test_a_dangling_symlink_creates_nothing(tmp_path):
    (tmp_path / "s.zarr.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InputError, match="is a symbolic link"):
        with lock.holding(str(tmp_path / "s.zarr")):
            pass
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("text", ["my notes", "", "{}", '{"host": "h"}', "[1, 2, 3]"])
def test_a_file_that_is_not_a_gradjob_lock_is_left_as_it_is(tmp_path, text):
    path = tmp_path / "s.zarr.lock"
    path.write_text(text)
    with pytest.raises(InputError) as refused:
        with lock.holding(str(tmp_path / "s.zarr")):
            pass
    assert str(refused.value) == refusal(path, "does not hold a gradjob lock record")
    assert path.read_text() == text


def test_another_users_file_a_hard_link_and_a_directory_are_refused(tmp_path):
    path = tmp_path / "s.zarr.lock"
    record = json.dumps({"host": socket.gethostname(), "pid": 1, "since": "x"})
    path.write_text(record)
    os.chown(path, 12345, 12345)  # the tests run as root: a file of another user
    with pytest.raises(InputError) as refused:
        with lock.holding(str(tmp_path / "s.zarr")):
            pass
    assert str(refused.value) == refusal(path, "belongs to another user (uid 12345)")
    path.unlink()
    (tmp_path / "mine.json").write_text(record)
    os.link(tmp_path / "mine.json", path)
    with pytest.raises(InputError) as refused:
        with lock.holding(str(tmp_path / "s.zarr")):
            pass
    assert str(refused.value) == refusal(path, "has other hard links")
    assert (tmp_path / "mine.json").read_text() == record
    path.unlink()
    path.mkdir()
    with pytest.raises(InputError) as refused:
        with lock.holding(str(tmp_path / "s.zarr")):
            pass
    assert str(refused.value) == refusal(path, "is not a regular file")


def test_own_lock_is_created_named_and_removed(tmp_path):
    path = tmp_path / "s.zarr.lock"
    with lock.holding(str(tmp_path / "s.zarr")) as note:
        assert note is None
        held = json.loads(path.read_text())
        assert (held["host"], held["pid"]) == (socket.gethostname(), os.getpid())
        with pytest.raises(InputError, match=f"is being written by another job \\(process {os.getpid()} on"):
            with lock.holding(str(tmp_path / "s.zarr")):
                pass
        assert path.exists()  # the refused one took nothing away
    assert not path.exists()


def test_a_stale_gradjob_lock_of_this_host_is_taken_over(tmp_path):
    path = tmp_path / "s.zarr.lock"
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": 99999, "since": "x"}))
    with lock.holding(str(tmp_path / "s.zarr")) as note:
        assert note == f"took over a stale lock of process 99999 on {socket.gethostname()}"
    assert not path.exists()


def test_submit_with_a_symlinked_lock_is_one_line_and_touches_nothing(gradjob, tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("my thesis")
    (tmp_path / "s.zarr.lock").symlink_to(precious)
    run = gradjob("submit", "--epsilon", "1e-7", "--store", tmp_path / "s.zarr")
    assert (run.exit_code, run.stdout) == (2, "")
    assert run.stderr == f"gradjob: error: {refusal(tmp_path / 's.zarr.lock', 'is a symbolic link')}\n"
    assert precious.read_text() == "my thesis" and not (tmp_path / "s.zarr").exists()


def test_gradjob_imports_where_there_is_no_fcntl():
    """Windows has no fcntl: the lock must not need it to import (filelock picks the OS's lock)."""
    import subprocess
    import sys

    code = "import sys; sys.modules['fcntl'] = None; import gradjob, gradjob.cli.app, gradjob.run.job; print('ok')"
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr
