"""A small built-in demo: generated identities, a tiny backbone, an ArcFace schedule through `Train`.

Each generated identity is a cartoon face with its own shape, colours and feature layout; every image
of it is shifted, scaled, lit and noised differently.  Training uses one set of identities and the
verification `.bin` holds pairs of other, held-out identities, so its accuracy measures how well the
embedding generalises.

`run_demo` trains on them through `train.Train`; `main` is the training command line (`python train.py --demo`,
console script `keras-insightface-train --demo`).

Usage:
    train_dir, bin_path = make_demo_dataset("demo_data")
    best_accuracy = run_demo("demo_data", epochs=6)
"""
import argparse
import os
import pickle
import sys

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


def run_demo(data_dir="demo_data", epochs=6, batch_size=32, seed=0, partial_fc_sample_rate=None):
    """The built-in demo: generated identities, a tiny backbone, an ArcFace schedule through `train.Train`.

    partial_fc_sample_rate: train with the Partial FC head at that rate (None: the dense NormDense).
    Returns the best verification accuracy on pairs of held-out identities.
    Usage: python train.py --demo   (or run_demo("demo_data", epochs=6))
    """
    import keras

    from . import losses, models, train

    keras.utils.set_random_seed(seed)
    train_dir, bin_path = make_demo_dataset(data_dir, seed=seed)
    basic_model = models.buildin_models(tiny_backbone(), dropout=0, emb_shape=64, output_layer="GDC")
    tt = train.Train(
        train_dir, save_path="demo_tiny_arcface.h5", eval_paths=[bin_path], basic_model=basic_model,
        batch_size=batch_size, lr_base=0.01, lr_decay=0.5, lr_decay_steps=[epochs // 2 + 1], random_status=0, seed=seed,
        partial_fc_sample_rate=partial_fc_sample_rate,
    )
    schedule = [
        {"loss": losses.ArcfaceLoss(scale=16), "epoch": 1, "optimizer": keras.optimizers.SGD(0.01, momentum=0.9)},
        {"loss": losses.ArcfaceLoss(scale=32), "epoch": epochs - 1},
    ]
    tt.train(schedule, 0)
    best = tt.my_evals[-1].max_accuracy
    print(">>>> Demo done: held-out identities verification max accuracy {:.4f} (chance is 0.5)".format(best))
    return best


def main(argv=None):
    """The training command line: `python train.py --demo` (console script keras-insightface-train)."""
    parser = argparse.ArgumentParser(prog="train.py", description="Keras InsightFace training entry point",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--demo", action="store_true", help="Train a small model on a generated identity dataset and print evaluation accuracy")
    parser.add_argument("--data_dir", default="demo_data", help="Where the demo dataset is generated")
    parser.add_argument("--epochs", type=int, default=6, help="Demo training epochs (>= 2)")
    parser.add_argument("--batch_size", type=int, default=32, help="Demo batch size")
    parser.add_argument("--partial_fc_sample_rate", type=float, default=None, help="Demo with the Partial FC head at this sample rate")
    args = parser.parse_args(argv)
    if not args.demo:
        parser.print_help()
        return 0
    if args.epochs < 2:
        parser.error("--epochs must be >= 2")
    run_demo(args.data_dir, epochs=args.epochs, batch_size=args.batch_size, partial_fc_sample_rate=args.partial_fc_sample_rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
