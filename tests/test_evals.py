"""Tests of evals.py: .bin loading, flip-summed embeddings, verification metrics and eval_callback."""
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import textwrap

import cv2
import keras
import numpy as np
import pytest

from keras_insightface import evals, export, face_io
from keras_insightface import io_utils

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "faces_rec")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def expected_issame(name):
    with open(os.path.join(DATA, "expected.json")) as ff:
        return json.load(ff)[name + "_issame"]


def cv2_rgb(encoded):
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(bytes(encoded), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def jpeg_bytes(image_rgb):
    return cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def write_bin(path, images_rgb, issame):
    """A protocol-4 pickle of (list of JPEG bytes, list of bool), like a converted .bin file."""
    with open(path, "wb") as ff:
        pickle.dump(([jpeg_bytes(ii) for ii in images_rgb], [bool(ii) for ii in issame]), ff, protocol=4)
    return str(path)


def pair_embeddings(cosines):
    """2-D unit embeddings, interleaved pairs, whose pair cosine similarities are `cosines`."""
    cosines = np.asarray(cosines, dtype="float64")
    second = np.stack([cosines, np.sqrt(1 - cosines**2)], axis=1)
    first = np.tile([[1.0, 0.0]], (len(cosines), 1))
    return np.stack([first, second], axis=1).reshape(-1, 2)


def cosine_for_distance(distance):
    """Squared L2 distance of unit vectors is 2 - 2 * cosine."""
    return 1 - np.asarray(distance, dtype="float64") / 2


def dense_model(size, emb=4, seed=0):
    """Flatten + a fixed Dense: embedding = flat(x) @ kernel + bias."""
    rng = np.random.default_rng(seed)
    model = keras.Sequential([keras.Input((size, size, 3)), keras.layers.Flatten(), keras.layers.Dense(emb, name="embedding")])
    kernel, bias = rng.normal(size=(size * size * 3, emb)), rng.normal(size=(emb,))
    model.layers[-1].set_weights([kernel.astype("float32"), bias.astype("float32")])
    return model, kernel, bias


def numpy_embeddings(images, kernel, bias, flip=True):
    """The flip-sum rule written independently: (x - 127.5) / 128 -> dense, plus the mirrored image, normalized."""
    def dense(batch):
        return ((batch.astype("float64") - 127.5) / 128).reshape(len(batch), -1) @ kernel + bias

    emb = dense(images) + (dense(images[:, :, ::-1]) if flip else 0)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def brute_force_best_accuracy(similarities, issame):
    """Accuracy of "same if similarity > t" over every t in the similarities and below them all."""
    candidates = [similarities.min() - 1] + sorted(similarities)
    return max(np.mean((similarities > tt) == issame) for tt in candidates)


# ---------------------------------------------------------------- load_bin


@pytest.mark.parametrize("name", ["lfw", "cfp_fp"])
def test_fixture_bins_load(name):
    path = os.path.join(DATA, name + ".bin")
    images, issame = face_io.load_bin(path)
    assert images.shape == (40, 112, 112, 3) and images.dtype == np.uint8
    assert issame.dtype == bool and issame.tolist() == expected_issame(name)
    with open(path, "rb") as ff:
        raw_first = pickle.load(ff, encoding="bytes")[0][0]
    np.testing.assert_array_equal(images[0], cv2_rgb(raw_first))


def test_python2_pickle_of_jpeg_strings(tmp_path):
    """Python 2 writes `str` images as BINSTRING opcodes; they load as bytes."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(2, 112, 112, 3), dtype=np.uint8)
    body = b"".join(b"T" + struct.pack("<I", len(jpeg_bytes(ii))) + jpeg_bytes(ii) for ii in images)
    data = b"\x80\x02]q\x00(" + body + b"e]q\x01(\x88e\x86q\x02."
    path = tmp_path / "py2.bin"
    path.write_bytes(data)
    loaded, issame = face_io.load_bin(path)
    assert issame.tolist() == [True]
    np.testing.assert_array_equal(loaded[1], cv2_rgb(jpeg_bytes(images[1])))


def test_ndarray_encoded_images_and_resize(tmp_path):
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :32] = (255, 0, 0)  # left half pure red in RGB
    encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1]  # uint8 1-D array
    path = tmp_path / "arr.bin"
    with open(path, "wb") as ff:
        pickle.dump(([encoded, encoded], np.array([False])), ff, protocol=2)
    loaded, issame = face_io.load_bin(path, image_size=(32, 32))
    assert loaded.shape == (2, 32, 32, 3) and issame.tolist() == [False]
    np.testing.assert_array_equal(loaded[0, :, :8], np.broadcast_to([255, 0, 0], (32, 8, 3)))
    np.testing.assert_array_equal(loaded[0, :, 24:], 0)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"bins": []}, r"expected a pickled pair \(bins, issame_list\), got dict"),
        ([b"a", b"b"], r"expected bins and issame_list to be sequences"),
        (([], []), r"holds no image pairs"),
        (([b"a", b"b", b"c"], [True]), r"odd number of images \(3\)"),
        (([b"a", b"b", b"c", b"d"], [True]), r"4 images for 1 issame labels"),
        (([b"not a jpeg" * 8, b"x" * 80], [True]), r"image 0 \(80 bytes\) could not be decoded"),
        (([b"\xff\xd8\xff" * 40, b"x"], [True]), r"image 1 holds only 1 bytes, too few for an encoded image"),
        (([3.5, b"x"], [True]), r"image 0 is a float"),
    ],
)
def test_bad_bins_raise_naming_file(tmp_path, content, message):
    path = tmp_path / "bad.bin"
    with open(path, "wb") as ff:
        pickle.dump(content, ff)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + message):
        face_io.load_bin(path)


class _ArrayOnSharedBuffer:
    """Pickles as numpy's own `_frombuffer(buffer, ...)`: every array a new object, all on one memoized buffer."""

    def __init__(self, data):
        self.data = data

    def __reduce__(self):
        return (np._core.numeric._frombuffer, (self.data, np.dtype("uint8"), (len(self.data),), "C"))


@pytest.mark.parametrize("shared", ["object", "buffer"])
def test_bin_referencing_more_than_it_holds_is_refused_before_decoding(tmp_path, shared):
    path = tmp_path / "bomb.bin"
    image = b"\xff\xd8\xff" + b"\0" * 4000
    if shared == "object":
        bins, message = [image] * 200000, r"lists 200000 images, but a \d+-byte file holds at most \d+ encoded images"  # 800 MB referenced
    else:
        bins, message = [_ArrayOnSharedBuffer(image) for _ in range(60)], r"its images reference 240180 bytes, more than 4 times the \d+-byte file"
    with open(path, "wb") as ff:
        pickle.dump((bins, [True] * (len(bins) // 2)), ff, protocol=4)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": " + message):
        face_io.load_bin(path)


def test_missing_bin(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.bin: no such .bin file"):
        face_io.load_bin(tmp_path / "missing.bin")


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_malicious_pickle_refused_without_running_code(tmp_path):
    target = str(tmp_path / "created_by_pickle")
    path = tmp_path / "evil.bin"
    with open(path, "wb") as ff:
        pickle.dump(([_Exploit(target), b"x"], [True]), ff, protocol=2)
    with pytest.raises(io_utils.UnsafePickleError, match=r"evil.bin.*(posix|os|nt)\.mkdir"):
        face_io.load_bin(path)
    assert not os.path.exists(target)


# ---------------------------------------------------------------- embeddings


def test_embed_images_flip_sum_matches_numpy():
    images = np.random.default_rng(2).integers(0, 256, size=(7, 6, 6, 3), dtype=np.uint8)
    model, kernel, bias = dense_model(6)
    for flip in (True, False):
        got = face_io.embed_images(model, images, batch_size=3, flip=flip)
        np.testing.assert_allclose(got, numpy_embeddings(images, kernel, bias, flip=flip), atol=1e-5)


# ---------------------------------------------------------------- metrics


def test_best_threshold_accuracy_hand_worked():
    # same if similarity > t. t = 0.2: positives 0.9, 0.8, 0.6, 0.3 right; negatives 0.2, 0.1, -0.2 right,
    # 0.7 wrong -> 7 / 8. Every other cut loses at least two pairs.
    similarities = np.array([0.9, 0.7, 0.8, 0.2, 0.6, 0.1, 0.3, -0.2])
    issame = np.array([True, False] * 4)
    accuracy, threshold = evals.best_threshold_accuracy(similarities, issame)
    assert accuracy == pytest.approx(7 / 8) and threshold == pytest.approx(0.2)


def original_top10_accuracy(similarities, issame):
    """The original Keras_insightface eval_callback: thresholds only among the top 10% of negative scores."""
    tt, ff = np.sort(similarities[issame]), np.sort(similarities[~issame])
    t_steps = int(0.1 * ff.shape[0])
    return max((tt > vv).sum() + (ff <= vv).sum() for vv in ff[-t_steps:]) / len(similarities)


def test_best_threshold_accuracy_is_exhaustive_unlike_the_original_top_10_percent():
    rng = np.random.default_rng(5)
    issame = np.arange(400) % 2 == 0
    similarities = rng.normal(size=400) * 0.2 + 0.25 * issame  # a weak model: the best threshold is a low one
    brute = max(np.mean((similarities > t) == issame) for t in np.append(similarities, -np.inf))
    accuracy, threshold = evals.best_threshold_accuracy(similarities, issame)
    assert accuracy == pytest.approx(brute) and np.mean((similarities > threshold) == issame) == pytest.approx(brute)
    assert original_top10_accuracy(similarities, issame) < accuracy - 0.01  # the original reports a lower maximum


def test_best_threshold_accuracy_when_all_pairs_same():
    accuracy, threshold = evals.best_threshold_accuracy(np.array([0.5, -0.5]), np.array([True, True]))
    assert accuracy == 1.0 and threshold < -0.5


def separable_case():
    """20 pairs alternating same / different: same pairs at distance 0.255, different ones at 2.0055."""
    issame = np.array([True, False] * 10)
    distances = np.where(issame, 0.255, 2.0055)
    return distances, issame


def test_evaluate_perfectly_separable():
    distances, issame = separable_case()
    tpr, fpr, accuracy, val, val_std, far = evals.evaluate(pair_embeddings(cosine_for_distance(distances)), issame)
    thresholds = np.arange(0, 4, 0.01)
    np.testing.assert_array_equal(accuracy, np.ones(10))
    np.testing.assert_array_equal(tpr, (thresholds > 0.255).astype(float))
    np.testing.assert_array_equal(fpr, (thresholds > 2.0055).astype(float))
    assert (val, val_std, far) == (1.0, 0.0, 0.0)


def test_evaluate_single_error():
    # Pair 0 (fold 0's test set) is a same pair at distance 3.0: every fold learns a threshold in
    # (0.255, 2.0055], so fold 0 scores 1 / 2 and the nine others 2 / 2.
    distances, issame = separable_case()
    distances[0] = 3.0
    tpr, fpr, accuracy, val, val_std, far = evals.evaluate(pair_embeddings(cosine_for_distance(distances)), issame)
    np.testing.assert_allclose(accuracy, [0.5] + [1.0] * 9)
    assert accuracy.mean() == pytest.approx(0.95) and accuracy.std() == pytest.approx(0.15)
    thresholds = np.arange(0, 4, 0.01)
    # tpr averages folds: fold 0's only same pair is accepted above 3.0, the others' above 0.255.
    expected_tpr = np.where(thresholds > 3.0, 1.0, np.where(thresholds > 0.255, 0.9, 0.0))
    np.testing.assert_allclose(tpr, expected_tpr)
    np.testing.assert_allclose(fpr, (thresholds > 2.0055).astype(float))
    # VAL@FAR=1e-3: threshold just above 2.005 on every fold; fold 0's same pair is not accepted.
    assert val == pytest.approx(0.9) and val_std == pytest.approx(0.3) and far == 0.0


def test_evaluate_val_threshold_interpolated_between_far_steps():
    # 40 pairs, 4 folds of 10, each fold holding different pairs at 1.2005, 1.5005, ..., 2.4005 and same
    # pairs at 0.4, 1.0, 1.3, 1.2003, 0.2. On 15 training different pairs the FAR is 0 up to threshold 1.200
    # and 3 / 15 from 1.201: FAR 1e-3 interpolates to 1.200 + 0.001 * (1e-3 / 0.2) = 1.200005, which
    # accepts 0.4, 1.0 and 0.2 (VAL 3 / 5 on every test fold) and no different pair.
    issame = np.array([True, False] * 20)
    distances = np.empty(40)
    distances[~issame] = 1.2005 + 0.3 * (np.arange(20) % 5)
    distances[issame] = np.tile([0.4, 1.0, 1.3, 1.2003, 0.2], 4)
    _, _, _, val, val_std, far = evals.evaluate(pair_embeddings(cosine_for_distance(distances)), issame, nrof_folds=4)
    assert val == pytest.approx(0.6) and val_std == pytest.approx(0.0) and far == 0.0


def test_evaluate_pca_fit_on_train_folds():
    """pca=k: project with the train folds' top-k principal axes (SVD written here), normalize, then score."""
    rng = np.random.default_rng(3)
    issame = np.array([True, False] * 15)
    base = rng.normal(size=(30, 6))
    partner = np.where(issame[:, None], base + 0.3 * rng.normal(size=(30, 6)), rng.normal(size=(30, 6)))
    embeddings = np.stack([base, partner], axis=1).reshape(-1, 6)
    thresholds = np.arange(0, 4, 0.01)
    expected = []
    for fold in range(3):
        test = np.arange(fold * 10, fold * 10 + 10)
        train = np.setdiff1d(np.arange(30), test)
        fit_rows = np.concatenate([embeddings[0::2][train], embeddings[1::2][train]])
        mean = fit_rows.mean(0)
        axes = np.linalg.svd(fit_rows - mean, full_matrices=False)[2][:2]
        projected = [(xx - mean) @ axes.T for xx in (embeddings[0::2], embeddings[1::2])]
        first, second = [pp / np.linalg.norm(pp, axis=1, keepdims=True) for pp in projected]
        dist = np.sum((first - second) ** 2, 1)
        train_acc = [np.mean((dist[train] < tt) == issame[train]) for tt in thresholds]
        best = thresholds[int(np.argmax(train_acc))]
        expected.append(np.mean((dist[test] < best) == issame[test]))
    accuracy = evals.evaluate(embeddings, issame, nrof_folds=3, pca=2)[2]
    np.testing.assert_allclose(accuracy, expected)


def test_evaluate_too_few_pairs():
    with pytest.raises(ValueError, match="3 pairs cannot be split into nrof_folds=10"):
        evals.evaluate(pair_embeddings([0.5, 0.1, 0.2]), [True, False, True])


@pytest.mark.parametrize("same", [True, False])
def test_evaluate_refuses_pairs_of_one_kind(same):
    """With one kind of pair any threshold beyond all distances scores 1.0 (the original reported 0.900 +- 0.300)."""
    cosines = np.linspace(-0.9, 0.9, 20)
    with pytest.raises(ValueError, match="evaluate: {} same-person and {} different-person pairs; a verification score needs both".format(
            20 if same else 0, 0 if same else 20)):
        evals.evaluate(pair_embeddings(cosines), [same] * 20)


# ---------------------------------------------------------------- eval_callback

LINE = r">>>> {} evaluation max accuracy: (\d\.\d{{6}}), thresh: (-?\d\.\d{{6}}), previous max accuracy: (\d\.\d{{6}})"


def small_bin(tmp_path, pairs=6, size=8, seed=4):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(2 * pairs, size, size, 3), dtype=np.uint8)
    issame = [bool(ii % 2 == 0) for ii in range(pairs)]
    return write_bin(tmp_path / "tiny_set.bin", images, issame)


def test_callback_end_to_end_on_lfw(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = keras.Sequential(
        [keras.Input((112, 112, 3)), keras.layers.AveragePooling2D(14), keras.layers.Flatten(), keras.layers.Dense(8)]
    )
    kernel, bias = model.layers[-1].get_weights()
    ee = evals.eval_callback(model, os.path.join(DATA, "lfw.bin"), batch_size=16, save_model="tiny", PCA_acc=True)
    assert ee.test_names == "lfw" and ee.max_accuracy == 0.0 and ee.basic_model is model
    ee.on_epoch_end(0)

    # independent NumPy: decode with cv2, 14x14 average pooling, dense, flip sum, cosine, brute-force threshold
    with open(os.path.join(DATA, "lfw.bin"), "rb") as ff:
        raw = pickle.load(ff, encoding="bytes")[0]
    images = np.stack([cv2_rgb(ii) for ii in raw]).astype("float64")

    def pooled(batch):
        return ((batch - 127.5) / 128).reshape(-1, 8, 14, 8, 14, 3).mean((2, 4)).reshape(len(batch), -1)

    emb = pooled(images) @ kernel + bias + pooled(images[:, :, ::-1]) @ kernel + bias
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    similarities = np.sum(emb[0::2] * emb[1::2], 1)
    issame = np.array(expected_issame("lfw"))
    expected_acc = brute_force_best_accuracy(similarities, issame)

    out = capsys.readouterr().out
    match = re.search(LINE.format("lfw") + r", PCA accuray = (\d\.\d{6}) ± (\d\.\d{6})\n", out)
    assert match, out
    assert float(match.group(1)) == pytest.approx(expected_acc, abs=1e-6) and ee.cur_acc == pytest.approx(expected_acc)
    assert float(match.group(3)) == 0.0
    # acc_thresh is a similarity of the data (float32 run): step just past it for the float64 NumPy values
    assert np.mean((similarities > ee.acc_thresh + 1e-5) == issame) == pytest.approx(expected_acc)
    assert "\n>>>> Improved = {:f}\n".format(expected_acc) in out and ee.is_improved
    saved = "checkpoints/tiny_basic_lfw_epoch_1_{:f}.h5".format(expected_acc)
    assert os.listdir("checkpoints") == [os.path.basename(saved)]
    reloaded = keras.models.load_model(saved, compile=False)
    np.testing.assert_allclose(reloaded.layers[-1].get_weights()[0], kernel)


def test_callback_improvement_and_best_only_saving(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, _, _ = dense_model(8)
    ee = evals.eval_callback(model, small_bin(tmp_path), batch_size=4, save_model="run")
    assert ee.test_names == "tiny_set"
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "run_basic_tiny_set_epoch_notes.h5").write_bytes(b"keep")  # not a checkpoint name

    ee.on_epoch_end(0)
    first = ee.cur_acc
    ee.max_accuracy = first + 0.01  # pretend a better earlier result: the next equal score is no improvement
    ee.on_epoch_end(1)
    out = capsys.readouterr().out
    assert not ee.is_improved and out.count(">>>> Improved") == 1
    assert "previous max accuracy: {:f}".format(first + 0.01) in out
    ee.max_accuracy = first  # a tie counts as an improvement and replaces the previous best file
    ee.on_epoch_end(2)
    assert ee.is_improved
    assert sorted(os.listdir("checkpoints")) == [
        "run_basic_tiny_set_epoch_3_{:f}.h5".format(first),
        "run_basic_tiny_set_epoch_notes.h5",
    ]


def test_callback_eval_freq_during_fit(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    basic_model, _, _ = dense_model(8)
    model = keras.Sequential([basic_model, keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")  # lr 0: the score stays the same
    ee = evals.eval_callback(basic_model, small_bin(tmp_path), batch_size=4, save_model="run", eval_freq=2)
    x, y = np.zeros((10, 8, 8, 3), "float32"), np.zeros((10, 3), "float32")
    model.fit(x, y, batch_size=2, epochs=2, verbose=0, callbacks=[ee])  # 5 batches per epoch
    out = capsys.readouterr().out
    assert len(re.findall(LINE.format("tiny_set"), out)) == 2 * (2 + 1)  # batches 2 and 4, plus epoch end
    saves = re.findall(r">>>> Saving model to: checkpoints/(\S+)\n", out)
    acc = "{:f}".format(ee.cur_acc)
    steps = ["1_batch_2", "1_batch_4", "1", "2_batch_2", "2_batch_4", "2"]
    assert saves == ["run_basic_tiny_set_epoch_{}_{}.h5".format(ss, acc) for ss in steps]
    assert os.listdir("checkpoints") == [saves[-1]]


def test_callback_without_flip_matches_numpy(tmp_path):
    model, kernel, bias = dense_model(8, seed=5)
    path = small_bin(tmp_path, pairs=10, seed=6)
    ee = evals.eval_callback(model, path, batch_size=3, flip=False)
    ee.on_epoch_end(0)
    images, issame = face_io.load_bin(path, image_size=(8, 8))
    emb = numpy_embeddings(images, kernel, bias, flip=False)
    np.testing.assert_allclose(ee.embs, emb, atol=1e-5)
    assert ee.cur_acc == pytest.approx(brute_force_best_accuracy(np.sum(emb[0::2] * emb[1::2], 1), issame))


def test_callback_under_mirrored_strategy(tmp_path):
    """A basic model built in a 2-replica MirroredStrategy scope is evaluated inside fit (own process: device setup)."""
    path = small_bin(tmp_path, pairs=10, seed=7)
    script = textwrap.dedent(
        """
        import json, os, sys
        sys.path.insert(0, {repo!r})
        import numpy as np, tensorflow as tf, keras
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from keras_insightface import evals
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            basic = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(4)])
            model = keras.Sequential([basic, keras.layers.Dense(2)])
            model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
        ee = evals.eval_callback(basic, {path!r}, batch_size=4)
        model.fit(np.zeros((8, 8, 8, 3)), np.zeros((8, 2)), batch_size=4, epochs=1, verbose=0, callbacks=[ee])
        kernel, bias = [ww.tolist() for ww in basic.get_weights()]
        print("RESULT " + json.dumps(dict(acc=ee.cur_acc, kernel=kernel, bias=bias, replicas=strategy.num_replicas_in_sync)))
        """
    ).format(repo=REPO, path=path)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1", TF_CPP_MIN_LOG_LEVEL="2")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT ")[-1])
    assert result["replicas"] == 2
    images, issame = face_io.load_bin(path, image_size=(8, 8))
    emb = numpy_embeddings(images, np.array(result["kernel"]), np.array(result["bias"]))
    expected = brute_force_best_accuracy(np.sum(emb[0::2] * emb[1::2], 1), issame)
    assert result["acc"] == pytest.approx(expected)


@pytest.mark.parametrize("same", [True, False])
def test_callback_refuses_a_bin_of_one_pair_kind_at_load_time(tmp_path, same):
    images = np.random.default_rng(9).integers(0, 256, size=(12, 8, 8, 3), dtype=np.uint8)
    path = write_bin(tmp_path / "one_kind.bin", images, [same] * 6)
    model, _, _ = dense_model(8)
    counts = "6 same-person and 0 different-person" if same else "0 same-person and 6 different-person"
    with pytest.raises(ValueError, match=re.escape(path) + ": " + counts + " pairs; a verification score needs both kinds"):
        evals.eval_callback(model, path, batch_size=4)
    with pytest.raises(ValueError, match=re.escape(path) + ": " + counts):  # export checks its parity pairs before converting
        export._verification_inputs(None, path, 4, (8, 8))
