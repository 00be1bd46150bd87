"""Tests of data.py: folder / npz / tfrecord inputs, scan cache, augmentation levels, skipping, triplet batches.

Images are tiny PNGs (lossless, so expected pixels are known exactly) or JPEGs written with OpenCV. Most images are
one flat gray value that encodes an id, so an image can be recognized after shuffling: value = 10 * id + 5.
"""
import json
import os
import re

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_insightface import data, face_io
from tests.helpers import GRAY_SIZE, make_gray_folder, write_gray, write_image

SIZE = GRAY_SIZE  # the gray images, read back at their own size


def pixel_of(images):
    """Un-normalize the first pixel of each image (independent of face_io.normalize): x / 0.0078125 + 127.5."""
    return np.asarray(images)[:, 0, 0, 0] / 0.0078125 + 127.5


def ids_of(images):
    return np.round((pixel_of(images) - 5) / 10).astype(int)


def all_batches(ds):
    return [(np.asarray(xx), yy) for xx, yy in ds]


# ---------------------------------------------------------------- labels and scanning
def test_integer_folders_map_to_their_integers(tmp_path):
    root = str(tmp_path / "ints")
    ids = make_gray_folder(root, {"0": 2, "2": 2, "10": 2})
    ds, steps = data.prepare_dataset(root, batch_size=3, img_shape=SIZE, seed=1)
    assert steps == 2
    seen = 0
    for images, labels in ds:
        labels = np.asarray(labels)
        assert labels.shape == (3,) and labels.dtype == np.int32
        expected = [int(ids[image_id]) for image_id in ids_of(images)]
        np.testing.assert_array_equal(labels, expected)
        seen += len(labels)
    assert seen == 6


def test_named_folders_map_in_sorted_order(tmp_path):
    root = str(tmp_path / "names")
    make_gray_folder(root, {"carol": 1, "alice": 2, "bob": 1})
    names, classes, embeddings, num_classes = data.pre_process_folder(root)
    assert num_classes == 3 and embeddings is None
    expected = {"alice": 0, "bob": 1, "carol": 2}
    assert [expected[os.path.basename(os.path.dirname(name))] for name in names] == classes.tolist()
    assert classes.dtype == np.int64


def test_non_image_files_ignored_and_extensions_case_insensitive(tmp_path):
    root = tmp_path / "mixed"
    make_gray_folder(str(root), {"0": 2})
    write_gray(str(root / "0" / "UPPER.JPG"), 50)
    (root / "0" / "notes.txt").write_text("not an image")
    (root / "0" / "Thumbs.db").write_bytes(b"\x00" * 10)
    (root / "0" / "sub").mkdir()
    (root / "readme.md").write_text("top level file")
    names, classes, _, num_classes = data.pre_process_folder(str(root))
    assert sorted(os.path.basename(name) for name in names) == ["0.png", "1.png", "UPPER.JPG"]
    assert num_classes == 1


def test_empty_class_folder_warns_and_is_skipped(tmp_path):
    root = tmp_path / "with_empty"
    make_gray_folder(str(root), {"a": 1, "c": 1})
    (root / "b").mkdir()
    (root / "b" / "list.txt").write_text("no images here")
    with pytest.warns(UserWarning, match="without images: b"):
        names, classes, _, num_classes = data.pre_process_folder(str(root))
    assert num_classes == 2 and classes.tolist() == [0, 1]


def test_no_classes_is_an_error_naming_the_path(tmp_path):
    root = tmp_path / "nothing"
    (root / "a").mkdir(parents=True)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=re.escape(str(root))):
        data.pre_process_folder(str(root))
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        data.pre_process_folder(str(tmp_path / "missing_dir"))


