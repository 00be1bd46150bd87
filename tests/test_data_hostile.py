"""data.py on hostile input: npz files with labels that are no class ids, unreadable or object arrays, NaN teacher
embeddings; distiller tfrecords whose sidecar disagrees with their records; class folders beyond int32.

Every case is a ValueError naming the file (or folder) and an example, before any training step; nothing is rounded,
wrapped or dropped silently.
"""
import json
import os
import re

import numpy as np
import pytest

from keras_insightface import data, tfrecords
from tests.test_data import SIZE, embedding_dataset_files, make_gray_folder, write_tfrecord


def npz_with(tmp_path, name="hostile.npz", **changes):
    """An npz of the 6-image embedding dataset, its arrays replaced by `changes` (None drops one)."""
    names, classes, embeddings = embedding_dataset_files(tmp_path)
    arrays = dict(image_names=names, image_classes=classes, embeddings=embeddings)
    arrays.update(changes)
    path = str(tmp_path / name)
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})
    return path


def refused(path, message, **kwargs):
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": " + message):
        data.prepare_dataset(path, batch_size=2, img_shape=SIZE, **kwargs)


# ---- npz labels ----------------------------------------------------------------------------------------------------


def test_fractional_labels_are_refused_not_truncated(tmp_path):
    path = npz_with(tmp_path, image_classes=np.array([0, 0.5, 0, 1, 1, 1.75]))
    refused(path, r"image_classes holds 2 value\(s\) that are not whole numbers \(e.g. 0.5 at index 1\)")


def test_whole_float_labels_are_class_ids(tmp_path):
    path = npz_with(tmp_path, image_classes=np.array([0.0, 0, 0, 1, 1, 1]))
    names, classes, _, num_classes = data.pre_process_folder(path)
    assert classes.dtype == np.int64 and classes.tolist() == [0, 0, 0, 1, 1, 1] and num_classes == 2


@pytest.mark.parametrize("labels, message", [
    (np.array([0, 0, np.nan, 1, 1, 1]), r"image_classes holds 1 value\(s\) that are not whole numbers \(e.g. nan at index 2\)"),
    (np.array([True, False, True, False, True, False]), r"image_classes of dtype bool and shape \(6,\); expected a 1-D array of integer class ids"),
    (np.array(["0", "0", "0", "1", "1", "1"]), r"image_classes of dtype <U1"),
    (np.zeros((6, 2), dtype=np.int64), r"image_classes of dtype int64 and shape \(6, 2\)"),
    (np.array([0, 0, 0, 1, 1, 2**31]), r"image_classes holds class id 2147483648 \(at index 5\), beyond the int32 class ids"),
    (np.array([0, 0, 0, 1, 1, 2**63], dtype=np.uint64), r"image_classes holds class id 9223372036854775808"),
], ids=["nan", "bool", "text", "2d", "beyond_int32", "uint64"])
def test_labels_that_are_no_class_ids_are_refused(tmp_path, labels, message):
    refused(npz_with(tmp_path, image_classes=labels), message)


def test_image_class_rule_labels_are_checked_too(tmp_path):
    root = str(tmp_path / "ruled")
    make_gray_folder(root, {"x": 2, "y": 2})
    with pytest.raises(ValueError, match=re.escape(root) + r": image_classes_rule's labels holds 2 value\(s\) that are not whole numbers"):
        data.pre_process_folder(root, image_classes_rule=lambda path: 2.5 if "/y/" in path else 1)


def test_integer_folder_name_beyond_int32_is_named(tmp_path):
    root = tmp_path / "ids"
    make_gray_folder(str(root), {"0": 1, "3000000000": 1})
    with pytest.raises(ValueError, match=re.escape(str(root)) + r": class folder '3000000000' names class 3000000000, beyond the int32"):
        data.prepare_dataset(str(root), batch_size=1, img_shape=SIZE)


# ---- npz files that are no npz of this layout -------------------------------------------------------------------


def test_object_array_is_refused_in_one_line(tmp_path):
    path = npz_with(tmp_path, image_names=np.array([object()] * 6, dtype=object))
    refused(path, r"not a readable .npz of image_names, image_classes\[, embeddings\] \(Object arrays cannot be loaded")


