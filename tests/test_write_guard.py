"""The guard of tests/conftest.py: a test that writes outside its tmp folder fails, naming the paths."""
import os
import subprocess
import sys

from tests.conftest import REPO, tree_changes, tree_snapshot, watch_depth

THROWAWAY_TESTS = '''
import os
from pathlib import Path


def test_stays_in_its_tmp_folder(tmp_path):
    (tmp_path / "inside.txt").write_text("fine")


def test_writes_where_pytest_started():
    Path("checkpoints").mkdir()
    Path("checkpoints", "run.h5").write_bytes(b"model")
    os.remove("demo_model.h5")
    Path("notes.txt").write_text("a longer text than before")
'''


def test_a_test_writing_where_pytest_started_fails_naming_the_paths_under_xdist(tmp_path):
    """pytest in two worker processes, started in a throwaway project folder, with the guard of tests/conftest.py only."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_throwaway.py").write_text(THROWAWAY_TESTS)
    (project / "demo_model.h5").write_bytes(b"the user's model")
    (project / "notes.txt").write_text("short")
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", PYTHONDONTWRITEBYTECODE="1")
    command = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "xdist", "-n", "2", "--dist", "loadfile",
               "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "basetemp"), "-q", "test_throwaway.py"]
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 failed, 1 passed" in output and "FAILED test_throwaway.py::test_writes_where_pytest_started" in output
    for line in ["created {}".format(project / "checkpoints") + " (and 1 more inside)",
                 "removed {}".format(project / "demo_model.h5"), "changed {}".format(project / "notes.txt")]:
        assert line in output, output
    assert "inside.txt" not in output and "another worker" in output


def test_snapshots_see_created_removed_and_changed_paths_and_skip_caches(tmp_path):
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "model.h5").write_bytes(b"12")
    (tmp_path / "gone.txt").write_text("x")
    before = tree_snapshot(tmp_path)
    (tmp_path / "kept" / "model.h5").write_bytes(b"123")
    (tmp_path / "gone.txt").unlink()
    (tmp_path / "new" / "deeper").mkdir(parents=True)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "pkg.egg-info").mkdir()
    assert tree_changes(before, tree_snapshot(tmp_path)) == [
        "removed {}".format(tmp_path / "gone.txt"),
        "changed {}".format(tmp_path / "kept" / "model.h5"),
        "created {} (and 1 more inside)".format(tmp_path / "new"),
    ]


def test_a_large_tree_is_watched_as_deep_as_the_limit_allows(tmp_path):
    """Level 1: a, b; level 2: a/0..9; level 3: a/0/x. Depth 2 leaves level 3 out, but still sees new level-2 names."""
    for index in range(10):
        (tmp_path / "a" / str(index)).mkdir(parents=True)
    (tmp_path / "b").write_text("b")
    (tmp_path / "a" / "0" / "x").write_text("x")
    assert watch_depth(tmp_path, limit=13) is None
    assert watch_depth(tmp_path, limit=12) == 2 and watch_depth(tmp_path, limit=1) == 1
    before = tree_snapshot(tmp_path, 2)
    assert len(before) == 12
    (tmp_path / "a" / "0" / "y").write_text("y")
    (tmp_path / "a" / "new").write_text("new")
    assert tree_changes(before, tree_snapshot(tmp_path, 2)) == ["created {}".format(tmp_path / "a" / "new")]

