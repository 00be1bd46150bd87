#!/usr/bin/env python3
"""Two workers against one at the same global batch: the largest weight difference after training, for every case of
tests/worker_equality_job.py (SGD momentum, SGDW, AdamW at lr 0.1; ArcFace, softmax; no BatchNorm; sharded centers),
beside what float32 rounding alone does: the one-worker run with the rows of every batch reversed (the same
mathematics in another summation order). Runs of several lengths show how both grow with the steps.

Each length runs four processes at once: two workers on 127.0.0.1 (batch 8 each), one worker (batch 16), one worker
with reversed rows; 4 classes x `--images_per_class` generated 32x32 images (tests.helpers.make_image_folder), so an
epoch is images / 16 steps. Training logs go to stderr; stdout holds one JSON object per line.
Usage: python bench/worker_equality.py [--epochs 2,8,32] [--images_per_class 8] [--cases sgd_arcface,adamw_softmax]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
sys.path[:0] = [BENCH_DIR, REPO]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench_common import load_average, machine  # noqa: E402
from tests.local_cluster import free_ports  # noqa: E402

RUNS = ("worker0", "worker1", "single", "reordered")


def start_runs(folder, data_dir, epochs, cases):
    """The four processes of one run length, each in its own working folder under `folder`."""
    ports = free_ports(2)
    extra = {"worker0": ["--ports", ports, "--index", "0"], "worker1": ["--ports", ports, "--index", "1"], "single": [], "reordered": ["--reorder"]}
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    jobs = {}
    for run in RUNS:
        cwd = os.path.join(folder, "epochs{}_{}".format(epochs, run))
        os.makedirs(cwd)
        command = [sys.executable, "-m", "tests.worker_equality_job", "--data", data_dir, "--epochs", str(epochs), *extra[run]]
        jobs[run] = subprocess.Popen(command + (["--cases", cases] if cases else []), cwd=cwd, env=env, stdout=subprocess.DEVNULL)
    for run, job in jobs.items():
        if job.wait():
            raise RuntimeError("{} (epochs {}) failed with exit status {}".format(run, epochs, job.returncode))


def load_weights(path):
    with np.load(path) as loaded:
        return [loaded["arr_{}".format(index)] for index in range(len(loaded.files))]


def max_difference(first, second):
    return max(float(np.abs(aa - bb).max()) for aa, bb in zip(first, second))


def report(folder, epochs, steps):
    """One JSON line per case and comparison of one run length."""
    weights = {run: os.path.join(folder, "epochs{}_{}".format(epochs, run), "weights") for run in RUNS}
    for name in sorted(name for name in os.listdir(weights["single"]) if name.endswith(".npz") and not name.endswith("_start.npz")):
        single = load_weights(os.path.join(weights["single"], name))
        for run, metric in (("worker0", "max_abs_diff_two_workers"), ("reordered", "max_abs_diff_reversed_rows")):
            print(json.dumps({"name": "worker_equality", "case": name[: -len(".npz")], "epochs": epochs, "steps": steps, "metric": metric,
                              "value": max_difference(load_weights(os.path.join(weights[run], name)), single), "unit": "weight",
                              "load_average": load_average(), "machine": machine()}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", default="2,8,32", help="comma-separated run lengths")
    parser.add_argument("--images_per_class", type=int, default=8, help="images of each of the 4 classes")
    parser.add_argument("--cases", default="", help="comma-separated cases of tests/worker_equality_job.py (default: all)")
    args = parser.parse_args()
    from keras_insightface import data
    from tests.helpers import make_image_folder

    with tempfile.TemporaryDirectory() as folder:
        data_dir = make_image_folder(os.path.join(folder, "faces"), num_classes=4, images_per_class=args.images_per_class, size=32)
        data.pre_process_folder(data_dir)  # the folder scan cache, written once before the processes read it
        steps_per_epoch = 4 * args.images_per_class // 16
        for epochs in (int(value) for value in args.epochs.split(",")):
            start = time.perf_counter()
            start_runs(folder, data_dir, epochs, args.cases)
            print("epochs {}: {:.0f} s".format(epochs, time.perf_counter() - start), file=sys.stderr)
            report(folder, epochs, epochs * steps_per_epoch)


if __name__ == "__main__":
    main()