def test_scan_cache_created_reused_and_rebuilt(tmp_path, monkeypatch):
    root = str(tmp_path / "cached") + os.sep
    make_gray_folder(root, {"0": 2, "1": 1})
    calls = []
    real_scan = data._scan_folder
    monkeypatch.setattr(data, "_scan_folder", lambda path: calls.append(path) or real_scan(path))

    names, classes, _, _ = data.pre_process_folder(root)
    cache_file = str(tmp_path / "cached_shuffle.npz")
    assert os.path.isfile(cache_file) and len(calls) == 1
    with np.load(cache_file) as cached:  # the npz format shared with the cleaning / distilling tools
        assert sorted(cached["image_names"].tolist()) == sorted(names.tolist())
        assert cached["image_classes"].tolist() == classes.tolist()

    names_again, classes_again, _, _ = data.pre_process_folder(root)
    assert len(calls) == 1, "a second start must not walk the tree again"
    assert names_again.tolist() == names.tolist() and classes_again.tolist() == classes.tolist()

    write_gray(os.path.join(root, "1", "new.png"), 77)
    names_new, classes_new, _, _ = data.pre_process_folder(root)
    assert len(calls) == 2 and len(names_new) == 4 and sorted(classes_new.tolist()) == [0, 0, 1, 1]


def test_unwritable_cache_location_warns_and_goes_on(tmp_path, monkeypatch):
    root = str(tmp_path / "readonly")
    make_gray_folder(root, {"0": 1})

    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(data, "atomic_path", refuse)
    with pytest.warns(UserWarning, match="cannot write the folder scan cache"):
        names, _, _, _ = data.pre_process_folder(root)
    assert len(names) == 1 and not os.path.exists(root + "_shuffle.npz")


# ---------------------------------------------------------------- pixels and augmentation
def test_normalized_pixels_match_the_file(tmp_path):
    root = str(tmp_path / "pixels")
    rng = np.random.default_rng(0)
    expected = []
    for ii in range(3):
        pixels = rng.integers(0, 256, size=SIZE + (3,), dtype=np.uint8)
        write_image(os.path.join(root, "0", "{}.png".format(ii)), pixels)
        expected.append((pixels.astype(np.float64) - 127.5) / 128.0)
    ds, steps = data.prepare_dataset(root, batch_size=2, img_shape=SIZE, is_train=False)
    images = np.concatenate([np.asarray(xx) for xx, _ in ds])
    assert steps == 2 and images.dtype == np.float32
    np.testing.assert_allclose(images, np.stack(expected), atol=1e-6)


def test_images_resized_to_img_shape(tmp_path):
    root = str(tmp_path / "resize")
    write_gray(os.path.join(root, "0", "a.png"), 200, size=(40, 30))
    write_gray(os.path.join(root, "0", "b.png"), 200, size=SIZE)
    ds, _ = data.prepare_dataset(root, batch_size=2, img_shape=SIZE, is_train=False)
    images = np.asarray(next(iter(ds))[0])
    assert images.shape == (2,) + SIZE + (3,)
    np.testing.assert_allclose(images, (200 - 127.5) / 128.0, atol=1e-6)


def test_normalize_formula():
    pixels = np.array([[0, 127.5, 255]], dtype=np.float32)
    np.testing.assert_allclose(face_io.normalize(np.array([0, 128, 255], dtype=np.uint8)), [-127.5 / 128, 0.5 / 128, 127.5 / 128])
    np.testing.assert_allclose(np.asarray(face_io.normalize(tf.constant(pixels))), [[-0.99609375, 0.0, 0.99609375]])


