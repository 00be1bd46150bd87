"""A small built-in demo: generated identities, a tiny backbone, an ArcFace schedule through `Train`.

Each generated identity is a cartoon face with its own shape, colours and feature layout; every image
of it is shifted, scaled, lit and noised differently.  Training uses one set of identities and the
verification `.bin` holds pairs of other, held-out identities, so its accuracy measures how well the
embedding generalises.

The training schedule that uses them is `train.run_demo` (`python train.py --demo`).

Usage:
    train_dir, bin_path = make_demo_dataset("demo_data")
    backbone = tiny_backbone()
"""
import os
import pickle

import cv2
import numpy as np

from . import io_utils

IMAGE_SIZE = 112


def _identity_params(rng):
    """Random but fixed look of one identity."""
    return {
        "background": rng.integers(0, 256, 3),
        "skin": rng.integers(60, 250, 3),
        "face_axes": (int(rng.integers(28, 44)), int(rng.integers(36, 50))),
        "hair": rng.integers(0, 256, 3),
        "hair_height": int(rng.integers(4, 22)),
        "eye_gap": int(rng.integers(8, 20)),
        "eye_y": int(rng.integers(-14, -2)),
        "eye_size": int(rng.integers(2, 7)),
        "eye_color": rng.integers(0, 256, 3),
        "mouth_width": int(rng.integers(6, 20)),
        "mouth_y": int(rng.integers(14, 26)),
        "mouth_color": rng.integers(0, 256, 3),
        "mark": (int(rng.integers(-20, 20)), int(rng.integers(-20, 20)), int(rng.integers(0, 2))),
    }


def _color(values, gain):
    return tuple(int(np.clip(value * gain, 0, 255)) for value in values)


def draw_face(params, rng):
    """One image (uint8 RGB) of the identity `params` under random shift, scale, light and noise."""
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    gain = rng.uniform(0.75, 1.25)
    image[:] = _color(params["background"], gain)
    scale = rng.uniform(0.9, 1.1)
    cx, cy = IMAGE_SIZE // 2 + int(rng.integers(-5, 6)), IMAGE_SIZE // 2 + int(rng.integers(-5, 6))

    def at(dx, dy):
        return (int(cx + dx * scale), int(cy + dy * scale))

    axes = (int(params["face_axes"][0] * scale), int(params["face_axes"][1] * scale))
    cv2.ellipse(image, at(0, -axes[1] // 2), (axes[0], params["hair_height"] + axes[1] // 2), 0, 180, 360, _color(params["hair"], gain), -1)
    cv2.ellipse(image, (cx, cy), axes, 0, 0, 360, _color(params["skin"], gain), -1)
    eye_radius = max(1, int(params["eye_size"] * scale))
    for side in (-1, 1):
        cv2.circle(image, at(side * params["eye_gap"], params["eye_y"]), eye_radius, _color(params["eye_color"], gain), -1)
    mouth_left, mouth_right = at(-params["mouth_width"], params["mouth_y"]), at(params["mouth_width"], params["mouth_y"])
    cv2.line(image, mouth_left, mouth_right, _color(params["mouth_color"], gain), max(1, int(3 * scale)))
    mark_x, mark_y, has_mark = params["mark"]
    if has_mark:
        cv2.circle(image, at(mark_x, mark_y), max(1, int(3 * scale)), (20, 20, 20), -1)
    noise = rng.normal(0, 6, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def _encode_jpeg(image_rgb):
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buffer.tobytes()


def make_demo_dataset(data_dir, num_train_ids=60, num_test_ids=30, images_per_id=10, num_pairs=300, seed=0):
    """Write `<data_dir>/train/<id>/<n>.jpg` and `<data_dir>/demo_verify.bin`; returns (train_dir, bin_path).

    The `.bin` holds `num_pairs` pairs (half same identity, half different) of held-out identities.
    Existing files are kept, so a second call is fast.
    """
    rng = np.random.default_rng(seed)
    identities = [_identity_params(rng) for _ in range(num_train_ids + num_test_ids)]
    train_dir, bin_path = os.path.join(data_dir, "train"), os.path.join(data_dir, "demo_verify.bin")
    done_marker = os.path.join(data_dir, ".complete")
    if os.path.exists(done_marker):
        return train_dir, bin_path

    for class_id, params in enumerate(identities[:num_train_ids]):
        for image_id in range(images_per_id):
            path = os.path.join(train_dir, str(class_id), "{}.jpg".format(image_id))
            io_utils.atomic_write_bytes(path, _encode_jpeg(draw_face(params, rng)))

    test_ids = identities[num_train_ids:]
    bins, issame = [], []
    for pair_id in range(num_pairs):
        same = pair_id % 2 == 0
        first, second = rng.choice(len(test_ids), 2, replace=False)
        second = first if same else second
        bins += [_encode_jpeg(draw_face(test_ids[first], rng)), _encode_jpeg(draw_face(test_ids[second], rng))]
        issame.append(same)
    with io_utils.atomic_path(bin_path) as tmp:
        with open(tmp, "wb") as ff:
            pickle.dump((bins, issame), ff, protocol=4)
    io_utils.atomic_write_text(done_marker, "ok\n")
    return train_dir, bin_path


def tiny_backbone(input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3)):
    """A four-stage convolutional backbone (112 -> 7), quick to train on a CPU."""
    import keras

    from .batchnorm import BatchNormalization
    from .prelu import PReLU

    inputs = keras.Input(input_shape)
    nn = inputs
    for filters in (16, 32, 64, 128):
        nn = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(nn)
        nn = BatchNormalization()(nn)
        nn = PReLU(shared_axes=[1, 2])(nn)
        nn = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(nn)
        nn = BatchNormalization()(nn)
        nn = PReLU(shared_axes=[1, 2])(nn)
    return keras.Model(inputs, nn, name="tiny_backbone")
