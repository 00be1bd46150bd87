"""Tests of multi_worker.py: TF_CONFIG checks, the per-worker input shards, the callbacks of a worker, and
two worker processes on 127.0.0.1 training the demo data (equal weights, chief-only files, kill and resume)."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_insightface import data, multi_worker
from tests.local_cluster import free_ports

# The module's processes start once: its tests all run in one pytest-xdist worker (pytest.ini: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("multi_worker")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_REC = os.path.join(REPO, "tests", "data", "faces_rec")


# ---------------------------------------------------------------- TF_CONFIG
@pytest.mark.parametrize("value, message", [
    (None, "TF_CONFIG is not set"),
    ("{cluster", "TF_CONFIG is not JSON"),
    (json.dumps({"cluster": {"worker": ["a:1"]}}), "needs a 'cluster' and a 'task'"),
    (json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}), "not one of the cluster's tasks"),
])
def test_bad_tf_config_is_named(value, message):
    environ = {} if value is None else {"TF_CONFIG": value}
    with pytest.raises(ValueError, match=message):
        multi_worker.read_tf_config(environ)


def test_single_worker_place_and_unchanged_callbacks():
    place = multi_worker.worker_place(tf.distribute.get_strategy())
    assert place == (0, 1, True, 1) and place.input_shard is None
    callbacks = [object(), object()]
    assert multi_worker.arrange_callbacks(callbacks, None, place, [], [], callbacks[1], callbacks[0]) is callbacks


def test_worker_callbacks_chief_and_others():
    lr, ee, hist, nan, commit, stop = (type(name, (), {})() for name in ("Lr", "Eval", "Hist", "NaN", "Commit", "Stop"))
    callbacks = [lr, ee, hist, nan, commit, stop]
    chief = multi_worker.arrange_callbacks(callbacks, None, multi_worker.WorkerPlace(0, 2, True, 1), [ee], [commit], stop, hist)
    other = multi_worker.arrange_callbacks(callbacks, None, multi_worker.WorkerPlace(1, 2, False, 1), [ee], [commit], stop, hist)
    assert [type(cc).__name__ for cc in chief] == ["Lr", "Eval", "Stop", "EpochEndSync", "GatherCheckpointState", "Hist", "NaN", "Commit"]
    assert [type(cc).__name__ for cc in other] == ["Lr", "Stop", "EpochEndSync", "GatherCheckpointState", "Hist", "NaN"]


@pytest.mark.parametrize("num_replicas, sync, synchronized, said", [
    (1, True, [False, False], ""),  # one replica: the batch is the global batch, nothing to do
    (2, True, [True, True], "sync_batchnorm: 2 BatchNormalization layers use the statistics of the global batch of 16"),
    (2, False, [False, False], "2 of 2 layers normalize each replica's own batch of 8, not the global batch of 16"),
])
def test_sync_batchnorm_of_the_basic_model(capsys, num_replicas, sync, synchronized, said):
    from tests.helpers import small_conv_model

    model = small_conv_model(with_batchnorm=True)
    multi_worker.arrange_batchnorm(model, num_replicas, 8, sync)
    layers = [layer for layer in model.layers if "batch_normalization" in layer.name or layer.name == "embedding"]
    assert [layer.synchronized for layer in layers] == synchronized
    printed = capsys.readouterr().out
    assert said in printed and (printed == "") == (said == "")


def test_no_word_on_batchnorm_for_a_model_without_it(capsys):
    from tests.helpers import small_conv_model

    multi_worker.arrange_batchnorm(small_conv_model(with_batchnorm=False), 2, 8, sync_batchnorm=False)
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------- input shards
def batches(ds):
    return [(np.asarray(images), np.asarray(labels)) for images, labels in ds]


@pytest.mark.parametrize("augmentation", [dict(random_status=-1), dict(random_status=3, random_cutout_mask_area=0.5)])
def test_folder_workers_read_their_slice_of_each_global_batch(dataset, augmentation):
    """Worker 0's batch k then worker 1's batch k are the global batch k of a single worker, images and labels; each
    image augmented as on a single worker (flip, brightness, contrast, saturation, random crop and cutout draws)."""
    common = dict(batch_size=8, seed=3, **augmentation)
    whole, steps, _ = data.prepare_dataset_and_classes(dataset, **common)
    if augmentation["random_status"] >= 0:  # augmented: not the plain images
        plain, augmented = (data.prepare_dataset_and_classes(dataset, **dict(common, **options))[0] for options in ({"random_status": -1}, {}))
        assert np.abs(batches(plain)[0][0] - batches(augmented)[0][0]).mean() > 0.05
    shards = [data.prepare_dataset_and_classes(dataset, input_shard=(index, 2), **common) for index in range(2)]
    assert steps == 4 and [ss[1] for ss in shards] == [4, 4]
    orders = []
    for epoch in range(2):  # the second epoch draws a new order, the same on every worker
        expected = batches(whole)
        got = [batches(ss[0]) for ss in shards]
        assert len(got[0]) == len(got[1]) == 4
        for (images, labels), first, second in zip(expected, *got):
            assert first[0].shape == (4, 112, 112, 3)
            np.testing.assert_array_equal(np.concatenate([first[1], second[1]]), labels)
            np.testing.assert_array_equal(np.concatenate([first[0], second[0]]), images)
        orders.append(np.concatenate([labels for _, labels in expected]))
    assert not np.array_equal(*orders)


def shard_images(paths):
    """Normalized float32 images and labels of every record of TFRecord shard files, read directly."""
    images, labels = [], []
    for record in tf.data.TFRecordDataset(paths):
        example = tf.io.parse_single_example(record, data.SHARD_FEATURES)
        images.append((tf.image.decode_jpeg(example["image"], channels=3).numpy().astype("float32") - 127.5) / 128)
        labels.append(int(example["label"]))
    return np.stack(images), np.array(labels)


def test_shard_set_is_split_by_file(tmp_path):
    from keras_insightface import prepare_data

    tf.random.set_seed(None)  # a global seed breaks the seeded shard shuffle buffer (data._shard_records), a known issue
    dataset_dir = tmp_path / "faces_rec"
    dataset_dir.mkdir()
    for name in ("train.rec", "train.idx", "property"):
        (dataset_dir / name).write_bytes(open(os.path.join(FIXTURE_REC, name), "rb").read())
    shards = prepare_data.write_tfrecord_shards(dataset_dir, shard_images=7)  # 30 images: shards of 7, 7, 7, 7, 2
    files = sorted(glob.glob(os.path.join(shards, "*.tfrecord")))
    for index, own_files in ((0, files[0::2]), (1, files[1::2])):
        ds, steps, _ = data.prepare_dataset_and_classes(shards, batch_size=4, random_status=-1, seed=0, input_shard=(index, 2))
        assert steps == 7  # the smaller share (shards 1 and 3: 14 images) in global batches of 4
        own_images, own_labels = shard_images(own_files)
        got = batches(ds)
        assert [len(labels) for _, labels in got] == [2] * 7
        for image, label in ((image, label) for images, labels in got for image, label in zip(images, labels)):
            distances = np.abs(own_images - image).mean(axis=(1, 2, 3))  # nearest image of the worker's own shards
            assert distances.min() < 0.02 and own_labels[distances.argmin()] == label


@pytest.mark.parametrize("kwargs, message", [
    (dict(input_shard=(2, 2)), "0 <= index < count"),
    (dict(input_shard=(0, 3)), "does not split evenly over 3 workers"),
    (dict(input_shard=(0, 2), cache=True), "cache is not supported"),
])
def test_bad_input_shard_is_named(dataset, kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.prepare_dataset_and_classes(dataset, batch_size=8, **kwargs)


def test_multi_worker_train_needs_a_seed(dataset, monkeypatch):
    from keras_insightface import train
    from tests.helpers import tiny_basic_model

    monkeypatch.setattr(multi_worker, "worker_place", lambda strategy: multi_worker.WorkerPlace(0, 2, True, 1))
    with pytest.raises(ValueError, match="seed: multi-worker training needs"):
        train.Train(dataset, "m.h5", basic_model=tiny_basic_model(), batch_size=4)


# ---------------------------------------------------------------- two workers on 127.0.0.1
def start_job(cwd, out, data_dir, *args):
    os.makedirs(cwd, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "tests.multi_worker_job", "--out", str(out), "--data", str(data_dir), *map(str, args)]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_pair(root, name, data_dir, extra=({}, {})):
    ports = free_ports(2)
    jobs = []
    for index in range(2):
        args = ["--ports", ports, "--index", index]
        for key, value in extra[index].items():
            args += ["--" + key] + ([value] if value != "" else [])
        jobs.append(start_job(root / "{}{}".format(name, index), root / "{}{}.npz".format(name, index), data_dir, *args))
    return jobs


def finish(job, timeout=400):
    stdout, stderr = job.communicate(timeout=timeout)
    results = [json.loads(line[len("RESULT "):]) for line in stdout.splitlines() if line.startswith("RESULT ")]
    return job.returncode, (results[0] if results else None), stderr


def weights(path):
    with np.load(path) as loaded:
        return [loaded[name] for name in sorted(loaded.files, key=lambda name: int(name.split("_")[1]))]


def user_files(folder):
    """Files a run left in its working folder (the job's own console capture aside)."""
    return sorted(os.path.relpath(path, folder) for path in glob.glob(os.path.join(folder, "**"), recursive=True) if os.path.isfile(path))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Phase 1 at once: an uninterrupted pair, a pair whose worker 1 dies in epoch 2, one worker at the same global
    batch. Phase 2: both killed workers restarted with the seed's resume, and a pair where worker 1 asks a gentle stop."""
    from keras_insightface import demo

    root = tmp_path_factory.mktemp("multi_worker")
    data_dir = root / "data"
    demo.make_demo_dataset(str(data_dir), num_train_ids=16, num_test_ids=8, images_per_id=8, num_pairs=40)
    data.pre_process_folder(str(data_dir / "train"))  # the folder scan cache, written once before the workers read it
    no_eval = {"no_eval": ""}
    whole = start_pair(root, "whole", data_dir)
    killed = start_pair(root, "killed", data_dir, extra=(no_eval, dict(no_eval, die_at="1,1")))
    single = start_job(root / "single", root / "single.npz", data_dir, "--no_eval")
    results = {"whole": [finish(job) for job in whole], "killed": [finish(job) for job in killed], "single": finish(single)}
    checkpoint = root / "killed0" / "checkpoints" / "mw.h5"
    resumed = start_pair(root, "resumed", data_dir, extra=[dict(no_eval, resume=1, model=checkpoint)] * 2)
    stopped = start_pair(root, "stopped", data_dir, extra=(no_eval, dict(no_eval, stop_after=1)))
    results["resumed"] = [finish(job) for job in resumed]
    results["stopped"] = [finish(job) for job in stopped]
    return root, results


def test_two_workers_equal_one_worker_at_the_same_global_batch(runs):
    root, results = runs
    for returncode, result, stderr in results["whole"] + [results["single"]]:
        assert returncode == 0, stderr[-3000:]
    (_, chief, _), (_, other, _) = results["whole"]
    assert chief["is_chief"] and not other["is_chief"] and chief["epochs"] == other["epochs"] == 2
    assert chief["history_loss"] == other["history_loss"]  # logged losses are the global ones on every worker
    assert chief["max_accuracy"] == other["max_accuracy"] > 0.5  # the chief's eval result reached the other worker
    first, second, alone = weights(root / "whole0.npz"), weights(root / "whole1.npz"), weights(root / "single.npz")
    for ww0, ww1, ww in zip(first, second, alone):
        np.testing.assert_array_equal(ww0, ww1)
        np.testing.assert_allclose(ww0, ww, atol=1e-5, rtol=0)  # tests/test_worker_equality.py: every optimizer and head


def test_only_the_chief_writes(runs):
    root, _ = runs
    chief_files = user_files(root / "whole0")
    assert "checkpoints/mw.h5" in chief_files and "checkpoints/mw_hist.json" in chief_files
    assert any(name.startswith("checkpoints/mw_basic_demo_verify_epoch_") for name in chief_files)
    assert user_files(root / "whole1") == []
    assert len(json.load(open(root / "whole0" / "checkpoints" / "mw_hist.json"))["loss"]) == 2


def test_killed_worker_ends_the_run_and_resume_finishes_it(runs):
    root, results = runs
    (chief_code, _, chief_err), (dead_code, _, _) = results["killed"]
    assert dead_code == 9
    assert chief_code != 0 and "PeerLostError: worker 0 of 2" in chief_err
    assert os.listdir(root / "killed0" / "checkpoints" / "mw_state") == ["epoch_1"]
    for returncode, result, stderr in results["resumed"]:
        assert returncode == 0 and result["epochs"] == 2, stderr[-3000:]
    assert user_files(root / "resumed1") == [] and user_files(root / "killed1") == []
    for resumed0, resumed1, whole in zip(weights(root / "resumed0.npz"), weights(root / "resumed1.npz"), weights(root / "whole0.npz")):
        np.testing.assert_array_equal(resumed0, resumed1)
        np.testing.assert_allclose(resumed0, whole, atol=1e-6, rtol=0)


def test_gentle_stop_on_one_worker_stops_both(runs):
    root, results = runs
    for returncode, result, stderr in results["stopped"]:
        assert returncode == 0 and result["history_epochs"] == [0], stderr[-3000:]  # the plan asked for 2 epochs
    assert json.load(open(root / "stopped0" / "checkpoints" / "mw_hist.json"))["epoch"] == [0]