def half_image_folder(root, count, left, right):
    """Images whose left half is `left` and right half `right` (gray), alternating between classes 0 and 1."""
    pixels = np.empty(SIZE + (3,), dtype=np.uint8)
    pixels[:, : SIZE[1] // 2], pixels[:, SIZE[1] // 2 :] = left, right
    for ii in range(count):
        write_image(os.path.join(root, str(ii % 2), "{}.png".format(ii)), pixels)


def test_random_status_0_flips_about_half(tmp_path):
    root = str(tmp_path / "flip")
    half_image_folder(root, 32, 0, 255)
    ds, _ = data.prepare_dataset(root, batch_size=32, img_shape=SIZE, random_status=0, seed=3)
    images = np.concatenate([xx for _ in range(4) for xx, _ in all_batches(ds)])  # 128 samples over 4 epochs
    left = images[:, :, : SIZE[1] // 2].mean(axis=(1, 2, 3))
    right = images[:, :, SIZE[1] // 2 :].mean(axis=(1, 2, 3))
    flipped = left > right
    np.testing.assert_allclose(np.abs(left - right), 255 / 128.0, atol=1e-5)  # exactly mirrored, nothing else changed
    assert 0.3 < flipped.mean() < 0.7


def test_random_status_1_brightness_statistics(tmp_path):
    root = str(tmp_path / "bright_flat")
    for ii in range(32):
        write_gray(os.path.join(root, str(ii % 2), "{}.png".format(ii)), 128)
    ds, _ = data.prepare_dataset(root, batch_size=32, img_shape=SIZE, random_status=1, seed=5)
    images = np.concatenate([xx for _ in range(4) for xx, _ in all_batches(ds)])
    values = images / 0.0078125 + 127.5
    shifts = values[:, 0, 0, 0] - 128
    assert np.allclose(values, values[:, :1, :1, :1], atol=1e-3), "one brightness shift per image"
    assert np.all(np.abs(shifts) <= 12.75 + 1e-3)
    assert 12.75 / np.sqrt(3) * 0.6 < shifts.std() < 12.75 / np.sqrt(3) * 1.4  # uniform(-12.75, 12.75)
    assert np.abs(shifts).max() > 8


def test_random_status_2_contrast_range(tmp_path):
    root = str(tmp_path / "contrast")
    half_image_folder(root, 32, 100, 156)  # gray halves: saturation has no effect, contrast scales the 56 gap
    ds, _ = data.prepare_dataset(root, batch_size=32, img_shape=SIZE, random_status=2, seed=7)
    images = np.concatenate([xx for _ in range(3) for xx, _ in all_batches(ds)]) / 0.0078125
    gap = np.abs(images[:, :, SIZE[1] // 2 :].mean(axis=(1, 2, 3)) - images[:, :, : SIZE[1] // 2].mean(axis=(1, 2, 3)))
    factor = gap / 56.0
    assert np.all((factor > 0.8 - 1e-3) & (factor < 1.2 + 1e-3))
    assert factor.std() > 0.05


def test_random_crop_keeps_shape(tmp_path):
    root = str(tmp_path / "crop")
    half_image_folder(root, 8, 0, 255)
    ds, _ = data.prepare_dataset(root, batch_size=8, img_shape=SIZE, random_status=3, random_crop=(12, 12, 3), seed=1)
    images = np.asarray(next(iter(ds))[0])
    assert images.shape == (8,) + SIZE + (3,) and images.min() >= -1 and images.max() <= 1


def test_random_crop_resize_takes_a_window_of_the_crop_size():
    """On a horizontal ramp I[y, x] = x, a w-wide window starting at column l, resized back to W columns with
    corner-aligned bilinear sampling, reads l + j * (w - 1) / (W - 1) in column j: linear, exact."""
    ramp = np.broadcast_to(np.arange(112, dtype="float32")[None, :, None, None], (112, 112, 3, 1)).transpose(3, 0, 1, 2)
    images = tf.constant(np.repeat(ramp, 6, axis=0))
    out = data._random_crop_resize(images, tf.constant([3, 4]), (100, 100, 3)).numpy()
    offsets = out[:, 0, 0, 0]
    assert np.all(offsets == np.round(offsets)) and offsets.min() >= 0 and offsets.max() <= 12
    expected = offsets[:, None] + np.arange(112)[None, :] * 99 / 111
    np.testing.assert_allclose(out[:, 50, :, 1], expected, atol=1e-3)


def test_random_status_3_crops_100x100_by_default_like_the_original(tmp_path, monkeypatch):
    """The original Keras_insightface: RandomProcessImage(random_crop=(100, 100, 3)) crops at random_status >= 3."""
    import inspect

    from keras_insightface import train

    assert inspect.signature(data.prepare_dataset_and_classes).parameters["random_crop"].default == (100, 100, 3)
    assert inspect.signature(train.Train).parameters["random_crop"].default == (100, 100, 3)
    calls = []
    monkeypatch.setattr(data, "_random_crop_resize", lambda images, seed, crop, rows=None: calls.append(crop) or tf.cast(images, tf.float32))
    root = str(tmp_path / "crop_default")
    half_image_folder(root, 8, 0, 255)
    for status in (2, 3, 100):
        data.prepare_dataset(root, batch_size=8, img_shape=SIZE, random_status=status, seed=1)
    assert calls == [(100, 100, 3)]  # traced once, for random_status 3 only (the original's RandAugment path does not crop)
    with pytest.raises(ValueError, match="random_crop"):
        monkeypatch.undo()
        data.prepare_dataset(root, batch_size=8, img_shape=SIZE, random_status=3, seed=1)


# ---------------------------------------------------------------- errors and skipping
def test_corrupt_images_are_skipped_and_counted(tmp_path, capfd):
    root = tmp_path / "corrupt"
    make_gray_folder(str(root), {"0": 5, "1": 5}, ext=".jpg")
    good = (root / "0" / "0.jpg").read_bytes()
    (root / "0" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "1" / "garbage.jpg").write_bytes(b"this is not a jpeg" * 20)
    ds, steps = data.prepare_dataset(str(root), batch_size=4, img_shape=SIZE, is_train=False)
    sizes = [len(xx) for xx, _ in ds]
    assert steps == 3 and sum(sizes) == 10
    err = capfd.readouterr().err
    counts = [int(nn) for nn in re.findall(r"skipped (\d+) unreadable", err)]
    assert sum(counts) == 2, err

    ds, _ = data.prepare_dataset(str(root), batch_size=4, img_shape=SIZE, random_status=0, seed=2)
    assert sum(len(xx) for xx, _ in ds) == 8, "the training epoch goes on with full batches"
    totals = [int(nn) for nn in re.findall(r"in this epoch so far: (\d+)", capfd.readouterr().err)]
    assert totals and max(totals) == 2


def test_fewer_images_than_a_batch_is_an_error(tmp_path):
    root = str(tmp_path / "few")
    make_gray_folder(root, {"0": 2, "1": 1})
    with pytest.raises(ValueError, match="fewer than one batch"):
        data.prepare_dataset(root, batch_size=4, img_shape=SIZE)


# ---------------------------------------------------------------- triplet mode
def test_triplet_batches_hold_whole_groups(tmp_path):
    root = str(tmp_path / "triplet")
    counts = {"0": 5, "1": 4, "2": 3, "3": 2, "4": 1, "5": 4}
    ids = make_gray_folder(root, counts)
    ds, steps = data.prepare_dataset(root, batch_size=4, img_shape=SIZE, image_per_class=2, random_status=0, seed=4)
    expected_groups = sum(count // 2 for count in counts.values())  # 2 + 2 + 1 + 1 + 0 + 2 = 8
    assert steps == expected_groups // 2
    for _ in range(2):
        group_classes = []
        for images, labels in ds:
            image_ids, labels = ids_of(images), np.asarray(labels)
            np.testing.assert_array_equal(labels, [int(ids[ii]) for ii in image_ids])
            pairs = image_ids.reshape(-1, 2)
            assert all(ids[aa] == ids[bb] and aa != bb for aa, bb in pairs), pairs
            group_classes.extend(int(ids[aa]) for aa, _ in pairs)
        assert len(group_classes) == expected_groups
        assert 4 not in group_classes, "a class with fewer than K images is left out"
        assert sorted(group_classes) == [0, 0, 1, 1, 2, 3, 5, 5]


def test_triplet_batch_size_must_divide(tmp_path):
    root = str(tmp_path / "triplet_bad")
    make_gray_folder(root, {"0": 4, "1": 4})
    with pytest.raises(ValueError, match="batch_size=5.*image_per_class=2"):
        data.prepare_dataset(root, batch_size=5, img_shape=SIZE, image_per_class=2)


# ---------------------------------------------------------------- what cannot be learned is refused at start
def test_hidden_and_temporary_files_are_not_images(tmp_path):
    root = tmp_path / "interrupted"
    make_gray_folder(str(root), {"0": 2})
    write_gray(str(root / "0" / ".2.jpg.x1y2z3.tmp.jpg"), 10)  # an interrupted atomic write, older naming
    write_gray(str(root / "0" / ".hidden.png"), 10)
    (root / "0" / ".3.jpg.a1b2c3.tmp").write_bytes(b"half")
    names, _, _, _ = data.pre_process_folder(str(root))
    assert sorted(os.path.basename(name) for name in names) == ["0.png", "1.png"]


def test_no_readable_image_is_an_error(tmp_path):
    root = tmp_path / "broken"
    for cls in ("0", "1"):
        (root / cls).mkdir(parents=True)
        (root / cls / "0.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(ValueError, match="none of the 2 images can be read"):
        data.prepare_dataset(str(root), batch_size=1, img_shape=SIZE)


def test_one_class_is_an_error(tmp_path):
    root = tmp_path / "single"
    make_gray_folder(str(root), {"3": 4})
    with pytest.raises(ValueError, match="one class; a classifier needs at least two"):
        data.prepare_dataset(str(root), batch_size=2, img_shape=SIZE)


def test_negative_npz_labels_are_an_error(tmp_path):
    names, classes, _ = embedding_dataset_files(tmp_path)
    npz = str(tmp_path / "negative.npz")
    np.savez(npz, image_names=names, image_classes=classes - 1)
    with pytest.raises(ValueError, match=re.escape(npz) + ": 3 image.* negative class label"):
        data.prepare_dataset(npz, batch_size=2, img_shape=SIZE)


def test_teacher_embedding_count_must_match_the_images(tmp_path):
    names, classes, embeddings = embedding_dataset_files(tmp_path)
    npz = str(tmp_path / "short_embs.npz")
    np.savez(npz, image_names=names, image_classes=classes, embeddings=embeddings[:4])
    with pytest.raises(ValueError, match="embeddings of shape \\(4, 8\\) for 6 images"):
        data.prepare_dataset(npz, batch_size=2, img_shape=SIZE)


def test_two_folders_naming_one_class_are_an_error(tmp_path):
    root = tmp_path / "zero_padded"
    make_gray_folder(str(root), {"1": 1, "01": 1, "2": 1})
    with pytest.raises(ValueError, match="class folders '01' and '1' both name class 1"):
        data.prepare_dataset(str(root), batch_size=1, img_shape=SIZE)


def test_digit_like_folder_names_map_in_sorted_order(tmp_path):
    root = tmp_path / "superscript"
    make_gray_folder(str(root), {"5\u00b2": 1, "7": 1})
    names, classes, _, num_classes = data.pre_process_folder(str(root))
    assert num_classes == 2 and classes.tolist() == [0, 1]
    assert os.path.basename(os.path.dirname(names[1])) == "7"


# ---------------------------------------------------------------- npz and tfrecord inputs
def embedding_dataset_files(tmp_path, count=6, emb_shape=8):
    root = str(tmp_path / "emb")
    make_gray_folder(root, {"0": count // 2, "1": count - count // 2})
    names = np.array([os.path.join(root, str(ii // (count // 2)), "{}.png".format(ii % (count // 2))) for ii in range(count)])
    classes = np.array([ii // (count // 2) for ii in range(count)], dtype=np.int64)
    embeddings = (np.arange(count * emb_shape).reshape(count, emb_shape) / 7.0).astype(np.float16)
    return names, classes, embeddings


def test_npz_input_with_embeddings(tmp_path):
    names, classes, embeddings = embedding_dataset_files(tmp_path)
    npz = str(tmp_path / "data_shuffle_label_embs.npz")
    np.savez(npz, image_names=names, image_classes=classes, embeddings=embeddings)
    _, _, loaded, num_classes = data.pre_process_folder(npz)
    assert num_classes == 2 and loaded.shape == (6, 8)
    ds, steps = data.prepare_dataset(npz, batch_size=3, img_shape=SIZE, seed=0)
    assert steps == 2
    for images, (labels, embs) in ds:
        image_ids = ids_of(images)
        np.testing.assert_allclose(np.asarray(embs), embeddings[image_ids].astype(np.float32))
        np.testing.assert_array_equal(np.asarray(labels), classes[image_ids])


def write_tfrecord(path, names, classes, embeddings):
    with tf.io.TFRecordWriter(path) as writer:
        for name, label, emb in zip(names, classes, embeddings):
            feature = {
                "image_names": tf.train.Feature(bytes_list=tf.train.BytesList(value=[name.encode()])),
                "image_classes": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
                "embeddings": tf.train.Feature(bytes_list=tf.train.BytesList(value=[emb.astype("<f2").tobytes()])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def test_tfrecord_input_with_sidecar(tmp_path):
    names, classes, embeddings = embedding_dataset_files(tmp_path)
    record = str(tmp_path / "data_embs_8_fp16.tfrecord")
    write_tfrecord(record, names, classes, embeddings)
    with pytest.raises(FileNotFoundError, match=re.escape(record + ".json")):
        data.prepare_dataset(record, batch_size=3, img_shape=SIZE)
    sidecar = {"num_classes": 2, "total_images": 6, "emb_shape": 8, "dtype": "float16"}
    (tmp_path / "data_embs_8_fp16.tfrecord.json").write_text(json.dumps(sidecar))
    ds, steps = data.prepare_dataset(record, batch_size=3, img_shape=SIZE, seed=0)
    assert steps == 2
    seen = []
    for images, (labels, embs) in ds:
        assert embs.dtype == tf.float32 and embs.shape == (3, 8) and labels.shape == (3,)
        image_ids = ids_of(images)
        np.testing.assert_allclose(np.asarray(embs), embeddings[image_ids].astype(np.float32))
        np.testing.assert_array_equal(np.asarray(labels), classes[image_ids])
        seen.extend(image_ids)
    assert sorted(seen) == list(range(6))


def test_glob_pattern_and_class_rule(tmp_path):
    root = str(tmp_path / "globbed")
    make_gray_folder(root, {"x": 2, "y": 2}, ext=".png")
    write_gray(os.path.join(root, "y", "extra.jpg"), 90)
    names, classes, _, num_classes = data.pre_process_folder(root, image_names_reg="*/*.png")
    assert len(names) == 4 and classes.tolist() == [0, 0, 1, 1] and num_classes == 2
    names, classes, _, num_classes = data.pre_process_folder(root, image_classes_rule=lambda path: 7 if "/y/" in path else 3)
    assert sorted(classes.tolist()) == [3, 3, 7, 7, 7] and num_classes == 8
    assert not os.path.exists(root + "_shuffle.npz"), "custom rules do not write the plain-scan cache"


def test_rand_augment_level_keeps_range(tmp_path):
    root = str(tmp_path / "randaug")
    half_image_folder(root, 8, 40, 200)
    ds, _ = data.prepare_dataset(root, batch_size=8, img_shape=SIZE, random_status=100, seed=1)
    images = np.asarray(next(iter(ds))[0])
    assert images.shape == (8,) + SIZE + (3,) and images.min() >= -1 and images.max() <= 1


@pytest.mark.parametrize("area", [0.0, 1.0])
def test_random_cutout_mask_area_fills_the_lower_part_with_gray(tmp_path, area):
    """The original's mask stand-in: rows from a random height in [0.55 H, 0.7 W) down are 128 (gray)."""
    root = str(tmp_path / "faces")
    for class_name in ("0", "1"):
        for ii in range(4):
            write_gray(os.path.join(root, class_name, "{}.png".format(ii)), 200, size=(20, 20))
    ds, _ = data.prepare_dataset(root, batch_size=8, img_shape=(20, 20), random_status=0, random_cutout_mask_area=area, seed=1)
    pixels = np.asarray(next(iter(ds))[0]) * 128.0 + 127.5  # back to pixel values
    kept, masked = int(20 * 0.55), int(20 * 0.7)
    np.testing.assert_allclose(pixels[:, :kept], 200, atol=1e-3)
    np.testing.assert_allclose(pixels[:, masked:], 128 if area else 200, atol=1e-3)
    if area:
        first_masked_rows = [int(np.argmax(np.isclose(image[:, 0, 0], 128))) for image in pixels]
        assert all(kept <= row < masked for row in first_masked_rows)


def test_random_cutout_mask_area_outside_0_1_is_named(tmp_path):
    root = make_image_folder_for_cutout(tmp_path)
    with pytest.raises(ValueError, match="random_cutout_mask_area"):
        data.prepare_dataset(root, batch_size=2, img_shape=(20, 20), random_cutout_mask_area=1.5)


def make_image_folder_for_cutout(tmp_path):
    root = str(tmp_path / "faces")
    for class_name in ("0", "1"):
        write_gray(os.path.join(root, class_name, "0.png"), 100, size=(20, 20))
    return root


# ---------------------------------------------------------------- prepare_data.py --tfrecord shard sets
FIXTURE_REC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "faces_rec")


@pytest.fixture(scope="module")
def fixture_shards_and_folders(tmp_path_factory):
    """The mxnet fixture converted both ways: (shard folder, image folder)."""
    from keras_insightface import prepare_data

    dataset_dir = tmp_path_factory.mktemp("rec") / "faces_rec"
    dataset_dir.mkdir()
    for name in ("train.rec", "train.idx", "property"):
        (dataset_dir / name).write_bytes(open(os.path.join(FIXTURE_REC, name), "rb").read())
    return prepare_data.write_tfrecord_shards(dataset_dir, shard_images=7), prepare_data.extract_recordio(dataset_dir)


def labelled_images(ds):
    """[(label, image bytes)] of every image of a dataset."""
    return [(int(label), image.tobytes()) for images, labels in ds for image, label in zip(np.asarray(images), np.asarray(labels))]


def test_shards_give_the_images_of_the_folder(fixture_shards_and_folders):
    shards, folders = fixture_shards_and_folders
    from_shards, _ = data.prepare_dataset(shards, batch_size=4, is_train=False)
    from_folders, _ = data.prepare_dataset(folders, batch_size=4, is_train=False)
    pairs = labelled_images(from_shards)
    assert len(pairs) == 30 and sorted(pairs) == sorted(labelled_images(from_folders))


def test_shard_order_is_seeded_per_epoch(fixture_shards_and_folders):
    shards, _ = fixture_shards_and_folders

    def epochs(path, seed):
        ds, _ = data.prepare_dataset(path, batch_size=4, random_status=0, seed=seed, shuffle_buffer_size=8)
        return [[label for label, _ in labelled_images(ds)] for _ in range(2)]

    first = epochs(shards, 5)
    assert first == epochs(os.path.join(shards, data.SHARDS_DESCRIPTION), 5)
    assert first[0] != first[1] and first != epochs(shards, 6)
    assert len(first[0]) == 28 and sorted(first[0]) != first[0]


def test_shard_order_builds_under_a_global_seed_of_zero(fixture_shards_and_folders):
    """keras.utils.set_random_seed(0) is common in user scripts: the shard pipeline builds and stays reproducible."""
    shards, _ = fixture_shards_and_folders

    def first_epoch():
        keras.utils.set_random_seed(0)
        ds, _ = data.prepare_dataset(shards, batch_size=4, random_status=0, seed=5, shuffle_buffer_size=8)
        return [label for label, _ in labelled_images(ds)]

    try:
        labels = first_epoch()
        assert len(labels) == 28 and sorted(labels) != labels and first_epoch() == labels
    finally:
        tf.random.set_seed(None)


def test_truncated_shard_and_missing_description_are_named(fixture_shards_and_folders, tmp_path):
    shards, _ = fixture_shards_and_folders
    copy = tmp_path / "shards"
    copy.mkdir()
    for name in os.listdir(shards):
        (copy / name).write_bytes(open(os.path.join(shards, name), "rb").read())
    shard = copy / data.shard_file_name(1, 5)
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ValueError, match="train-00001-of-00005.tfrecord.*truncated"):
        data.prepare_dataset(str(copy), batch_size=4)
    (copy / data.SHARDS_DESCRIPTION).unlink()
    with pytest.raises(FileNotFoundError, match="without their description"):
        data.prepare_dataset(str(copy), batch_size=4)
    with pytest.raises(FileNotFoundError, match="description is missing"):
        data.prepare_dataset(str(copy / data.SHARDS_DESCRIPTION), batch_size=4)


def test_corrupt_shard_image_is_skipped_and_counted(tmp_path, capfd):
    from keras_insightface import prepare_data

    good = cv2.imencode(".jpg", np.full((16, 16, 3), 100, np.uint8))[1].tobytes()
    records = [(ii % 2, good) for ii in range(9)] + [(1, good[: len(good) // 2])]
    description, _ = prepare_data.write_shards(str(tmp_path), iter(records), len(records), shard_images=4)
    prepare_data.write_description(str(tmp_path), description)
    ds, _ = data.prepare_dataset(str(tmp_path), batch_size=4, img_shape=SIZE, is_train=False)
    assert sum(len(xx) for xx, _ in ds) == 9
    assert sum(int(nn) for nn in re.findall(r"skipped (\d+) unreadable", capfd.readouterr().err)) == 1
