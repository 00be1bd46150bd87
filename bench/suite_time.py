#!/usr/bin/env python3
"""Wall time of the test suite at two commits, alternated in one sitting (A, B, A, B, ...).

Each commit is exported with `git archive` into a temporary folder (the repository and its work tree are not touched)
and its suite runs there as the README runs it: `python -m pytest -q -n 2`, with this interpreter and the commit's own
code first on PYTHONPATH. With `--common`, the newer commit runs only the tests whose node ids the older commit has too:
the same tests before and after a change, apart from the tests the change added. Test output goes to stderr; stdout
holds one JSON object per run.
Usage: python bench/suite_time.py --before d068068 --after HEAD [--rounds 2] [--common] [-- -k heads]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
sys.path.insert(0, BENCH_DIR)

from bench_common import load_average, machine  # noqa: E402

KEEP_PLUGIN = "suite_time_keep_ids"
KEEP_PLUGIN_SOURCE = '''"""Keeps only the tests whose node ids are listed, one per line, in the file $SUITE_TIME_KEEP_IDS."""
import os


def pytest_collection_modifyitems(config, items):
    with open(os.environ["SUITE_TIME_KEEP_IDS"]) as ff:
        keep = set(ff.read().splitlines())
    items[:] = [item for item in items if item.nodeid in keep]
'''


def export_commit(commit, folder):
    """The tree of `commit` written into `folder` (git archive | tar -x); returns the full commit id."""
    full = subprocess.run(["git", "-C", REPO, "rev-parse", commit], check=True, capture_output=True, text=True).stdout.strip()
    os.makedirs(folder)
    archive = subprocess.Popen(["git", "-C", REPO, "archive", full], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", folder], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise SystemExit("suite_time.py: git archive {} failed".format(commit))
    return full


def pytest_env(tree, extra_path=()):
    return dict(os.environ, PYTHONPATH=os.pathsep.join([tree, *extra_path]), PYTHONDONTWRITEBYTECODE="1")


def collected_ids(tree):
    """The node ids pytest collects in `tree`."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=tree, env=pytest_env(tree), capture_output=True, text=True,
    )
    return [line for line in done.stdout.splitlines() if "::" in line]


def write_keep_plugin(folder, ids):
    """The plugin module and its id list in `folder`; returns the id list's path."""
    with open(os.path.join(folder, KEEP_PLUGIN + ".py"), "w") as ff:
        ff.write(KEEP_PLUGIN_SOURCE)
    ids_path = os.path.join(folder, "keep_ids.txt")
    with open(ids_path, "w") as ff:
        ff.write("\n".join(ids) + "\n")
    return ids_path


def run_suite(tree, pytest_args, plugin_folder=None, ids_path=None):
    """Seconds of wall time and pytest's last summary line for one suite run in `tree`."""
    command = [sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider", *pytest_args]
    env = pytest_env(tree)
    if plugin_folder:
        command[3:3] = ["-p", KEEP_PLUGIN]
        env = dict(pytest_env(tree, [plugin_folder]), SUITE_TIME_KEEP_IDS=ids_path)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
    summary = [line for line in done.stdout.splitlines() if " in " in line and ("passed" in line or "failed" in line)]
    return seconds, done.returncode, (summary[-1].strip("= ") if summary else "no summary")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the older commit (any git revision)")
    parser.add_argument("--after", default="HEAD", help="the newer commit (default HEAD)")
    parser.add_argument("--rounds", type=int, default=2, help="alternated pairs of runs (default 2)")
    parser.add_argument("--common", action="store_true", help="run at --after only the tests --before has too")
    parser.add_argument("pytest_args", nargs="*", help="passed to both pytest runs (after --)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1, got {}".format(args.rounds))

    with tempfile.TemporaryDirectory(prefix="suite_time_") as folder:
        trees = {side: os.path.join(folder, side) for side in ("before", "after")}
        commits = {side: export_commit(getattr(args, side), trees[side]) for side in trees}
        plugin_folder = ids_path = None
        if args.common:
            before_ids = set(collected_ids(trees["before"]))
            common = [node for node in collected_ids(trees["after"]) if node in before_ids]
            plugin_folder = os.path.join(folder, "plugin")
            os.makedirs(plugin_folder)
            ids_path = write_keep_plugin(plugin_folder, common)
            sys.stderr.write("{} of the {} tests at --before are also at --after\n".format(len(common), len(before_ids)))
        for round_index in range(1, args.rounds + 1):
            for side in ("before", "after"):
                load_start, description = load_average(), machine()  # before the run: the suite itself loads it
                keep = (plugin_folder, ids_path) if side == "after" and args.common else (None, None)
                seconds, returncode, summary = run_suite(trees[side], args.pytest_args, *keep)
                print(json.dumps({
                    "name": "test_suite", "side": side, "commit": commits[side][:12], "round": round_index,
                    "tests": "common with --before" if keep[0] else "all", "metric": "wall_time",
                    "value": round(seconds, 1), "unit": "s", "returncode": returncode, "summary": summary,
                    "load_average_start": load_start, "load_average_end": load_average(), "machine": description,
                }), flush=True)


if __name__ == "__main__":
    main()
