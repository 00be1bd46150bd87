"""Two workers at batch B train what one worker trains at batch 2 B (tests/worker_equality_job.py, 127.0.0.1, CPU):
SGD momentum, SGDW and AdamW at lr 0.1, with ArcFace and with the softmax head, augmented data, synchronized BatchNorm;
a model without BatchNorm; the class centers sharded over the two workers; a run resumed on the other worker count.

"Equal" is to TOLERANCE on every weight, or where float32 rounding alone moves the one-worker run further, to
ROUNDING_FACTOR times that: the same one-worker run with the rows of each batch reversed (the same mathematics in
another summation order) is the measure of it (docs/distributed.md, "Many workers train what one worker trains")."""
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests.local_cluster import free_ports

# The module's processes start once: its tests all run in one pytest-xdist worker (pytest.ini: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("worker_equality")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE, ROUNDING_FACTOR = 1e-5, 2.0
CASES = ["sgd_arcface", "sgdw_arcface", "adamw_arcface", "sgd_softmax", "sgdw_softmax", "adamw_softmax", "sgd_arcface_no_batchnorm",
         "sgd_arcface_sharded"]


def start_job(folder, data_dir, *args):
    os.makedirs(folder)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "tests.worker_equality_job", "--data", str(data_dir), *map(str, args)]
    return subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case on two workers, on one worker, and on one worker with reversed batch rows, at once; then the two
    workers resume the one worker's run from its epoch-1 checkpoint, and the one worker the two workers' run."""
    from keras_insightface import data
    from tests.helpers import make_image_folder

    root = tmp_path_factory.mktemp("worker_equality")
    data_dir = make_image_folder(root / "faces", num_classes=4, images_per_class=8, size=32)
    data.pre_process_folder(data_dir)  # the folder scan cache, written once before the processes read it
    ports = free_ports(2)
    jobs = {name: start_job(root / name, data_dir, *args) for name, args in {
        "worker0": ["--ports", ports, "--index", 0, "--resume_from", root / "single"],
        "worker1": ["--ports", ports, "--index", 1, "--resume_from", root / "single"],
        "single": ["--resume_from", root / "worker0"],
        "reordered": ["--reorder"],
    }.items()}
    for name, job in jobs.items():
        stdout, stderr = job.communicate(timeout=600)
        assert job.returncode == 0, (name, stderr[-3000:])
        (root / (name + ".done")).write_text(stdout.splitlines()[-1])  # "DONE <s> s, collective threads <N>"
    return root


def weights(root, run, case):
    with np.load(root / run / "weights" / (case + ".npz")) as loaded:
        return [loaded["arr_{}".format(index)] for index in range(len(loaded.files))]


def max_difference(first, second):
    assert [ww.shape for ww in first] == [ww.shape for ww in second]
    return max(float(np.abs(aa - bb).max()) for aa, bb in zip(first, second))


def allowed(root, case):
    """TOLERANCE, or ROUNDING_FACTOR x what reversing the batch rows does to the one-worker run of `case`."""
    return max(TOLERANCE, ROUNDING_FACTOR * max_difference(weights(root, "reordered", case), weights(root, "single", case)))


@pytest.mark.parametrize("case", CASES)
def test_two_workers_equal_one_worker_at_the_same_global_batch(runs, case):
    single, first, second = (weights(runs, run, case) for run in ("single", "worker0", "worker1"))
    for ww0, ww1 in zip(first, second):
        np.testing.assert_array_equal(ww0, ww1)
    start = weights(runs, "single", case + "_start")
    assert max_difference(start, single[: len(start)]) > 1e-2  # the basic model did train
    assert max_difference(first, single) <= allowed(runs, case)


def test_sharded_checkpoint_of_two_workers_holds_every_class_center(runs):
    """The chief's checkpoint of the sharded run (gathered from both workers) is the dense head it ended with."""
    checkpoint = keras.models.load_model(runs / "worker0" / "checkpoints" / "sgd_arcface_sharded.h5", compile=False)
    final = weights(runs, "worker0", "sgd_arcface_sharded")
    np.testing.assert_array_equal(checkpoint.get_layer("NormDense").w.numpy(), final[-1])
    assert final[-1].shape == (16, 4)
    assert os.listdir(runs / "worker1") == ["weights"]  # the other worker wrote no checkpoint


@pytest.mark.parametrize("resumed, side", [("single", "two workers' run resumed on one worker"), ("worker0", "one worker's run resumed on two")])
def test_a_run_resumes_on_the_other_worker_count(runs, resumed, side):
    """The seed's resume, `Train(model=checkpoint)` + `tt.train(sch, 1)`, from the other side's epoch-1 checkpoint."""
    continued, uninterrupted = weights(runs, resumed, "sgd_arcface_resumed"), weights(runs, "single", "sgd_arcface")
    assert max_difference(continued, uninterrupted) <= allowed(runs, "sgd_arcface"), side
    if resumed == "worker0":
        for ww0, ww1 in zip(continued, weights(runs, "worker1", "sgd_arcface_resumed")):
            np.testing.assert_array_equal(ww0, ww1)


def test_workers_keep_no_thread_per_collective(runs):
    """A collective with a timeout keeps a TensorFlow thread alive for that long: one per step's collective would be
    hundreds here, thousands a minute of training with synchronized BatchNorm. Only the epoch-end all-reduce has a
    timeout: about 2 threads per epoch end (2 epochs of each case, 1 resumed epoch), and a few of TensorFlow's own."""
    epoch_ends = 2 * len(CASES) + 1
    for worker in ("worker0", "worker1"):
        threads = int((runs / (worker + ".done")).read_text().rsplit(" ", 1)[1])
        assert threads <= 2 * epoch_ends + 10, (worker, threads)