@pytest.mark.parametrize("content", ["random", "npy", "truncated"])
def test_file_that_is_no_npz_is_refused_in_one_line(tmp_path, content):
    path = tmp_path / "broken.npz"
    if content == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    elif content == "npy":
        with open(path, "wb") as ff:
            np.save(ff, np.arange(6))
    else:
        whole = open(npz_with(tmp_path), "rb").read()
        path.write_bytes(whole[: len(whole) // 2])
    refused(str(path), r"(not a readable .npz of image_names, image_classes\[, embeddings\] \(.+\)|holds a single .npy array; expected an .npz)")


def test_numeric_image_names_are_refused(tmp_path):
    refused(npz_with(tmp_path, image_names=np.arange(6)), r"image_names of dtype int64 and shape \(6,\); expected a 1-D array of path strings")


# ---- teacher embeddings -------------------------------------------------------------------------------------------------


def test_nan_teacher_embedding_in_an_npz_is_refused(tmp_path):
    _, _, embeddings = embedding_dataset_files(tmp_path)
    embeddings = embeddings.copy()
    embeddings[2, 5], embeddings[4, 0] = np.nan, np.inf
    refused(npz_with(tmp_path, embeddings=embeddings), r"2 teacher embedding row\(s\) hold NaN or inf \(first: row 2\)")


def test_integer_teacher_embeddings_are_refused(tmp_path):
    refused(npz_with(tmp_path, embeddings=np.ones((6, 8), dtype=np.int32)), r"embeddings of dtype int32; expected float teacher embeddings")


def distiller_tfrecord(tmp_path, embeddings=None, sidecar=None, classes=None):
    names, default_classes, default_embeddings = embedding_dataset_files(tmp_path)
    path = str(tmp_path / "embs.tfrecord")
    write_tfrecord(path, names, default_classes if classes is None else classes, default_embeddings if embeddings is None else embeddings)
    info = {"num_classes": 2, "total_images": 6, "emb_shape": 8, "dtype": "float16"}
    info.update(sidecar or {})
    with open(path + ".json", "w") as ff:
        ff.write(info if isinstance(info, str) else json.dumps(info))
    return path


def test_sound_distiller_tfrecord_passes_the_check(tmp_path):
    ds, steps = data.prepare_dataset(distiller_tfrecord(tmp_path), batch_size=3, img_shape=SIZE, seed=0)
    assert steps == 2 and sum(len(labels) for _, (labels, _) in ds) == 6


@pytest.mark.parametrize("emb_shape", [4, 16])
def test_sidecar_with_the_wrong_embedding_size_is_named_before_training(tmp_path, emb_shape):
    path = distiller_tfrecord(tmp_path, sidecar={"emb_shape": emb_shape})
    refused(path, r"record 0 holds an embedding of 16 bytes, but {} says emb_shape {} of float16: {} bytes".format(
        re.escape(path + ".json"), emb_shape, 2 * emb_shape))


def test_sidecar_with_the_wrong_dtype_is_named(tmp_path):
    path = distiller_tfrecord(tmp_path, sidecar={"dtype": "float32"})
    refused(path, r"record 0 holds an embedding of 16 bytes, but .*json says emb_shape 8 of float32: 32 bytes")


def test_nan_teacher_embedding_in_a_tfrecord_is_refused(tmp_path):
    _, _, embeddings = embedding_dataset_files(tmp_path)
    embeddings = embeddings.copy()
    embeddings[3, 1] = np.nan
    refused(distiller_tfrecord(tmp_path, embeddings=embeddings), r"the teacher embedding of record 3 holds NaN or inf")


def test_tfrecord_count_and_labels_must_match_the_sidecar(tmp_path):
    path = distiller_tfrecord(tmp_path, sidecar={"total_images": 8})
    refused(path, r"holds 6 records, but .*json says total_images 8")
    (tmp_path / "second").mkdir()
    path = distiller_tfrecord(tmp_path / "second", classes=np.array([0, 0, 0, 1, 1, 2]))
    refused(path, r"record 5 has class 2, outside the num_classes 2 that .*json states")


@pytest.mark.parametrize("sidecar, message", [
    ("{not json", r"not a readable JSON description"),
    ({"emb_shape": "8"}, r"expected positive integers num_classes, total_images, emb_shape"),
    ({"num_classes": 0}, r"expected positive integers"),
])
def test_malformed_sidecar_is_named(tmp_path, sidecar, message):
    path = distiller_tfrecord(tmp_path, sidecar=sidecar if isinstance(sidecar, dict) else None)
    if isinstance(sidecar, str):
        with open(path + ".json", "w") as ff:
            ff.write(sidecar)
    with pytest.raises(ValueError, match=re.escape(path + ".json") + ": " + message):
        data.prepare_dataset(path, batch_size=2, img_shape=SIZE)


def test_corrupt_tfrecord_is_named(tmp_path):
    path = distiller_tfrecord(tmp_path)
    whole = open(path, "rb").read()
    with open(path, "wb") as ff:
        ff.write(whole[:40] + bytes(8) + whole[48:])
    refused(path, r"not a readable distiller tfrecord near record 0")


def test_records_are_checked_once_per_file_version(tmp_path, monkeypatch):
    path = distiller_tfrecord(tmp_path)
    checked = []
    real_check = tfrecords._check_record_batch
    monkeypatch.setattr(tfrecords, "_check_record_batch", lambda *args: checked.append(1) or real_check(*args))
    for _ in range(2):
        data.prepare_dataset(path, batch_size=2, img_shape=SIZE)
    assert len(checked) == 1  # one batch of 6 records, read by the first call only
    os.utime(path, ns=(0, 0))  # another version of the file: checked again
    data.prepare_dataset(path, batch_size=2, img_shape=SIZE)
    assert len(checked) == 2
