"""pytest setup: TensorFlow quiet and on the CPU; a guard that fails any test writing outside its tmp folder; shared
fixtures of the test modules.

The guard snapshots (names, sizes, mtimes) the repo tree and the folder pytest was started in before each test's
setup, after its call and after its teardown; a difference fails the test (or errors its teardown), naming the paths.
Only light modules are imported at the top, so the guard loads fast on its own: `python -m pytest -p tests.conftest`
(as tests/test_write_guard.py does).
"""
import collections
import itertools
import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

REPO = Path(__file__).resolve().parents[1]
NOT_WATCHED = (".git", "__pycache__", ".pytest_cache")  # and *.egg-info
MAX_WATCHED = 5000  # entries per watched tree (10-20 ms a snapshot); a larger tree is watched as deep as that reaches
SHOWN_CHANGES = 20
GUARD = pytest.StashKey()
BEFORE = pytest.StashKey()


def _tree_levels(root, skip):
    """The entries under `root`, one dict per level: {path: (size, mtime_ns), or None for a folder}. Symlinked folders
    are not entered; NOT_WATCHED names, *.egg-info and the paths in `skip` are left out."""
    level = [str(root)]
    while level:
        entries, next_level = {}, []
        for folder in level:
            try:
                listing = list(os.scandir(folder))
            except OSError:  # removed or unreadable meanwhile
                continue
            for entry in listing:
                if entry.name in NOT_WATCHED or entry.name.endswith(".egg-info") or entry.path in skip:
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        entries[entry.path] = None
                        next_level.append(entry.path)
                    else:
                        stat = entry.stat(follow_symlinks=False)
                        entries[entry.path] = (stat.st_size, stat.st_mtime_ns)
                except OSError:  # removed meanwhile
                    continue
        yield entries
        level = next_level


def tree_snapshot(root, depth=None, skip=()):
    """{path: (size, mtime_ns), or None for a folder} of the tree under `root`, `depth` levels deep (None: all).
    Usage: before = tree_snapshot(REPO); ...; assert not tree_changes(before, tree_snapshot(REPO))"""
    snapshot = {}
    for entries in itertools.islice(_tree_levels(root, skip), depth):
        snapshot.update(entries)
    return snapshot


def watch_depth(root, skip=(), limit=MAX_WATCHED):
    """None when the tree under `root` holds at most `limit` entries, else the most levels that do (at least 1).
    Usage: tree_snapshot(root, watch_depth(root))"""
    count = 0
    for depth, entries in enumerate(_tree_levels(root, skip)):
        count += len(entries)
        if count > limit:
            return max(depth, 1)
    return None


def tree_changes(before, after):
    """['created PATH' | 'removed PATH' | 'changed PATH'] between two snapshots, sorted by path; a created or removed
    folder stands for its contents. Usage: tree_changes(tree_snapshot(root), tree_snapshot(root)) == []"""
    created, removed = after.keys() - before.keys(), before.keys() - after.keys()
    changed = {path for path in before.keys() & after.keys() if before[path] != after[path]}
    lines = []
    for kind, paths in (("created", created), ("removed", removed), ("changed", changed)):
        tops = collections.Counter()
        for path in paths:
            while kind != "changed" and os.path.dirname(path) in paths:
                path = os.path.dirname(path)
            tops[path] += 1
        lines += [(path, "{} {}{}".format(kind, path, " (and {} more inside)".format(count - 1) if count > 1 else ""))
                  for path, count in tops.items()]
    return [line for _, line in sorted(lines)]


class WriteGuard:
    """The trees a test must leave alone: the repo and the folder pytest started in (when outside the repo), minus the
    system temporary folder and an explicit --basetemp, each as deep as MAX_WATCHED entries allow."""

    def __init__(self, config):
        start = config.invocation_params.dir.resolve()
        skip = {os.path.realpath(tempfile.gettempdir())}
        if config.option.basetemp:  # an xdist worker's basetemp is <the given one>/popen-gwN: leave out all workers'
            basetemp = (start / config.option.basetemp).resolve()
            skip.add(str(basetemp.parent if hasattr(config, "workerinput") else basetemp))
        roots = [REPO] if start.is_relative_to(REPO) else [REPO, start]
        self.skip = frozenset(skip)
        self.watched = [(root, watch_depth(root, self.skip)) for root in roots]
        self.in_worker = hasattr(config, "workerinput")

    def snapshot(self):
        snapshot = {}
        for root, depth in self.watched:
            snapshot.update(tree_snapshot(root, depth, self.skip))
        return snapshot

    def describe(self):
        extent = "{} levels deep: the tree holds over {} entries".format
        return "write guard: " + ", ".join(
            "{} ({})".format(root, "all" if depth is None else extent(depth, MAX_WATCHED)) for root, depth in self.watched)

    def failure(self, changes):
        lines = ["this test wrote outside its tmp folder:"] + ["  " + line for line in changes[:SHOWN_CHANGES]]
        if len(changes) > SHOWN_CHANGES:
            lines.append("  ... and {} more".format(len(changes) - SHOWN_CHANGES))
        if self.in_worker:
            lines.append("(pytest-xdist: a test running in another worker at the same time may have made these; "
                         "run this test alone to confirm)")
        return "\n".join(lines)


def pytest_configure(config):
    config.stash[GUARD] = WriteGuard(config)


def pytest_report_header(config):
    return config.stash[GUARD].describe()


def _fail_on_changes(item):
    """Fail the running phase of `item` if the watched trees changed since the last snapshot; take the next one."""
    guard, before = item.config.stash[GUARD], item.stash[BEFORE]
    item.stash[BEFORE] = guard.snapshot()
    changes = tree_changes(before, item.stash[BEFORE])
    if changes:
        pytest.fail(guard.failure(changes), pytrace=False)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item):
    item.stash[BEFORE] = item.config.stash[GUARD].snapshot()  # before any fixture of the test, module ones included
    return (yield)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item):
    result = yield
    _fail_on_changes(item)  # the test FAILS for what it and its fixtures' setup wrote
    return result


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item):
    result = yield  # every fixture finalized, module and session ones after the last test included
    _fail_on_changes(item)  # an ERROR at teardown for what the teardown (or a failing test) wrote
    return result


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """The test's tmp folder as the current folder (relative paths such as checkpoints/ land there), seed 0."""
    import keras

    monkeypatch.chdir(tmp_path)
    keras.utils.set_random_seed(0)
    return tmp_path


@pytest.fixture()
def dataset(workdir):
    """The default image folder of tests.helpers.make_image_folder in the test's tmp folder (the current folder)."""
    from tests.helpers import make_image_folder

    return make_image_folder(workdir / "faces")


@pytest.fixture()
def image_folder(tmp_path):
    """Factory of image folders in the test's tmp folder.
    Usage: image_folder("faces", num_classes=10, images_per_class=2)  # make_image_folder's options; returns the path"""
    from tests.helpers import make_image_folder

    return lambda name="faces", **options: make_image_folder(tmp_path / name, **options)
